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

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const EMPTY_CLOSE: [u8; 2] = [0x88, 0x00];
const CLOSE_1000: [u8; 4] = [0x88, 0x02, 0x03, 0xE8];

/// Passes reads and writes through to `inner`, except the armed empty close frame.
pub struct CodelessClose<S> {
    inner: S,
    armed: bool,
    /// Bytes of the rewritten frame not yet accepted by `inner`.
    pending: [u8; 4],
    pending_len: u8,
}

impl<S> CodelessClose<S> {
    pub fn new(inner: S) -> Self {
        CodelessClose {
            inner,
            armed: false,
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Rewrite the coming empty close frame (the reply to a code-less close) into a 1000.
    pub fn answer_empty_close_with_1000(&mut self) {
        self.armed = true;
    }
}

impl<S: AsyncWrite + Unpin> CodelessClose<S> {
    /// Writes what is left of the rewritten close frame.
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

impl<S: AsyncRead + Unpin> AsyncRead for CodelessClose<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
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
        if this.armed && buf.ends_with(&EMPTY_CLOSE) {
            let before = buf.len() - EMPTY_CLOSE.len();
            if before > 0 {
                // Data queued ahead of the close frame goes out unchanged first.
                return Pin::new(&mut this.inner).poll_write(cx, &buf[..before]);
            }
            this.armed = false;
            this.pending = CLOSE_1000;
            this.pending_len = CLOSE_1000.len() as u8;
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Ready(Ok(EMPTY_CLOSE.len())),
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
        w.write_all(&EMPTY_CLOSE).await.unwrap();
        assert_eq!(&w.inner[7..], EMPTY_CLOSE);
    }

    #[tokio::test]
    async fn leaves_a_close_with_a_code_alone() {
        let mut w = CodelessClose::new(Vec::new());
        w.answer_empty_close_with_1000();
        w.write_all(&[0x88, 0x02, 0x0F, 0xA0]).await.unwrap();
        assert_eq!(w.inner, [0x88, 0x02, 0x0F, 0xA0]);
    }
}
