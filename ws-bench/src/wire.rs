//! ws-bench's own client side of the WebSocket wire (RFC 6455) on a tokio `TcpStream`: the
//! upgrade request, one read buffer per connection with a frame walker over it, and masked
//! writes. `client.rs` keeps the protocol (welcome, send, receive, close as a run counts them);
//! this file is only bytes and frames.
//!
//! Why not tokio-tungstenite, which ws-bench used before: in the broadcast closed loop a
//! delivery cost ws-bench about what it cost rust-ws (bench/README.md, "Client cost"), so the
//! generator could not push a Rust server to its knee on this machine. A receiver does one
//! thing a million times a second (take the next text frame out of bytes already read), and
//! tungstenite's general path did more than that per frame: a buffer zeroed per read, a
//! `Bytes` split and a message built per frame, and one extra `recvfrom` per wake-up that only
//! returns EAGAIN. Here a text frame is a borrowed `&str` into the read buffer, and a short read
//! counts as "drained" (see [`Wire::fill`]), so a wake-up costs one `recvfrom`.
//!
//! What is kept from tungstenite: its handshake key and accept-key functions, and its rules
//! where a server breaks the protocol (a masked frame, reserved bits or opcodes, a control
//! frame over 125 bytes or fragmented, a text that isn't UTF-8, a message over the size limit).
//! Pings are answered with a pong; the close handshake is the client's side of RFC 6455 §7.

use std::io;
use std::ops::Range;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The longest response head to the upgrade request that is read before giving up.
const MAX_HEAD: usize = 16 * 1024;

