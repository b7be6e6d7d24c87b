//! One protocol-v1 client connection: connect, read the welcome, send, receive, close.
//!
//! The bytes and frames under it are `wire.rs`, ws-bench's own client side of RFC 6455 (why
//! not tokio-tungstenite any more: its header); this file is what a run counts.
//!
//! Every failure comes back as a [`Fail`] with a short, closed set of kinds so a run can count
//! them; nothing here panics on what a server sends.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
pub use tokio_tungstenite::tungstenite::Message;

use crate::target::Target;
use crate::wire::{Got, Wire, WireError};

pub type Ws = Wire;

/// Why a connection or an exchange failed. `kind` is one of a closed set, for counting.
#[derive(Debug, Clone, PartialEq)]
pub struct Fail {
    pub kind: &'static str,
    pub detail: String,
}

impl Fail {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Fail {
        Fail {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    // Small eager buffers: a held connection should cost the client a few KiB, not 256 KiB.
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// The server's messages, all fields optional; anything else in them is ignored.
#[derive(Debug, Deserialize, Default)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub conn_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub server: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub from: Option<Cow<'a, str>>,
    #[serde(rename = "ref", borrow)]
    pub reference: Option<Cow<'a, str>>,
    pub sent_at: Option<u64>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub detail: Option<Cow<'a, str>>,
}

pub fn parse(text: &str) -> Result<Incoming<'_>, Fail> {
    serde_json::from_str(text).map_err(|e| Fail::new("bad_json", format!("{e}: {}", clip(text))))
}

/// The fields a receiver counts (`type`, `from`, `seq`, `sent_at`), and nothing else.
#[derive(Debug, PartialEq)]
pub struct Delivery<'a> {
    /// `broadcast` (true) or `echo` (false).
    pub broadcast: bool,
    pub from: &'a str,
    pub seq: u64,
    pub sent_at: Option<u64>,
}

/// What `scan` made of a server message.
#[derive(Debug, PartialEq)]
pub enum Scanned<'a> {
    Reply(Delivery<'a>),
    /// Not a broadcast or echo, or a shape the scan doesn't vouch for: give it to [`parse`].
    Other,
}

/// A cheap look at one server message (a broadcast or an echo) for the fields a receiver counts
/// (`type`, `from`, `seq`, `sent_at`), without building the whole object: a broadcast receiver
/// runs this once per delivery, hundreds of thousands of times a second, and the full serde parse
/// (every field, `text` included) was a visible share of ws-bench's CPU per delivery.
///
/// One pass over a flat JSON object: each key, then its value (a string is skipped with one
/// `memchr2` for its closing quote, whatever its length), keeping the four that count. The
/// structure gives the keys, so a key's spelling inside `text` or `user` is never mistaken for
/// one. Anything it won't vouch for gives [`Scanned::Other`] and the caller falls back to the
/// full parse: a nested value, a key or a counted string with an escape in it, a counted key
/// twice, a non-integer or signed number, a missing field, anything malformed.
pub fn scan(text: &str) -> Scanned<'_> {
    scan_object(text.as_bytes())
        .and_then(|f| {
            let from = std::str::from_utf8(f.from?).ok()?;
            let broadcast = match f.kind? {
                b"broadcast" => true,
                b"echo" => false,
                _ => return None,
            };
            Some(Scanned::Reply(Delivery {
                broadcast,
                from,
                seq: f.seq?,
                sent_at: f.sent_at.unwrap_or(None),
            }))
        })
        .unwrap_or(Scanned::Other)
}

/// The counted fields of a flat object, as raw bytes (strings without their quotes).
#[derive(Default)]
struct Fields<'a> {
    kind: Option<&'a [u8]>,
    from: Option<&'a [u8]>,
    seq: Option<u64>,
    /// `Some(None)` for `"sent_at":null`.
    sent_at: Option<Option<u64>>,
}

fn scan_object(b: &[u8]) -> Option<Fields<'_>> {
    // With no backslash anywhere, every `"` opens or closes a string, in turn: the strings are
    // found with a vectorised search and only the bytes between them (colons, commas and
    // numbers) are walked one by one. A message with an escape takes the general walk below.
    if memchr::memchr(b'\\', b).is_none() {
        return scan_plain(b);
    }
    scan_general(b)
}

