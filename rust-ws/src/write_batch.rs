//! Coalesced writes: an I/O layer under tungstenite that collects the frames of one batch and
//! hands them to the socket in as few writes as possible, and keeps at most one pong pending.
//!
//! Twin: python-ws/python_ws/connection.py hands a batch of queued frames to Tornado's stream in
//! one write for the same reason.
//!
//! Why here and not tungstenite's own write buffer: rust-ws runs tungstenite with
//! `write_buffer_size(0)`, so each frame reaches this layer as its own `poll_write` and, without
//! this layer, its own `sendto` (bench/README.md, "Write coalescing": ≈ 1.0 syscall and ≈ 9 µs of
//! mostly kernel CPU per delivered 153-byte frame). tungstenite's buffer would coalesce too, but
//! keeps its capacity forever (an idle connection that once took a burst would hold 8+ KiB), has
//! no way to give it back, and appends one pong per ping behind a socket the client doesn't
//! read. This layer owns its buffer, frees it as soon as it is written out, and dedupes pongs.
//!
//! - Two ways in, both whole frames: the session's queued messages, already framed once per
//!   broadcast (hub::text_frame), through [`WriteBatch::push_frame`]; tungstenite's own frames
//!   (pong, ping, close) through `poll_write`, which never blocks: it copies the bytes into the
//!   buffer and returns at once, so tungstenite's own buffer is empty after every frame. It is not unbounded: the session's
//!   writer stops feeding a batch at [`BATCH_BYTES`] and waits for the flush, every other writer
//!   (ping, close) sends one frame and flushes, and past [`BATCH_BYTES`] a write first tries to
//!   pass the buffer on to the socket.
//! - `poll_flush` writes the buffer out (one `write` for a whole batch when the socket has room),
//!   then frees it, so an idle connection holds no write buffer at all.
//! - Pongs: PROTOCOL.md §3 allows at most one pending pong per connection. tungstenite queues a
//!   pong per ping; a pong frame arriving here while an earlier one is still wholly unwritten
//!   replaces it, so a client that pings and never reads costs one pong, not one per ping.
//!
//! It sits directly under tungstenite, above `SentCounter`, which therefore still counts each
//! message when the socket (not this buffer) takes its last byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::frame_walk::FrameWalk;
use crate::io_layer::Job;

/// The most a writer should batch before waiting for the flush, and the size past which a write
/// first tries to pass the buffer on. 64 KiB is where the bare reference server's gains had
/// levelled off (bench/README.md, "Write coalescing": 8 and 64 KiB both ≈ 12 frames per write).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Buffers everything written to it until a flush; see the module docs.
#[derive(Default)]
pub struct WriteBatch {
    buf: Vec<u8>,
    /// How much of `buf` the layer beneath has taken.
    written: usize,
    /// Where in `buf` the pending pong frame is, while none of it has been written.
    pong: Option<(usize, usize)>,
    /// Where tungstenite's byte stream is in its frames. tungstenite hands over whole frames
    /// (this layer always takes all it is given), so each write starts a frame; the walk only
    /// keeps the pong check right if that ever changed.
    walk: FrameWalk,
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Bytes taken from tungstenite and not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Appends a whole frame built outside tungstenite (a queued message, see hub::text_frame).
    /// Only between tungstenite's writes, which are whole frames, so the stream stays framed.
    pub fn push_frame(&mut self, frame: &[u8]) {
        debug_assert!(self.walk.between_frames(), "inside a tungstenite frame");
        self.take(frame);
    }

    /// Takes one chunk of tungstenite's outgoing byte stream, setting pong frames apart.
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(part) = self.walk.next(&mut bytes) {
            let pong = part
                .header
                .is_some_and(|h| h.opcode == OpCode::Control(Control::Pong));
            if !(pong && part.first && part.last) {
                self.buf.extend_from_slice(part.bytes);
                continue;
            }
            // A whole pong: first remove the previous one if none of it has been written yet.
            if let Some((start, end)) = self.pong.take() {
                if start >= self.written {
                    self.buf.drain(start..end);
                }
            }
            let start = self.buf.len();
            self.buf.extend_from_slice(part.bytes);
            self.pong = Some((start, self.buf.len()));
        }
    }
}