/// How a read or write on the wire failed.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The server broke RFC 6455 (or answered the upgrade with something that isn't one).
    Protocol(String),
    /// A message or frame over the size limit.
    Capacity(String),
    /// A text message that isn't UTF-8.
    Utf8,
    /// The upgrade was answered with this HTTP status instead of 101.
    Status(u16),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Protocol(s) => write!(f, "WebSocket protocol error: {s}"),
            WireError::Capacity(s) => write!(f, "Space limit exceeded: {s}"),
            WireError::Utf8 => write!(f, "UTF-8 encoding error"),
            WireError::Status(c) => write!(f, "HTTP {c}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// What the server sent next, as a receiver sees it (pings and pongs are handled on the way).
#[derive(Debug, PartialEq)]
pub enum Got<'a> {
    /// A whole text message, borrowed from the read buffer until the next call.
    Text(&'a str),
    Binary,
    /// A close frame and its status code, if it had one.
    Close(Option<u16>),
    /// The TCP stream ended (no close frame first).
    Eof,
}

/// One frame's header as read: its opcode, FIN bit and where its payload is in the buffer.
struct Frame {
    op: u8,
    fin: bool,
    payload: Range<usize>,
}

/// One client connection past the upgrade.
pub struct Wire {
    tcp: TcpStream,
    /// Bytes read and not yet consumed are `buf[start..end]`; the buffer's length is its size
    /// (zeroed once, then only written by reads).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Longest message (and frame) accepted from the server.
    max_msg: usize,
    /// A fragmented text message being put together, if any.
    frag: Option<(u8, Vec<u8>)>,
    /// The last fragmented message handed out; dropped on the next call.
    whole: Vec<u8>,
    /// Frames not yet on the wire: pongs and close replies (written without waiting, so reading
    /// never blocks on the send side) and the rest of a send that was cut off.
    out: Vec<u8>,
    out_at: usize,
    /// The masking keys' generator (xorshift64*, seeded per connection).
    rng: u64,
    close_sent: bool,
}

impl Wire {
    /// The upgrade on an open TCP connection: `host` and `path` as in the request line and
    /// `Host` header. Bytes that follow the 101 response (the welcome, usually) stay buffered.
    pub async fn upgrade(
        tcp: TcpStream,
        host: &str,
        path: &str,
        read_buffer: usize,
        max_msg: usize,
    ) -> Result<Wire, WireError> {
        let mut w = Wire {
            tcp,
            buf: vec![0; read_buffer.max(256)],
            start: 0,
            end: 0,
            max_msg,
            frag: None,
            whole: Vec::new(),
            out: Vec::with_capacity(256),
            out_at: 0,
            rng: seed(),
            close_sent: false,
        };
        let key = generate_key();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        w.out.extend_from_slice(req.as_bytes());
        w.flush().await?;
        // Bounded: each pass reads at least one byte, and the head is at most MAX_HEAD.
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&w.buf[..w.end], b"\r\n\r\n") {
                break i + 4;
            }
            if w.end >= MAX_HEAD {
                return Err(WireError::Protocol("response head too long".into()));
            }
            // Room for one more byte than is buffered: a head longer than the read buffer grows it.
            if w.fill(w.end + 1).await? == 0 {
                return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let head = String::from_utf8_lossy(&w.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| WireError::Protocol("no HTTP status line".into()))?;
        if status != 101 {
            return Err(WireError::Status(status));
        }
        let accept = derive_accept_key(key.as_bytes());
        let accepted = lines.filter_map(|l| l.split_once(':')).any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        });
        if !accepted {
            return Err(WireError::Protocol("Sec-WebSocket-Accept mismatch".into()));
        }
        w.start = head_end;
        Ok(w)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The next text message, close or end of stream; pings are answered on the way.
    /// Cancel-safe: everything read stays in the buffer for the next call.
    pub async fn next(&mut self) -> Result<Got<'_>, WireError> {
        self.whole.clear();
        // Bounded: each pass consumes a frame or reads at least one byte (or returns).
        loop {
            let Some(f) = self.frame()? else {
                let need = self.needed();
                if self.fill(need).await? == 0 {
                    return Ok(Got::Eof);
                }
                continue;
            };
            match f.op {
                OP_TEXT | OP_BINARY if f.fin && self.frag.is_none() => {
                    if f.op == OP_BINARY {
                        return Ok(Got::Binary);
                    }
                    return std::str::from_utf8(&self.buf[f.payload])
                        .map(Got::Text)
                        .map_err(|_| WireError::Utf8);
                }
                OP_TEXT | OP_BINARY if self.frag.is_none() => {
                    self.frag = Some((f.op, self.buf[f.payload].to_vec()));
                }
                OP_CONT => {
                    let Some((op, mut data)) = self.frag.take() else {
                        return Err(WireError::Protocol(
                            "continuation with nothing to continue".into(),
                        ));
                    };
                    if data.len() + f.payload.len() > self.max_msg {
                        return Err(WireError::Capacity("message too long".into()));
                    }
                    data.extend_from_slice(&self.buf[f.payload]);
                    if !f.fin {
                        self.frag = Some((op, data));
                        continue;
                    }
                    if op == OP_BINARY {
                        return Ok(Got::Binary);
                    }
                    self.whole = data;
                    return std::str::from_utf8(&self.whole)
                        .map(Got::Text)
                        .map_err(|_| WireError::Utf8);
                }
                OP_TEXT | OP_BINARY => {
                    return Err(WireError::Protocol(
                        "new data frame inside a fragmented message".into(),
                    ));
                }
                OP_PING => {
                    // At most 125 bytes (frame() checks): copied out so push can borrow.
                    let mut p = [0u8; 125];
                    let n = f.payload.len();
                    p[..n].copy_from_slice(&self.buf[f.payload]);
                    self.push(OP_PONG, &p[..n]);
                    self.flush_now()?;
                }
                OP_PONG => {}
                _ => {
                    // OP_CLOSE (frame() lets no other opcode through): answer it, as RFC 6455
                    // §5.5.1 asks, with the same status code.
                    let p = &self.buf[f.payload];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    if !self.close_sent {
                        self.close_sent = true;
                        let reply = code.map(u16::to_be_bytes);
                        self.push(OP_CLOSE, reply.as_ref().map_or(&[][..], |r| &r[..]));
                        self.flush_now()?;
                    }
                    return Ok(Got::Close(code));
                }
            }
        }
    }

    /// One text message, masked, written before returning. Cancel-safe: what isn't written yet
    /// stays queued and goes first on the next write.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), WireError> {
        self.push(OP_TEXT, text);
        self.flush().await
    }

    /// The client's side of the close handshake (RFC 6455 §7): a close frame with no status
    /// code (unless one was sent already, answering the server's), then read until the stream
    /// ends. `Ok(true)`: the server's close frame came, then its end of the stream; `Ok(false)`:
    /// the stream ended with no close frame.
    pub async fn close(&mut self) -> Result<bool, WireError> {
        let mut clean = false;
        if !self.close_sent {
            self.close_sent = true;
            self.push(OP_CLOSE, &[]);
            match self.flush().await {
                Ok(()) => {}
                // The server is gone already: there is nothing left to close.
                Err(WireError::Io(e)) if is_gone(&e) => return Ok(true),
                Err(e) => return Err(e),
            }
        } else {
            // Our close was an answer to the server's: the handshake is done on both sides.
            clean = true;
            self.flush().await?;
        }
        // Bounded by the caller's timeout; each pass consumes a frame or ends.
        loop {
            match self.next().await {
                Ok(Got::Close(_)) => clean = true,
                Ok(Got::Eof) => return Ok(clean),
                Ok(_) => {}
                Err(_) if clean => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole frame in the buffer, if one is there (its header checked), consumed.
    fn frame(&mut self) -> Result<Option<Frame>, WireError> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        let (fin, op) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(WireError::Protocol("reserved bits set".into()));
        }
        if b1 & 0x80 != 0 {
            return Err(WireError::Protocol("masked frame from the server".into()));
        }
        let control = op & 0x8 != 0;
        if !matches!(
            op,
            OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(WireError::Protocol(format!("unknown opcode {op}")));
        }
        let (len, head) = match b1 & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        if control && (len > 125 || !fin) {
            return Err(WireError::Protocol(
                "control frame too long or fragmented".into(),
            ));
        }
        if len > self.max_msg as u64 {
            return Err(WireError::Capacity(format!("frame of {len} bytes")));
        }
        let total = head + len as usize;
        if b.len() < total {
            return Ok(None);
        }
        let at = self.start;
        self.start += total;
        Ok(Some(Frame {
            op,
            fin,
            payload: at + head..at + total,
        }))
    }

    /// How many bytes the frame at the front of the buffer needs in all (at least one more
    /// than are buffered while its header is incomplete).
    fn needed(&self) -> usize {
        let b = &self.buf[self.start..self.end];
        let len = match b.get(1).map(|b1| b1 & 0x7F) {
            Some(126) if b.len() >= 4 => u16::from_be_bytes([b[2], b[3]]) as usize + 4,
            Some(127) if b.len() >= 10 => {
                u64::from_be_bytes(b[2..10].try_into().unwrap()).min(self.max_msg as u64) as usize
                    + 10
            }
            Some(n) if n < 126 => n as usize + 2,
            _ => b.len() + 1,
        };
        len.max(b.len() + 1)
    }

    /// Reads once (waiting for readiness first) into the buffer, making room for a frame of
    /// `need` bytes; returns the bytes read (0 at the end of the stream).
    ///
    /// A read shorter than the room offered drained the socket, so it also clears tokio's
    /// readiness: otherwise the next read would be a `recvfrom` that only says EAGAIN, one per
    /// wake-up. This is sound because tokio clears only the readiness it saw before the read
    /// (its tick): data arriving during or after it sets readiness anew and wakes the task.
    async fn fill(&mut self, need: usize) -> Result<usize, WireError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = self.buf.len() - self.end;
        if self.start > 0 && (room < need || room < self.buf.len() / 4) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        // Bounded: each pass ends in a read or waits for readiness.
        loop {
            self.flush_now()?;
            self.tcp.readable().await?;
            let dst = &mut self.buf[self.end..];
            let offered = dst.len();
            let mut short = 0;
            let tcp = &self.tcp;
            let r = tcp.try_io(Interest::READABLE, || {
                let (n, _) = rustix::net::recv(tcp, &mut *dst, rustix::net::RecvFlags::empty())?;
                if n > 0 && n < offered {
                    short = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => short,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            self.end += n;
            return Ok(n);
        }
    }

    /// Queues one masked frame.
    fn push(&mut self, op: u8, payload: &[u8]) {
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        let n = payload.len();
        self.out.push(0x80 | op);
        match n {
            0..=125 => self.out.push(0x80 | n as u8),
            126..=0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // xorshift64*: a fresh key per frame, as RFC 6455 §5.3 asks, for a few cycles.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let key = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
        let key = key.to_ne_bytes();
        self.out.extend_from_slice(&key);
        let at = self.out.len();
        self.out.extend_from_slice(payload);
        mask(&mut self.out[at..], key);
    }

    /// Writes what is queued, waiting as needed.
    async fn flush(&mut self) -> Result<(), WireError> {
        // Bounded: each pass writes at least one byte or fails.
        while self.out_at < self.out.len() {
            let n = self.tcp.write(&self.out[self.out_at..]).await?;
            if n == 0 {
                return Err(WireError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        Ok(())
    }

    /// Writes what is queued as far as the socket takes it now, without waiting.
    fn flush_now(&mut self) -> Result<(), WireError> {
        while self.out_at < self.out.len() {
            match self.tcp.try_write(&self.out[self.out_at..]) {
                Ok(0) => return Err(WireError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn is_gone(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected)
}

/// XORs `data` with the 4-byte key, eight bytes at a time.
fn mask(data: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A per-connection seed for the masking keys: std's per-process random hash keys, mixed with
/// a counter.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Reads one masked client frame: opcode and unmasked payload.
    async fn client_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
        let len = match h[1] & 0x7F {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut key = [0u8; 4];
        s.read_exact(&mut key).await.unwrap();
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.unwrap();
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        (h[0] & 0x0F, p)
    }

    fn server_frame(op: u8, fin: bool, p: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 | op } else { op }];
        match p.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(p);
        f
    }

    /// A server that accepts the upgrade, then runs `script` on the raw stream.
    async fn pair() -> (Wire, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(s.read_u8().await.unwrap());
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with("GET /ws?room=r HTTP/1.1\r\n"), "{head}");
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 x-pad: {}\r\nsec-websocket-accept: {}\r\n\r\n",
                "p".repeat(400),
                derive_accept_key(key.as_bytes())
            );
            // The welcome in the same write as the 101: it must stay buffered.
            let mut out = resp.into_bytes();
            out.extend(server_frame(OP_TEXT, true, br#"{"type":"welcome"}"#));
            s.write_all(&out).await.unwrap();
            s
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        // A read buffer smaller than the 101's head: the head still gets read whole.
        let w = Wire::upgrade(tcp, &addr.to_string(), "/ws?room=r", 64, 1 << 20)
            .await
            .unwrap();
        (w, server.await.unwrap())
    }

    #[tokio::test]
    async fn frames_in_and_out() {
        let (mut w, mut s) = pair().await;
        assert_eq!(w.next().await.unwrap(), Got::Text(r#"{"type":"welcome"}"#));
        // Masked on the way out, whatever the size.
        for n in [0, 5, 125, 126, 70_000] {
            let text = "x".repeat(n);
            w.send_text(text.as_bytes()).await.unwrap();
            assert_eq!(client_frame(&mut s).await, (OP_TEXT, text.into_bytes()));
        }
        // Many frames in one write, one bigger than the 64-byte buffer, a ping between them,
        // and a fragmented message with a ping inside it.
        let big = "y".repeat(300);
        let mut out = Vec::new();
        out.extend(server_frame(OP_TEXT, true, b"a"));
        out.extend(server_frame(OP_PING, true, b"p1"));
        out.extend(server_frame(OP_TEXT, true, big.as_bytes()));
        out.extend(server_frame(OP_TEXT, false, b"he"));
        out.extend(server_frame(OP_PING, true, b"p2"));
        out.extend(server_frame(OP_CONT, false, b"l"));
        out.extend(server_frame(OP_CONT, true, b"lo"));
        out.extend(server_frame(OP_TEXT, true, b"b"));
        s.write_all(&out).await.unwrap();
        assert_eq!(w.next().await.unwrap(), Got::Text("a"));
        assert_eq!(w.next().await.unwrap(), Got::Text(big.as_str()));
        assert_eq!(w.next().await.unwrap(), Got::Text("hello"));
        assert_eq!(w.next().await.unwrap(), Got::Text("b"));
        assert_eq!(client_frame(&mut s).await, (OP_PONG, b"p1".to_vec()));
        assert_eq!(client_frame(&mut s).await, (OP_PONG, b"p2".to_vec()));
        // The client's close: a close frame with no code, then clean once the server answers
        // and ends the stream.
        let closing = tokio::spawn(async move { w.close().await });
        assert_eq!(client_frame(&mut s).await, (OP_CLOSE, vec![]));
        s.write_all(&server_frame(OP_CLOSE, true, &[]))
            .await
            .unwrap();
        drop(s);
        assert!(closing.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_server_close_is_answered_and_broken_frames_are_errors() {
        let (mut w, mut s) = pair().await;
        let _ = w.next().await.unwrap();
        s.write_all(&server_frame(OP_CLOSE, true, &4000u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(w.next().await.unwrap(), Got::Close(Some(4000)));
        assert_eq!(
            client_frame(&mut s).await,
            (OP_CLOSE, 4000u16.to_be_bytes().to_vec())
        );
        drop(s);
        assert!(w.close().await.unwrap());

        for bad in [
            vec![0x81, 0x81, 0, 0, 0, 0, b'x'],         // masked
            vec![0xC1, 0x00],                           // RSV1
            vec![0x83, 0x00],                           // reserved opcode
            server_frame(OP_PING, false, b""),          // fragmented control frame
            server_frame(OP_TEXT, true, &[0xFF, 0xFE]), // not UTF-8
        ] {
            let (mut w, mut s) = pair().await;
            let _ = w.next().await.unwrap();
            s.write_all(&bad).await.unwrap();
            assert!(w.next().await.is_err(), "{bad:?}");
        }
        let (mut w, s) = pair().await;
        let _ = w.next().await.unwrap();
        drop(s);
        assert_eq!(w.next().await.unwrap(), Got::Eof);
    }

    #[test]
    fn masking_is_its_own_inverse() {
        let mut d: Vec<u8> = (0..37).collect();
        mask(&mut d, [1, 2, 3, 4]);
        assert_eq!(d[0..5], [1, 3, 1, 7, 5]);
        mask(&mut d, [1, 2, 3, 4]);
        assert_eq!(d, (0..37).collect::<Vec<u8>>());
    }
}
