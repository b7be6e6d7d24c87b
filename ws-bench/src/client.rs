//! One protocol-v1 client connection: connect, read the welcome, send, receive, close.
//!
//! Every failure comes back as a [`Fail`] with a short, closed set of kinds so a run can count
//! them; nothing here panics on what a server sends.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
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

pub struct Conn {
    pub ws: Ws,
    pub conn_id: String,
    pub server: String,
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

/// Opens a connection and reads the welcome, all within `timeout`.
pub async fn connect(
    t: &Target,
    room: Option<&str>,
    cfg: WebSocketConfig,
    timeout: Duration,
) -> Result<Conn, Fail> {
    let fut = async {
        let tcp = TcpStream::connect(t.addr).await.map_err(|e| io_fail(&e))?;
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