fn ws_from(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Files one key's value into `f`; `None` for a counted key twice or of the wrong kind.
fn file<'a>(f: &mut Fields<'a>, key: &[u8], value: &'a [u8], quoted: bool) -> Option<()> {
    match key {
        b"type" if f.kind.is_none() && quoted => f.kind = Some(value),
        b"from" if f.from.is_none() && quoted => f.from = Some(value),
        b"seq" if f.seq.is_none() && !quoted => f.seq = Some(int(value)?),
        b"sent_at" if f.sent_at.is_none() && !quoted => {
            f.sent_at = Some(match value {
                b"null" => None,
                v => Some(int(v)?),
            })
        }
        b"type" | b"from" | b"seq" | b"sent_at" => return None,
        _ => {}
    }
    Some(())
}

/// A literal (number, `null`, `true`, `false`) from `b[i]`: its bytes and the index after it.
fn literal(b: &[u8], mut i: usize) -> Option<(&[u8], usize)> {
    let start = i;
    while i < b.len() && !matches!(b[i], b',' | b'}') && !b[i].is_ascii_whitespace() {
        if matches!(b[i], b'{' | b'[' | b'"' | b']' | b':') {
            return None;
        }
        i += 1;
    }
    (i > start).then(|| (&b[start..i], i))
}

/// [`scan_object`] for a message with no backslash.
fn scan_plain(b: &[u8]) -> Option<Fields<'_>> {
    let mut quotes = Quotes::new(b);
    let mut f = Fields::default();
    let mut i = ws_from(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws_from(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws_from(b, i + 1) == b.len()).then_some(f);
    }
    // Bounded: every pass moves past one key and its value.
    loop {
        // The key: its opening quote must be the next quote in the message.
        if b.get(i) != Some(&b'"') || quotes.next() != Some(i) {
            return None;
        }
        let close = quotes.next()?;
        let key = &b[i + 1..close];
        i = ws_from(b, close + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws_from(b, i + 1);
        if b.get(i) == Some(&b'"') {
            if quotes.next() != Some(i) {
                return None;
            }
            let close = quotes.next()?;
            file(&mut f, key, &b[i + 1..close], true)?;
            i = close + 1;
        } else {
            let (value, after) = literal(b, i)?;
            file(&mut f, key, value, false)?;
            i = after;
        }
        i = ws_from(b, i);
        match b.get(i)? {
            b',' => i = ws_from(b, i + 1),
            b'}' => return (ws_from(b, i + 1) == b.len() && quotes.next().is_none()).then_some(f),
            _ => return None,
        }
    }
}

/// The positions of `"` in a message, in order, found eight bytes at a time (SWAR: a word XOR
/// `"""..."`, then an exact zero-byte test): a delivery has a dozen quotes, and a `memchr` call
/// per quote cost more than all the compares.
struct Quotes<'a> {
    b: &'a [u8],
    /// Start of the word `mask` covers.
    at: usize,
    /// The high bit of every byte of that word that is a quote.
    mask: u64,
}

impl<'a> Quotes<'a> {
    fn new(b: &'a [u8]) -> Quotes<'a> {
        Quotes {
            b,
            at: 0,
            mask: Self::word(b, 0),
        }
    }

    fn word(b: &[u8], at: usize) -> u64 {
        const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
        let mut w = [0u8; 8];
        let n = b.len().saturating_sub(at).min(8);
        w[..n].copy_from_slice(&b[at..at + n]);
        // Bytes past the end are zero, which is not a quote.
        let x = u64::from_le_bytes(w) ^ 0x2222_2222_2222_2222;
        let x = if n < 8 { x | (u64::MAX << (n * 8)) } else { x };
        !(((x & LOW7) + LOW7) | x | LOW7)
    }

    fn next(&mut self) -> Option<usize> {
        // Bounded: each pass moves a word on.
        while self.mask == 0 {
            self.at += 8;
            if self.at >= self.b.len() {
                return None;
            }
            self.mask = Self::word(self.b, self.at);
        }
        let i = self.at + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(i)
    }
}

/// [`scan_object`] for any message: strings are walked for escapes.
fn scan_general(b: &[u8]) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    let mut i = ws_from(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws_from(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws_from(b, i + 1) == b.len()).then_some(f);
    }
    // Bounded: every pass moves past one key and its value.
    loop {
        let (key, escaped, after) = string(b, i)?;
        if escaped {
            return None;
        }
        i = ws_from(b, after);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws_from(b, i + 1);
        if b.get(i) == Some(&b'"') {
            let (v, escaped, after) = string(b, i)?;
            // An escape in a counted string: the raw bytes aren't its value.
            if escaped && matches!(key, b"type" | b"from") {
                return None;
            }
            file(&mut f, key, v, true)?;
            i = after;
        } else {
            let (value, after) = literal(b, i)?;
            file(&mut f, key, value, false)?;
            i = after;
        }
        i = ws_from(b, i);
        match b.get(i)? {
            b',' => i = ws_from(b, i + 1),
            b'}' => return (ws_from(b, i + 1) == b.len()).then_some(f),
            _ => return None,
        }
    }
}

