//! `ws_messages_sent_total`: an I/O layer that counts each data message as its frame's last byte
//! reaches the socket.
//!
//! Twin: python-ws/python_ws/connection.py counts a message when Tornado's write future for it
//! resolves.
//!
//! PROTOCOL.md §4 counts messages written to a client's socket. Counting in the session instead
//! (when tungstenite takes the message, or when a flush returns) misses or invents messages
//! whenever a flush is cut short: a write interrupted by an eviction or the keepalive deadline
//! leaves frames in `WriteBatch`'s buffer, and those go out (or not, or in part) with a later
//! read, ping or close frame, on paths that don't know which messages they carried. Beneath the
//! batching every path meets here, so [`SentCounter`] follows the outgoing frames through their
//! headers and counts a data message (FIN with opcode text, binary or continuation) once the
//! layer beneath has accepted its last byte.
//!
//! It sits under `WriteBatch` (write_batch.rs: the frames of a batch, tungstenite's and the
//! queued ones, arrive here together in one write, which is still whole frames in order) and
//! above `CodelessClose`, whose close-frame rewrite touches no data frame.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::frame_walk::FrameWalk;
use crate::io_layer::Job;

/// Passes everything through, counting data messages as the layer beneath takes their bytes.
pub struct SentCounter {
    counter: IntCounter,
    /// Where the outgoing stream is in its frames, as far as the layer beneath has taken it.
    walk: FrameWalk,
}

impl SentCounter {
    /// `sent` counts every data message whose frame the layer beneath has taken whole.
    pub fn new(sent: IntCounter) -> Self {
        SentCounter {
            counter: sent,
            walk: FrameWalk::new(),
        }
    }

    /// Consumes the next `bytes` of the outgoing stream, counting the messages they complete.
    fn taken(&mut self, mut bytes: &[u8]) {
        let mut done = 0;
        while let Some(part) = self.walk.next(&mut bytes) {
            if part.last && part.header.is_some_and(ends_message) {
                done += 1;
            }
        }
        if done > 0 {
            self.counter.inc_by(done);
        }
    }
}

/// A frame that ends a data message: FIN with opcode text, binary or continuation.
fn ends_message(h: &FrameHeader) -> bool {
    h.is_final
        && matches!(
            h.opcode,
            OpCode::Data(Data::Text | Data::Binary | Data::Continue)
        )
}

impl Job for SentCounter {
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.taken(&buf[..n.min(buf.len())]);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codeless_close::CodelessClose;
    use crate::io_layer::Layer;
    use tokio::io::AsyncWriteExt;

    fn counter() -> IntCounter {
        IntCounter::new("sent", "sent").unwrap()
    }

    #[test]
    fn counts_data_frames_once_their_last_byte_is_taken() {
        let c = counter();
        let mut f = SentCounter::new(c.clone());
        let big = vec![b'x'; 70_000];
        let mut stream = vec![0x81, 0x03, b'a', b'b', b'c']; // text, 3 bytes
        stream.extend([0x89, 0x00]); // ping
        stream.extend([0x8A, 0x02, 1, 2]); // pong
        stream.extend([0x81, 0x7E, 0x01, 0x00]); // text, 256 bytes
        stream.extend(&big[..256]);
        stream.extend([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0x11, 0x70]); // binary, 70 000 bytes
        stream.extend(&big);
        stream.extend([0x81, 0x00]); // empty text
        stream.extend([0x01, 0x01, b'p', 0x80, 0x01, b'q']); // fragmented: one message
        stream.extend([0x81, 0x02, b'h']); // a text frame one byte short

        // Byte by byte: the count moves exactly at the end of each data message.
        let mut ends = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            let before = c.get();
            f.taken(std::slice::from_ref(b));
            if c.get() != before {
                ends.push(i + 1);
            }
        }
        let mut expected = vec![5, 11 + 4 + 256];
        expected.push(expected[1] + 10 + 70_000);
        expected.push(expected[2] + 2);
        expected.push(expected[3] + 6);
        assert_eq!(ends, expected);
        assert_eq!(c.get(), 5);
        // All at once, the same.
        let c2 = counter();
        SentCounter::new(c2.clone()).taken(&stream);
        assert_eq!(c2.get(), 5);
        // The last frame completes when its last byte is taken.
        f.taken(b"i");
        assert_eq!(c.get(), 6);
    }

    /// A writer that takes at most `limit` bytes per call, like a socket with little room.
    struct Trickle {
        taken: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.limit);
            this.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn counts_what_the_layer_beneath_took_not_what_was_offered() {
        let c = counter();
        let mut w = Layer::new(
            SentCounter::new(c.clone()),
            Trickle {
                taken: Vec::new(),
                limit: 2,
            },
        );
        // One 3-byte text frame offered whole: the first call takes only its header.
        let frame = [0x81, 0x01, b'x'];
        assert_eq!(w.write(&frame).await.unwrap(), 2);
        assert_eq!(c.get(), 0);
        w.write_all(&frame[2..]).await.unwrap();
        assert_eq!(c.get(), 1);
        assert_eq!(w.inner.taken, frame);
    }

    #[tokio::test]
    async fn composed_over_the_close_workaround_counts_only_data() {
        let c = counter();
        let mut w = Layer::new(
            SentCounter::new(c.clone()),
            Layer::new(CodelessClose::new(), Vec::new()),
        );
        w.inner.job.answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x81, 0x01, b'y', 0x88, 0x00])
            .await
            .unwrap();
        w.flush().await.unwrap();
        assert_eq!(c.get(), 2);
    }
}
