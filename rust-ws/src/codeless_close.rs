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

use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::frame_walk::FrameWalk;
use crate::io_layer::Job;

const EMPTY_CLOSE: &[u8] = &[0x88, 0x00];
/// tungstenite's reply to a close code it refuses: 1002 "Protocol violation".
const REFUSED_CLOSE: &[u8] = b"\x88\x14\x03\xEAProtocol violation";

/// Passes reads and writes through, except the armed close frame, and notes the code of the
/// client's first close frame as it is read.
#[derive(Default)]
pub struct CodelessClose {
    /// The close frame tungstenite will write, to be replaced by `pending`.
    armed: Option<&'static [u8]>,
    /// The replacing frame (a close with a code); the bytes from `pending_start` are still to be
    /// written.
    pending: [u8; 4],
    pending_start: u8,
    pending_end: u8,
    client_close: CloseCodeReader,
}

impl CodelessClose {
    pub fn new() -> Self {
        CodelessClose::default()
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

impl Job for CodelessClose {
    fn read(&mut self, bytes: &[u8]) {
        if self.client_close.code.is_none() {
            self.client_close.feed(bytes);
        }
    }

    /// Returns how many of tungstenite's bytes were taken. For data that is what the layer
    /// beneath took; for the armed close frame the 2 bytes count as taken at once and the 4
    /// replacing them are this layer's to deliver (now, or on the next write, flush or shutdown).
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_write_out(inner, cx))?;
        if let Some(frame) = self.armed.filter(|f| buf.ends_with(f)) {
            let before = buf.len() - frame.len();
            if before > 0 {
                // Data queued ahead of the close frame goes out unchanged first.
                return Pin::new(inner).poll_write(cx, &buf[..before]);
            }
            self.armed = None;
            self.pending_start = 0;
            self.pending_end = self.pending.len() as u8;
            return match self.poll_write_out(inner, cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(frame.len())),
            };
        }
        Pin::new(inner).poll_write(cx, buf)
    }

    /// Writes what is left of the rewritten close frame.
    fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending_start < self.pending_end {
            let rest = &self.pending[self.pending_start as usize..self.pending_end as usize];
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_start += n as u8;
        }
        Poll::Ready(Ok(()))
    }
}

/// Follows the client's frames and unmasks the first two payload bytes of the first close frame:
/// its code as sent, before tungstenite replaces a refused one.
#[derive(Default)]
struct CloseCodeReader {
    walk: FrameWalk,
    code_bytes: [u8; 2],
    code: Option<Option<u16>>,
}

impl CloseCodeReader {
    fn feed(&mut self, mut bytes: &[u8]) {
        while self.code.is_none() {
            let Some(part) = self.walk.next(&mut bytes) else {
                return;
            };
            let Some(header) = part.header else { continue };
            if header.opcode != OpCode::Control(Control::Close) {
                continue;
            }
            let mask = header.mask.unwrap_or_default();
            for (i, &b) in part.payload.iter().enumerate() {
                let pos = part.payload_offset as usize + i;
                if pos >= 2 {
                    break;
                }
                self.code_bytes[pos] = b ^ mask[pos];
            }
            if part.last {
                let len = part.payload_offset + part.payload.len() as u64;
                self.code = Some((len >= 2).then(|| u16::from_be_bytes(self.code_bytes)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_layer::Layer;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn passes_bytes_through_until_armed() {
        let mut w = Layer::new(CodelessClose::new(), Vec::new());
        w.write_all(&[1, 2, 0x88, 0x00]).await.unwrap();
        assert_eq!(w.inner, [1, 2, 0x88, 0x00]);
    }

    #[tokio::test]
    async fn rewrites_the_empty_close_once_armed_keeping_earlier_bytes() {
        let mut w = Layer::new(CodelessClose::new(), Vec::new());
        w.job.answer_empty_close_with_1000();
        w.write_all(&[0x81, 0x01, b'x', 0x88, 0x00]).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.inner, [0x81, 0x01, b'x', 0x88, 0x02, 0x03, 0xE8]);
        // Only once.
        w.write_all(EMPTY_CLOSE).await.unwrap();
        assert_eq!(&w.inner[7..], EMPTY_CLOSE);
    }

    #[tokio::test]
    async fn leaves_a_close_with_a_code_alone() {
        let mut w = Layer::new(CodelessClose::new(), Vec::new());
        w.job.answer_empty_close_with_1000();
        w.write_all(&[0x88, 0x02, 0x0F, 0xA0]).await.unwrap();
        assert_eq!(w.inner, [0x88, 0x02, 0x0F, 0xA0]);
    }

    #[tokio::test]
    async fn rewrites_tungstenites_refusal_into_the_clients_code() {
        let mut w = Layer::new(CodelessClose::new(), Vec::new());
        w.job.answer_refused_close_with(1014);
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
