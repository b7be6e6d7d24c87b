//! Workaround: tungstenite echoes a code-less close frame as it is; PROTOCOL.md §3 wants 1000.
//!
//! Twin: python-ws/python_ws/tornado_close_codes.py, the Tornado `WebSocketProtocol13` subclass,
//! which answers a code-less close with 1000 for the same reason (Tornado echoes it too).
//!
//! PROTOCOL.md §3: the server answers a client's close frame with the same code, and with 1000
//! when the client's frame had no code. tungstenite echoes the client's frame as it is, so a
//! code-less close gets a code-less reply, which clients report as 1005. tungstenite has no
//! setting for this, so once the session has seen a code-less close it arms this I/O layer
//! ([`CodelessClose::answer_empty_close_with_1000`]), and the layer rewrites the last frame
//! tungstenite writes, the 2-byte empty close frame `88 00`, into `88 02 03 E8` (close, 1000).
//! After a close frame tungstenite writes nothing else.
//!
//! The same layer settles the invalid close frames of PROTOCOL.md §3. tungstenite answers a close
//! frame whose code must not be sent with 1002 itself, but hands the session a close message
//! that looks like any client close, carrying 1002, so the session could not count it
//! (`reason="protocol"`) nor tell it from a client that really sent 1002. And it treats 1014 (Bad
//! Gateway, registered since RFC 6455) as such a code, where the protocol echoes it. So this
//! layer also reads the code of the client's first close frame off the wire
//! ([`CodelessClose::client_close_code`]); the session counts a code the protocol forbids, and
//! for a code tungstenite wrongly refused it arms the rewrite of tungstenite's 1002 reply into
//! the client's code ([`CodelessClose::answer_refused_close_with`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const EMPTY_CLOSE: &[u8] = &[0x88, 0x00];
/// tungstenite's reply to a close code it refuses: 1002 "Protocol violation".
const REFUSED_CLOSE: &[u8] = b"\x88\x14\x03\xEAProtocol violation";

/// Passes reads and writes through to `inner`, except the armed close frame, and notes the code
/// of the client's first close frame as it is read.
pub struct CodelessClose<S> {
    inner: S,
    /// The close frame tungstenite will write, to be replaced by `pending`.
    armed: Option<&'static [u8]>,
    /// The replacing frame (a close with a code); the bytes from `pending_start` are still to be
    /// written.
    pending: [u8; 4],
    pending_start: u8,
    pending_end: u8,
    client_close: CloseCodeReader,
}

impl<S> CodelessClose<S> {
    pub fn new(inner: S) -> Self {
        CodelessClose {
            inner,
            armed: None,
            pending: [0; 4],
            pending_start: 0,
            pending_end: 0,
            client_close: CloseCodeReader::default(),
        }
    }

    /// Rewrite the coming empty close frame (the reply to a code-less close) into a 1000.
    pub fn answer_empty_close_with_1000(&mut self) {
        self.arm(EMPTY_CLOSE, 1000);
    }

    /// Rewrite tungstenite's coming 1002 reply to a close code it refused into `code`.
    pub fn answer_refused_close_with(&mut self, code: u16) {
        self.arm(REFUSED_CLOSE, code);
    }

    fn arm(&mut self, frame: &'static [u8], code: u16) {
        let [hi, lo] = code.to_be_bytes();
        self.armed = Some(frame);
        self.pending = [0x88, 0x02, hi, lo];
    }

    /// The client's first close frame as read so far: `None` before it is complete,
    /// `Some(None)` for one without a code, `Some(Some(code))` with the code as sent.
    pub fn client_close_code(&self) -> Option<Option<u16>> {
        self.client_close.code
    }
}