/// The JSON string whose opening quote is at `b[i]`: its raw contents, whether they hold an
/// escape, and the index just past its closing quote.
fn string(b: &[u8], i: usize) -> Option<(&[u8], bool, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    let mut escaped = false;
    // Bounded: every pass moves j forward.
    loop {
        j += memchr::memchr2(b'"', b'\\', &b[j..])?;
        if b[j] == b'"' {
            return Some((&b[start..j], escaped, j + 1));
        }
        escaped = true;
        j += 2;
        if j > b.len() {
            return None;
        }
    }
}

/// A non-negative JSON integer literal that fits in u64 (no leading zero, as JSON says).
fn int(v: &[u8]) -> Option<u64> {
    if v.is_empty() || (v.len() > 1 && v[0] == b'0') {
        return None;
    }
    v.iter().try_fold(0u64, |n, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Microseconds since the Unix epoch. ws-bench puts this in `sent_at`, which the server treats as
/// an opaque integer and hands back, so fan-out latency has microsecond resolution (both ends of
/// the measurement are this process, on one clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn echo_msg(text: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"echo","user":"bench","text":"{text}"}}"#
    ))
}

pub fn broadcast_msg(text: &str, reference: &str, sent_at_us: u64) -> Message {
    Message::text(format!(
        r#"{{"type":"broadcast","user":"bench","text":"{text}","ref":"{reference}","sent_at":{sent_at_us}}}"#
    ))
}

/// The protocol's longest `text` (PROTOCOL.md §3), in characters.
pub const MAX_TEXT: usize = 4096;

/// A client message built once: only `sent_at` changes per send, so a send costs one allocation
/// and two copies, not a `format!` of the whole object.
///
/// `sized` makes messages of an exact size on the wire (with a 16-digit `sent_at`, microseconds
/// since the epoch, as every `now_us()` until 2286 is). The protocol caps `text` at 4,096
/// characters, so past that the rest is a `pad` field, which the protocol ignores ("anything
/// else: ignored"): the server reads and parses every byte, the reply carries `text` only.
#[derive(Debug, Clone)]
pub struct Template {
    head: String,
    tail: String,
}

const SENT_AT_DIGITS: usize = 16;

