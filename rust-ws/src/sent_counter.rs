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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Passes everything through to `inner`, counting data messages as `inner` takes their bytes.
pub struct SentCounter<S> {
    inner: S,
    frames: FrameTracker,
}

impl<S> SentCounter<S> {
    /// `sent` counts every data message whose frame `inner` has taken whole.
    pub fn new(inner: S, sent: IntCounter) -> Self {
        SentCounter {
            inner,
            frames: FrameTracker::new(sent),
        }
    }

    /// The layer beneath, e.g. to arm `CodelessClose`.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SentCounter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SentCounter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.frames.taken(&buf[..n.min(buf.len())]);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Follows the server's outgoing frames through their headers and counts each frame that ends a
/// data message once its last byte is taken.
struct FrameTracker {
    counter: IntCounter,
    /// The header of the current frame, while incomplete.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Whether the current frame ends a data message.
    ends_message: bool,
}

impl FrameTracker {
    fn new(counter: IntCounter) -> Self {
        FrameTracker {
            counter,
            head: [0; 14],
            head_len: 0,
            payload_left: 0,
            ends_message: false,
        }
    }

    /// The header's full length, once its first two bytes are known.
    fn head_size(&self) -> usize {
        let ext = match self.head[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Consumes the next `bytes` of the outgoing stream, counting the messages they complete.
    fn taken(&mut self, mut bytes: &[u8]) {
        let mut done = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 && self.ends_message {
                    done += 1;
                }
                continue;
            }
            self.head[self.head_len as usize] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            let len = self.head_len as usize;
            if len < 2 || len < self.head_size() {
                continue;
            }
            self.head_len = 0;
            let opcode = self.head[0] & 0x0F;
            self.ends_message = self.head[0] & 0x80 != 0 && opcode <= 2;
            self.payload_left = match self.head[1] & 0x7F {
                126 => u16::from_be_bytes([self.head[2], self.head[3]]).into(),
                127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
                n => n.into(),
            };
            if self.payload_left == 0 && self.ends_message {
                done += 1;
            }
        }
        if done > 0 {
            self.counter.inc_by(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codeless_close::CodelessClose;
    use tokio::io::AsyncWriteExt;

    fn counter() -> IntCounter {
        IntCounter::new("sent", "sent").unwrap()
    }

    #[test]
    fn counts_data_frames_once_their_last_byte_is_taken() {
        let c = counter();
        let mut f = FrameTracker::new(c.clone());
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
        FrameTracker::new(c2.clone()).taken(&stream);
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
        let mut w = SentCounter::new(
            Trickle {
                taken: Vec::new(),
                limit: 2,
            },
            c.clone(),
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
        let mut w = SentCounter::new(CodelessClose::new(Vec::new()), c.clone());
        w.inner_mut().answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x81, 0x01, b'y', 0x88, 0x00])
            .await
            .unwrap();
        w.flush().await.unwrap();
        assert_eq!(c.get(), 2);
    }
}