impl<S: AsyncWrite + Unpin> CodelessClose<S> {
    /// Writes what is left of the rewritten close frame.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_start < self.pending_end {
            let rest = &self.pending[self.pending_start as usize..self.pending_end as usize];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_start += n as u8;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CodelessClose<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.client_close.code.is_none() {
            this.client_close.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CodelessClose<S> {
    /// Returns how many of tungstenite's bytes were taken. For data that is what `inner` took;
    /// for the armed close frame the 2 bytes count as taken at once and the 4 replacing them are
    /// this layer's to deliver (now, or on the next write, flush or shutdown).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(frame) = this.armed.filter(|f| buf.ends_with(f)) {
            let before = buf.len() - frame.len();
            if before > 0 {
                // Data queued ahead of the close frame goes out unchanged first.
                return Pin::new(&mut this.inner).poll_write(cx, &buf[..before]);
            }
            this.armed = None;
            this.pending_start = 0;
            this.pending_end = this.pending.len() as u8;
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(frame.len())),
            };
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
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

/// Follows the client's frames through their headers and unmasks the first two payload bytes of
/// the first close frame: its code as sent, before tungstenite replaces a refused one.
#[derive(Default)]
struct CloseCodeReader {
    /// The header of the current frame, while incomplete (at most 2 + 8 + 4 bytes).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come, and how many came already.
    payload_left: u64,
    payload_pos: u64,
    in_close: bool,
    mask: [u8; 4],
    code_bytes: [u8; 2],
    code: Option<Option<u16>>,
}

impl CloseCodeReader {
    fn head_size(&self) -> usize {
        let ext = match self.head[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.code.is_none() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64) as usize;
                if self.in_close {
                    for &b in &bytes[..n] {
                        if self.payload_pos < 2 {
                            let i = self.payload_pos as usize;
                            self.code_bytes[i] = b ^ self.mask[i];
                        }
                        self.payload_pos += 1;
                    }
                }
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                if self.payload_left == 0 && self.in_close {
                    self.close_complete();
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
            self.in_close = self.head[0] & 0x0F == 0x8;
            self.payload_pos = 0;
            self.mask = if self.head[1] & 0x80 != 0 {
                self.head[len - 4..len].try_into().expect("4 bytes")
            } else {
                [0; 4]
            };
            self.payload_left = match self.head[1] & 0x7F {
                126 => u16::from_be_bytes([self.head[2], self.head[3]]).into(),
                127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
                n => n.into(),
            };
            if self.payload_left == 0 && self.in_close {
                self.close_complete();
            }
        }
    }

    fn close_complete(&mut self) {
        self.code = Some((self.payload_pos >= 2).then(|| u16::from_be_bytes(self.code_bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn passes_bytes_through_until_armed() {
        let mut w = CodelessClose::new(Vec::new());
        w.write_all(&[1, 2, 0x88, 0x00]).await.unwrap();
        assert_eq!(w.inner, [1, 2, 0x88, 0x00]);
    }

    #[tokio::test]
    async fn rewrites_the_empty_close_once_armed_keeping_earlier_bytes() {
        let mut w = CodelessClose::new(Vec::new());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x88, 0x00]).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner, [0x81, 0x01, b'x', 0x88, 0x02, 0x03, 0xE8]);
        // Only once.
        w.write_all(EMPTY_CLOSE).await.unwrap();
        assert_eq!(&w.inner[7..], EMPTY_CLOSE);
    }

    #[tokio::test]
    async fn leaves_a_close_with_a_code_alone() {
        let mut w = CodelessClose::new(Vec::new());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x88, 0x02, 0x0F, 0xA0]).await.unwrap();
        assert_eq!(w.inner, [0x88, 0x02, 0x0F, 0xA0]);
    }

    #[tokio::test]
    async fn rewrites_tungstenites_refusal_into_the_clients_code() {
        let mut w = CodelessClose::new(Vec::new());
        w.answer_refused_close_with(1014);
        w.write_all(REFUSED_CLOSE).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner, [0x88, 0x02, 0x03, 0xF6]);
    }

    /// A masked client frame: header, mask key, masked payload.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend((payload.len() as u16).to_be_bytes());
        }
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn reads_the_code_of_the_first_close_frame_byte_by_byte() {
        let mut stream = client_frame(0x1, &[b'x'; 300]);
        stream.extend(client_frame(0x9, b"ping"));
        stream.extend(client_frame(0x8, &[0x13, 0x88, b'b', b'y', b'e'])); // 5000
        stream.extend(client_frame(0x8, &[0x03, 0xE8]));
        let mut r = CloseCodeReader::default();
        for b in &stream {
            r.feed(std::slice::from_ref(b));
        }
        assert_eq!(r.code, Some(Some(5000)));
        let mut r = CloseCodeReader::default();
        r.feed(&stream);
        assert_eq!(r.code, Some(Some(5000)));
        let mut r = CloseCodeReader::default();
        r.feed(&client_frame(0x8, &[]));
        assert_eq!(r.code, Some(None));
        let mut r = CloseCodeReader::default();
        r.feed(&client_frame(0x8, &[0x03])[..6]);
        assert_eq!(r.code, None, "incomplete");
    }
}