impl Job for WriteBatch {
    /// Always takes all of `buf` (see the module docs for what bounds the buffer).
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending() >= BATCH_BYTES {
            // A large batch goes out in BATCH_BYTES pieces rather than piling up; if the socket
            // is full, the flush will wait for it.
            if let Poll::Ready(Err(e)) = self.poll_write_out(inner, cx) {
                return Poll::Ready(Err(e));
            }
        }
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Writes the buffer out; once it is all written, frees it.
    fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Drained: give the memory back, so an idle connection holds no write buffer (a burst's
        // capacity kept per connection would be 10+ KiB at 10,000 connections).
        self.buf = Vec::new();
        self.written = 0;
        self.pong = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_layer::Layer;
    use tokio::io::AsyncWriteExt;

    const OP_PONG: u8 = 0x8A; // FIN + pong

    /// A socket with `room` bytes of space left (then it would block) that takes at most `limit`
    /// bytes per write, recording what it took and how many writes took it.
    struct Socket {
        room: usize,
        limit: usize,
        taken: Vec<u8>,
        writes: usize,
    }

    impl Socket {
        fn new() -> Self {
            Socket {
                room: usize::MAX,
                limit: usize::MAX,
                taken: Vec::new(),
                writes: 0,
            }
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(this.limit).min(this.room);
            this.room -= n;
            this.taken.extend_from_slice(&buf[..n]);
            this.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    fn pong(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![OP_PONG, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    /// Polls a flush once; true if it completed.
    fn try_flush(w: &mut Layer<WriteBatch, Socket>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(w).poll_flush(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn a_batch_goes_out_in_one_write_and_the_buffer_is_freed() {
        let mut w = Layer::new(WriteBatch::new(), Socket::new());
        let mut expected = Vec::new();
        for i in 0..64u8 {
            let f = text(&[b'a' + i % 26; 100]);
            w.write_all(&f).await.unwrap();
            expected.extend(f);
        }
        assert_eq!(w.inner.writes, 0, "nothing written before the flush");
        w.flush().await.unwrap();
        assert_eq!(w.inner.writes, 1);
        assert_eq!(w.inner.taken, expected);
        assert_eq!(w.job.buf.capacity(), 0, "a drained buffer is given back");
    }

    #[tokio::test]
    async fn a_short_socket_gets_the_rest_in_order() {
        let mut w = Layer::new(WriteBatch::new(), Socket::new());
        w.inner.limit = 7;
        let frames = [text(b"hello"), pong(b"p"), text(b"world")];
        for f in &frames {
            w.write_all(f).await.unwrap();
        }
        w.flush().await.unwrap();
        assert_eq!(w.inner.taken, frames.concat());
    }

    #[test]
    fn a_newer_pong_replaces_an_unwritten_one_and_data_keeps_its_order() {
        let mut w = Layer::new(WriteBatch::new(), Socket::new());
        w.inner.room = 0; // a client that doesn't read
        w.job.take(&text(b"a"));
        for i in 0..10_000u32 {
            w.job.take(&pong(&i.to_be_bytes()));
        }
        w.job.take(&text(b"b"));
        w.job.take(&pong(b"last"));
        assert!(!try_flush(&mut w));
        assert_eq!(
            w.job.pending(),
            text(b"a").len() + text(b"b").len() + pong(b"last").len(),
            "one pong pending, not one per ping"
        );
        w.inner.room = usize::MAX;
        assert!(try_flush(&mut w));
        assert_eq!(
            w.inner.taken,
            [text(b"a"), text(b"b"), pong(b"last")].concat()
        );
    }

    #[test]
    fn a_pong_already_partly_written_is_not_touched() {
        let mut w = Layer::new(WriteBatch::new(), Socket::new());
        w.job.take(&pong(b"first"));
        w.inner.room = 3; // the socket takes 3 bytes of it, then is full
        assert!(!try_flush(&mut w));
        w.job.take(&pong(b"second"));
        w.inner.room = usize::MAX;
        assert!(try_flush(&mut w));
        assert_eq!(w.inner.taken, [pong(b"first"), pong(b"second")].concat());
    }

    #[test]
    fn a_frame_split_across_writes_passes_through_whole() {
        let mut w = Layer::new(WriteBatch::new(), Socket::new());
        let big = {
            let mut f = vec![0x81, 126, 0x01, 0x00];
            f.extend(vec![b'x'; 256]);
            f
        };
        w.job.take(&big[..100]);
        w.job.take(&big[100..]);
        w.job.take(&pong(b"p"));
        assert!(try_flush(&mut w));
        assert_eq!(w.inner.taken, [big, pong(b"p")].concat());
    }
}