impl Template {
    pub fn new(kind: &str, text: &str, pad: usize) -> Template {
        let mut tail = String::from("}");
        if pad > 0 {
            tail = format!(r#","pad":"{}"}}"#, "p".repeat(pad));
        }
        Template {
            // A one-letter user: the shortest echo with a 16-digit sent_at is then exactly 64
            // bytes, the message size sweep's smallest step.
            head: format!(r#"{{"type":"{kind}","user":"b","text":"{text}","sent_at":"#),
            tail,
        }
    }

    /// A message of `kind` that is `bytes` long on the wire (at least the shortest such message).
    pub fn sized(kind: &str, bytes: usize) -> Template {
        let bare = Template::new(kind, "", 0).len();
        let room = bytes.saturating_sub(bare).max(1);
        if room <= MAX_TEXT {
            return Template::new(kind, &"x".repeat(room), 0);
        }
        let with_pad = Template::new(kind, &"x".repeat(MAX_TEXT), 0).len() + r#","pad":"""#.len();
        Template::new(
            kind,
            &"x".repeat(MAX_TEXT),
            bytes.saturating_sub(with_pad).max(1),
        )
    }

    /// Bytes of one message on the wire (payload), with a 16-digit `sent_at`.
    pub fn len(&self) -> usize {
        self.head.len() + SENT_AT_DIGITS + self.tail.len()
    }

    pub fn at(&self, sent_at_us: u64) -> Message {
        use std::fmt::Write;
        let mut s = String::with_capacity(self.head.len() + 20 + self.tail.len());
        s.push_str(&self.head);
        let _ = write!(s, "{sent_at_us}");
        s.push_str(&self.tail);
        Message::text(s)
    }
}

pub struct Conn {
    pub ws: Ws,
    pub conn_id: String,
    pub server: String,
    /// Counts this connection as open while it lives (set by the mode's `Ctx::connect`).
    pub open: Option<crate::modes::Open>,
}

/// The kinds are the ones tokio-tungstenite's errors were counted as, so counts stay comparable
/// across the change of client.
fn classify(e: WireError) -> Fail {
    match e {
        WireError::Status(code) => {
            let kind = match code {
                503 => "http_503",
                400 => "http_400",
                404 => "http_404",
                _ => "http_other",
            };
            // "HTTP 404 Not Found": the status with its canonical reason, as before.
            let status = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(code)
                .map_or_else(|_| code.to_string(), |s| s.to_string());
            Fail::new(kind, format!("HTTP {status}"))
        }
        WireError::Io(io) => io_fail(&io),
        WireError::Protocol(_) => Fail::new("protocol", e.to_string()),
        WireError::Capacity(_) | WireError::Utf8 => Fail::new("ws_error", e.to_string()),
    }
}

fn io_fail(io: &std::io::Error) -> Fail {
    use std::io::ErrorKind::*;
    let kind = match io.kind() {
        ConnectionRefused => "refused",
        ConnectionReset | BrokenPipe | UnexpectedEof => "reset",
        AddrNotAvailable | AddrInUse => "no_local_port",
        TimedOut => "timeout",
        _ if io.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) => "too_many_files",
        _ => "io",
    };
    Fail::new(kind, io.to_string())
}

/// A TCP connection to `to`, from `source` if given (port chosen by the kernel).
///
/// Loopback has ~28,000 ephemeral ports (32768-60999) per source address and destination, so one
/// source address can't open 100,000 connections to one server port; spreading them over
/// 127.0.0.2, 127.0.0.3, ... multiplies that.
async fn tcp(to: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect(to).await;
    };
    let sock = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(to).await
}

/// Opens a connection and reads the welcome, all within `timeout`.
pub async fn connect(
    t: &Target,
    room: Option<&str>,
    cfg: WebSocketConfig,
    timeout: Duration,
    source: Option<IpAddr>,
) -> Result<Conn, Fail> {
    let fut = async {
        let tcp = tcp(t.addr, source).await.map_err(|e| io_fail(&e))?;
        // Small request/response messages: don't let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let uri = t.ws_uri(room);
        let rest = uri.strip_prefix("ws://").unwrap_or(&uri);
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let max = cfg.max_message_size.unwrap_or(usize::MAX);
        let mut ws = Wire::upgrade(tcp, host, path, cfg.read_buffer_size, max)
            .await
            .map_err(classify)?;
        let (conn_id, server) = {
            let text = recv_text(&mut ws).await?;
            let w = parse(&text)?;
            if w.kind.as_deref() != Some("welcome") {
                return Err(Fail::new(
                    "no_welcome",
                    format!("first message was {}", clip(&text)),
                ));
            }
            (
                w.conn_id.as_deref().unwrap_or_default().to_string(),
                w.server.as_deref().unwrap_or("?").to_string(),
            )
        };
        Ok(Conn {
            ws,
            conn_id,
            server,
            open: None,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Fail::new("timeout", format!("no welcome within {timeout:?}")))?
}

/// A text message borrowed from the connection's read buffer (until its next read). A `str`
/// by `Deref`, so the modes use it as they used tungstenite's owned text.
#[derive(Debug, Clone, Copy)]
pub struct Text<'a>(&'a str);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

/// The next text message; pings are answered on the way.
pub async fn recv_text(ws: &mut Ws) -> Result<Text<'_>, Fail> {
    match ws.next().await.map_err(classify)? {
        Got::Text(t) => Ok(Text(t)),
        Got::Binary => Err(Fail::new("protocol", "server sent a binary frame")),
        Got::Close(code) => {
            let code = code.map_or_else(|| "none".into(), |c| c.to_string());
            Err(Fail::new("server_closed", format!("close code {code}")))
        }
        // What tokio-tungstenite made of a stream that ended without a close frame.
        Got::Eof => Err(Fail::new(
            "protocol",
            "Connection reset without closing handshake",
        )),
    }
}

