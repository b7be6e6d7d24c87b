//! One protocol-v1 client connection: connect, read the welcome, send, receive, close.
//!
//! Every failure comes back as a [`Fail`] with a short, closed set of kinds so a run can count
//! them; nothing here panics on what a server sends.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
pub use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

pub type Ws = WebSocketStream<TcpStream>;

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
/// runs this once per delivery, hundreds of thousands of times a second, and the full serde parse (every field,
/// `text` included) was a visible share of ws-bench's CPU per delivery.
///
/// Sound for any flat JSON object: a key is a `"name"` whose opening quote follows `{` or `,`
/// (whitespace allowed); inside a JSON string a raw `"` is always escaped, so a key's spelling
/// inside `text` or `user` can't be mistaken for the key. Anything unexpected (escapes in
/// `from`, a non-integer number, a missing field) gives [`Scanned::Other`], and the caller
/// falls back to the full parse.
pub fn scan(text: &str) -> Scanned<'_> {
    let b = text.as_bytes();
    let broadcast = match key_value(b, b"type") {
        Some(b"\"broadcast\"") => true,
        Some(b"\"echo\"") => false,
        _ => return Scanned::Other,
    };
    let from = match key_value(b, b"from") {
        Some(v) if v.len() >= 2 && v[0] == b'"' && !v[1..v.len() - 1].contains(&b'\\') => {
            // Bounds are on ASCII quotes, so the slice is on char boundaries.
            &text[offset(b, v) + 1..offset(b, v) + v.len() - 1]
        }
        _ => return Scanned::Other,
    };
    let Some(seq) = key_value(b, b"seq").and_then(int) else {
        return Scanned::Other;
    };
    let sent_at = match key_value(b, b"sent_at") {
        Some(b"null") | None => None,
        Some(v) => match int(v) {
            Some(n) => Some(n),
            None => return Scanned::Other,
        },
    };
    Scanned::Reply(Delivery {
        broadcast,
        from,
        seq,
        sent_at,
    })
}

fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// A non-negative JSON integer literal that fits in u64.
fn int(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The raw value of top-level key `key` in a flat JSON object: a string with its quotes, or the
/// bytes of a literal/number up to the next `,` or `}`.
fn key_value<'a>(b: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    // Bounded: each pass moves past one occurrence.
    while let Some(i) = memchr::memmem::find(&b[from..], key).map(|i| i + from) {
        from = i + key.len();
        let quoted = i >= 1 && b[i - 1] == b'"' && b.get(i + key.len()) == Some(&b'"');
        if !quoted {
            continue;
        }
        let before = b[..i - 1].iter().rev().find(|c| !c.is_ascii_whitespace());
        if !matches!(before, Some(b'{') | Some(b',')) {
            continue;
        }
        let mut j = i + key.len() + 1;
        while b.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        if b.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while b.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let start = j;
        if b.get(j) == Some(&b'"') {
            j += 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            return b.get(start..=j);
        }
        while j < b.len() && !matches!(b[j], b',' | b'}') && !b[j].is_ascii_whitespace() {
            j += 1;
        }
        return Some(&b[start..j]);
    }
    None
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

fn classify(e: WsError) -> Fail {
    match e {
        WsError::Http(resp) => {
            let kind = match resp.status().as_u16() {
                503 => "http_503",
                400 => "http_400",
                404 => "http_404",
                _ => "http_other",
            };
            Fail::new(kind, format!("HTTP {}", resp.status()))
        }
        WsError::Io(io) => io_fail(&io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Fail::new("closed", e.to_string()),
        WsError::Protocol(p) => Fail::new("protocol", p.to_string()),
        other => Fail::new("ws_error", other.to_string()),
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
        let (mut ws, _resp) =
            tokio_tungstenite::client_async_with_config(t.ws_uri(room), tcp, Some(cfg))
                .await
                .map_err(classify)?;
        let text = recv_text(&mut ws).await?;
        let w = parse(&text)?;
        if w.kind.as_deref() != Some("welcome") {
            return Err(Fail::new(
                "no_welcome",
                format!("first message was {}", clip(&text)),
            ));
        }
        let conn_id = w.conn_id.as_deref().unwrap_or_default().to_string();
        let server = w.server.as_deref().unwrap_or("?").to_string();
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

/// The next text message; pings are answered by tungstenite on the way.
pub async fn recv_text(ws: &mut Ws) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, Fail> {
    // Bounded: a server that sends nothing but control frames still gets cut off after this many.
    for _ in 0..1_000_000 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Binary(_))) => {
                return Err(Fail::new("protocol", "server sent a binary frame"))
            }
            Some(Ok(Message::Close(f))) => {
                let code = f
                    .map(|f| u16::from(f.code).to_string())
                    .unwrap_or_else(|| "none".into());
                return Err(Fail::new("server_closed", format!("close code {code}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(classify(e)),
            None => return Err(Fail::new("reset", "connection ended")),
        }
    }
    Err(Fail::new("protocol", "endless control frames"))
}

pub async fn send(ws: &mut Ws, m: Message) -> Result<(), Fail> {
    ws.send(m).await.map_err(classify)
}

/// Ends a connection abruptly: `SO_LINGER` 0, then drop, so the kernel sends an RST instead of a
/// FIN and the server sees a reset with no close frame.
pub fn reset(ws: Ws) {
    let _ = ws.get_ref().set_zero_linger();
    drop(ws);
}

/// Close handshake: send 1000, wait (bounded) for the server's close and EOF.
/// `Ok(true)` for a clean close, `Ok(false)` if the server just went away.
pub async fn close(mut ws: Ws, timeout: Duration) -> Result<bool, Fail> {
    let fut = async {
        if let Err(e) = ws.close(None).await {
            return match e {
                WsError::ConnectionClosed | WsError::AlreadyClosed => Ok(true),
                e => Err(classify(e)),
            };
        }
        let mut clean = false;
        for _ in 0..100_000 {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => clean = true,
                Some(Ok(_)) => continue,
                // The stream ends (None) only after tungstenite saw a complete close handshake.
                None => return Ok(true),
                Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    return Ok(clean)
                }
                Some(Err(e)) => return if clean { Ok(true) } else { Err(classify(e)) },
            }
        }
        Ok(clean)
    };
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
