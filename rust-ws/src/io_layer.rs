//! The plumbing of the I/O layers under tungstenite, written once: [`Layer`] is an
//! `AsyncRead + AsyncWrite` that passes reads up, writes, flushes and shutdowns down, and lets a
//! [`Job`] see or change what passes.
//!
//! Twin: none. python-ws has no layers under its WebSocket library; what they do it does on
//! messages (python_ws/connection.py) or in Tornado's protocol class (tornado_close_codes.py).
//!
//! The stack, top to bottom (connection.rs builds it): `WriteBatch` (write_batch.rs: a batch of
//! frames per socket write, one pending pong at most), `SentCounter` (sent_counter.rs:
//! `ws_messages_sent_total` as frames reach the socket), `CodelessClose` (codeless_close.rs: the
//! close-frame workaround), then Rocket's upgraded socket. Each job holds only its own state; the
//! layer beneath is handed to it per call, so the pass-through code and the rule "a flush or a
//! shutdown goes down only after the job has written out what it holds" live here alone.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one layer does to the bytes passing through it. Every method has a pass-through default.
pub trait Job {
    /// Sees the bytes just read from beneath, on their way up.
    fn read(&mut self, _bytes: &[u8]) {}

    /// Takes a write from above; returns how many bytes of `buf` are taken.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(inner).poll_write(cx, buf)
    }

    /// Writes out whatever the job still holds; a flush or a shutdown goes down once it is done.
    fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        _inner: &mut S,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One I/O layer: a job over the stream beneath.
pub struct Layer<J, S> {
    pub job: J,
    pub inner: S,
}

impl<J, S> Layer<J, S> {
    pub fn new(job: J, inner: S) -> Self {
        Layer { job, inner }
    }
}

impl<J: Job + Unpin, S: AsyncRead + Unpin> AsyncRead for Layer<J, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.job.read(&buf.filled()[before..]);
        read
    }
}

impl<J: Job + Unpin, S: AsyncWrite + Unpin> AsyncWrite for Layer<J, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.job.poll_write(&mut this.inner, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.job.poll_write_out(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.job.poll_write_out(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