/// Sends one message (ws-bench sends only text).
pub async fn send(ws: &mut Ws, m: Message) -> Result<(), Fail> {
    match m {
        Message::Text(t) => ws.send_text(t.as_bytes()).await.map_err(classify),
        other => Err(Fail::new(
            "internal",
            format!("not a text message: {other:?}"),
        )),
    }
}

/// Ends a connection abruptly: `SO_LINGER` 0, then drop, so the kernel sends an RST instead of a
/// FIN and the server sees a reset with no close frame.
pub fn reset(ws: Ws) {
    let _ = ws.tcp().set_zero_linger();
    drop(ws);
}

/// Close handshake: send 1000, wait (bounded) for the server's close and EOF.
/// `Ok(true)` for a clean close, `Ok(false)` if the server just went away.
pub async fn close(mut ws: Ws, timeout: Duration) -> Result<bool, Fail> {
    let fut = async { ws.close().await.map_err(classify) };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Fail::new("close_timeout", "server did not finish the close"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_messages() {
        let w = parse(r#"{"type":"welcome","conn_id":"17","room":"lobby","server":"rust-ws","connections":3}"#).unwrap();
        assert_eq!(w.kind.as_deref(), Some("welcome"));
        assert_eq!(w.conn_id.as_deref(), Some("17"));
        assert_eq!(w.server.as_deref(), Some("rust-ws"));

        let b = parse(r#"{"type":"broadcast","from":"17","user":"a\"b","text":"hi","ref":"r1","sent_at":1732358400000123,"seq":42,"server_ts":1}"#).unwrap();
        assert_eq!(
            (b.from.as_deref(), b.seq, b.sent_at),
            (Some("17"), Some(42), Some(1_732_358_400_000_123))
        );
        assert_eq!(b.reference.as_deref(), Some("r1"));

        let e = parse(r#"{"type":"error","code":"invalid_message","detail":"user: x"}"#).unwrap();
        assert_eq!(e.code.as_deref(), Some("invalid_message"));

        let n = parse(r#"{"type":"echo","ref":null,"sent_at":null,"seq":0}"#).unwrap();
        assert_eq!((n.reference, n.sent_at), (None, None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(parse("not json").unwrap_err().kind, "bad_json");
        assert_eq!(parse(r#"{"sent_at":1.5}"#).unwrap_err().kind, "bad_json");
        assert!(parse(&"x".repeat(10_000)).unwrap_err().detail.len() < 300);
    }

    #[test]
    fn scan_reads_what_a_receiver_needs() {
        let b = r#"{"type":"broadcast","from":"17","user":"a\"b","text":"hi","ref":"r1","sent_at":1732358400000123,"seq":42,"server_ts":1}"#;
        assert_eq!(
            scan(b),
            Scanned::Reply(Delivery {
                broadcast: true,
                from: "17",
                seq: 42,
                sent_at: Some(1_732_358_400_000_123)
            })
        );
        // Order and whitespace are free; a null sent_at is None.
        let e = r#"{ "seq" : 0, "sent_at": null, "from":"9", "type" : "echo" }"#;
        assert_eq!(
            scan(e),
            Scanned::Reply(Delivery {
                broadcast: false,
                from: "9",
                seq: 0,
                sent_at: None
            })
        );
        // The same verdict as the full parse on every field, for the servers' real shapes.
        for m in [
            b,
            r#"{"type":"broadcast","from":"3","user":"bench","text":"xxxx","ref":null,"sent_at":5,"seq":7,"server_ts":9}"#,
        ] {
            let (Scanned::Reply(d), Ok(full)) = (scan(m), parse(m)) else {
                panic!("{m}")
            };
            assert_eq!(
                (Some(d.from), Some(d.seq), d.sent_at),
                (full.from.as_deref(), full.seq, full.sent_at)
            );
        }
    }

    #[test]
    fn quotes_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut m = vec![b'x'; len];
                m[at] = b'"';
                if at + 3 < len {
                    m[at + 3] = b'"';
                }
                let want: Vec<usize> = (0..len).filter(|&i| m[i] == b'"').collect();
                let mut q = Quotes::new(&m);
                let got: Vec<usize> = std::iter::from_fn(|| q.next()).collect();
                assert_eq!(got, want, "{len} {at}");
            }
        }
        // A byte just above or below the quote's is not one.
        let m = [0x21, 0x23, 0xA2, 0x22, 0x00, 0x22];
        let mut q = Quotes::new(&m);
        assert_eq!(
            std::iter::from_fn(|| q.next()).collect::<Vec<_>>(),
            vec![3, 5]
        );
    }

    #[test]
    fn scan_is_not_fooled_by_keys_inside_strings() {
        // A text that spells other keys: the real ones come from the structure, not the text.
        let m = r#"{"type":"broadcast","text":"\"seq\":99,\"from\":\"x\"","from":"4","seq":2,"sent_at":1}"#;
        let Scanned::Reply(d) = scan(m) else { panic!() };
        assert_eq!((d.from, d.seq), ("4", 2));
        // type spelled inside a string only: not a reply.
        let m = r#"{"type":"welcome","text":",\"type\":\"broadcast\""}"#;
        assert_eq!(scan(m), Scanned::Other);
        // Shapes the scan won't vouch for go to the full parse.
        for m in [
            r#"{"type":"broadcast","from":"a\"b","seq":1}"#,
            r#"{"type":"broadcast","from":"1","seq":1.5}"#,
            r#"{"type":"broadcast","from":"1","seq":-1}"#,
            r#"{"type":"broadcast","from":"1"}"#,
            r#"{"type":"broadcast","from":"1","seq":1,"sent_at":"7"}"#,
            r#"{"type":"error","code":"invalid_json"}"#,
            "not json",
            "",
            r#"{"type":"broadcast","from":"#,
            // A counted key twice (serde refuses it), a nested value, trailing bytes, a
            // leading zero, an escaped key.
            r#"{"type":"broadcast","from":"1","seq":1,"seq":2}"#,
            r#"{"type":"broadcast","from":"1","seq":1,"x":{"seq":2}}"#,
            r#"{"type":"broadcast","from":"1","seq":1} x"#,
            r#"{"type":"broadcast","from":"1","seq":01}"#,
            r#"{"type":"broadcast","from":"1","s\u0065q":1}"#,
            r#"{"type":"broadcast","from":"1","seq":18446744073709551616}"#,
        ] {
            assert_eq!(scan(m), Scanned::Other, "{m}");
        }
    }

    #[test]
    fn templates_make_exact_sizes_within_the_protocol() {
        for bytes in [64, 1024, 4000, 16 * 1024, 64 * 1024] {
            let t = Template::sized("echo", bytes);
            let Message::Text(m) = t.at(now_us()) else {
                panic!()
            };
            assert_eq!(m.len(), bytes, "{bytes}");
            assert_eq!(t.len(), bytes);
            let v: serde_json::Value = serde_json::from_str(m.as_str()).unwrap();
            assert_eq!(v["type"], "echo");
            let text = v["text"].as_str().unwrap().chars().count();
            assert!((1..=MAX_TEXT).contains(&text), "{text}");
            assert!(v["sent_at"].as_u64().unwrap() > 1_600_000_000_000_000);
        }
        // Smaller than the bare message: the shortest valid one.
        let Message::Text(m) = Template::sized("echo", 1).at(1) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(m.as_str()).unwrap();
        assert_eq!(v["text"], "x");
        let Message::Text(m) = Template::new("broadcast", "hi", 0).at(42) else {
            panic!()
        };
        assert_eq!(
            m.as_str(),
            r#"{"type":"broadcast","user":"b","text":"hi","sent_at":42}"#
        );
    }

    #[test]
    fn messages_are_protocol_v1_json() {
        let Message::Text(t) = broadcast_msg("hello", "r-1", 123) else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["type"], "broadcast");
        assert_eq!(v["sent_at"], 123);
        assert_eq!(v["ref"], "r-1");
        let Message::Text(t) = echo_msg("x") else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["user"].as_str()),
            (Some("echo"), Some("bench"))
        );
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
