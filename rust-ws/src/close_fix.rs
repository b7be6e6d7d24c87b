//! An I/O wrapper that makes the reply to a code-less close frame carry 1000.
//!
//! PROTOCOL.md §3: the server answers a client's close frame with the same code, and with 1000
//! when the client's frame had no code. tungstenite echoes the client's frame as it is, so a
//! code-less close gets a code-less reply, which clients report as 1005. tungstenite has no
//! setting for this, so once the session has seen a code-less close it arms this wrapper, and
//! the wrapper rewrites the last frame tungstenite writes, the 2-byte empty close frame
//! `88 00`, into `88 02 03 E8` (close, 1000). After a close frame tungstenite writes nothing else.
//!
//! It also counts `ws_messages_sent_total` where that is exact: a data message counts once the
//! socket has accepted the last byte of its frame (`SentFrames`). Counting in the session instead
//! (when tungstenite takes the message, or when a flush returns) misses or invents messages
//! whenever a flush is cut short: a write interrupted by an eviction or the keepalive deadline
//! leaves frames in tungstenite's buffer, and those go out (or not, or in part) with a later
//! read, ping or close frame, on paths that don't know which messages they carried.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const EMPTY_CLOSE: [u8; 2] = [0x88, 0x00];
const CLOSE_1000: [u8; 4] = [0x88, 0x02, 0x03, 0xE8];

pub struct CloseFix<S> {
    inner: S,
    armed: bool,
    /// Bytes of the rewritten frame not yet accepted by `inner`.
    pending: [u8; 4],
    pending_len: u8,
    sent: SentFrames,
}

impl<S> CloseFix<S> {
    /// `sent` counts every data message whose frame `inner` has taken whole.
    pub fn new(inner: S, sent: IntCounter) -> Self {
        CloseFix {
            inner,
            armed: false,
            pending: [0; 4],
            pending_len: 0,
            sent: SentFrames::new(sent),
        }
    }

    /// Rewrite the coming empty close frame (the reply to a code-less close) into a 1000.
    pub fn answer_empty_close_with_1000(&mut self) {
        self.armed = true;
    }
}

impl<S: AsyncWrite + Unpin> CloseFix<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_len > 0 {
            let start = CLOSE_1000.len() - self.pending_len as usize;
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_len -= n as u8;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CloseFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_write_rewriting(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            // The bytes tungstenite sees taken, in its own stream: the rewritten close frame is
            // no data frame either way, and nothing follows it.
            this.sent.taken(&buf[..n.min(buf.len())]);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Unpin> CloseFix<S> {
    fn poll_write_rewriting(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self;
        ready!(this.poll_pending(cx))?;
        if this.armed && buf.ends_with(&EMPTY_CLOSE) {
            let before = buf.len() - EMPTY_CLOSE.len();
            if before > 0 {
                // Data queued ahead of the close frame goes out unchanged first.
                return Pin::new(&mut this.inner).poll_write(cx, &buf[..before]);
            }
            this.armed = false;
            this.pending = CLOSE_1000;
            this.pending_len = CLOSE_1000.len() as u8;
            // The 2 bytes are taken; the 4 replacing them are ours to deliver (now or on flush).
            match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => return Poll::Ready(Ok(EMPTY_CLOSE.len())),
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
}

/// Follows the server's outgoing frames through their headers and counts each frame that ends a
/// data message (FIN with opcode text, binary or continuation) once its last byte is taken.
struct SentFrames {
    counter: IntCounter,
    /// The header of the current frame, while incomplete.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Whether the current frame ends a data message.
    ends_message: bool,
}

impl SentFrames {
    fn new(counter: IntCounter) -> Self {
        SentFrames {
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
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn passes_bytes_through_until_armed() {
        let mut w = CloseFix::new(Vec::new(), IntCounter::new("sent", "sent").unwrap());
        w.write_all(&[1, 2, 0x88, 0x00]).await.unwrap();
        assert_eq!(w.inner, [1, 2, 0x88, 0x00]);
    }

    #[tokio::test]
    async fn rewrites_the_empty_close_once_armed_keeping_earlier_bytes() {
        let mut w = CloseFix::new(Vec::new(), IntCounter::new("sent", "sent").unwrap());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x88, 0x00]).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner, [0x81, 0x01, b'x', 0x88, 0x02, 0x03, 0xE8]);
        // Only once.
        w.write_all(&EMPTY_CLOSE).await.unwrap();
        assert_eq!(&w.inner[7..], EMPTY_CLOSE);
    }

    fn counter() -> IntCounter {
        IntCounter::new("sent", "sent").unwrap()
    }

    #[test]
    fn counts_data_frames_once_their_last_byte_is_taken() {
        let c = counter();
        let mut f = SentFrames::new(c.clone());
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
        SentFrames::new(c2.clone()).taken(&stream);
        assert_eq!(c2.get(), 5);
        // The last frame completes when its last byte is taken.
        f.taken(b"i");
        assert_eq!(c.get(), 6);
    }

    #[tokio::test]
    async fn counts_what_the_inner_writer_took() {
        let c = counter();
        let mut w = CloseFix::new(Vec::new(), c.clone());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x81, 0x01, b'y', 0x88, 0x00])
            .await
            .unwrap();
        assert_eq!(c.get(), 2);
    }

    #[tokio::test]
    async fn leaves_a_close_with_a_code_alone() {
        let mut w = CloseFix::new(Vec::new(), IntCounter::new("sent", "sent").unwrap());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x88, 0x02, 0x0F, 0xA0]).await.unwrap();
        assert_eq!(w.inner, [0x88, 0x02, 0x0F, 0xA0]);
    }
}
