//! Test support: the real server in-process on 127.0.0.1:0 (built by the same `rocket()` as the
//! binary), real WebSocket clients, a raw-frame client, and a `/metrics` scraper.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rocket::fairing::AdHoc;
use rust_ws::{Config, Metrics};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub port: u16,
    pub metrics: Arc<Metrics>,
    shutdown: rocket::Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// A config for tests: loopback, any free port, no keepalive unless a test asks.
pub fn config() -> Config {
    Config {
        host: Some("127.0.0.1".parse().unwrap()),
        port: Some(0),
        ping_interval_secs: 0,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rocket = rust_ws::rocket(config).attach(AdHoc::on_liftoff("test port", move |r| {
            let port = r.config().port;
            Box::pin(async move {
                let _ = tx.send(port);
            })
        }));
        let rocket = rocket.ignite().await.expect("ignite");
        let metrics = rocket.state::<Arc<Metrics>>().unwrap().clone();
        let shutdown = rocket.shutdown();
        let task = tokio::spawn(async move {
            // A shutdown Rocket had to force is still a shutdown; any other error fails the test.
            if let Err(e) = rocket.launch().await {
                if !matches!(e.kind(), rocket::error::ErrorKind::Shutdown(..)) {
                    panic!("server failed: {e}");
                }
            }
        });
        let port = tokio::time::timeout(TIMEOUT, rx).await.unwrap().unwrap();
        TestServer {
            port,
            metrics,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    pub async fn connect(&self, path: &str) -> Client {
        let (ws, resp) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(self.url(path)))
                .await
                .expect("connect timed out")
                .expect("connect");
        assert_eq!(resp.status(), 101);
        ws
    }

    /// Connects and reads the welcome.
    pub async fn join(&self, path: &str) -> (Client, Value) {
        let mut ws = self.connect(path).await;
        let welcome = recv_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// The status an upgrade request gets when it is refused.
    pub async fn upgrade_status(&self, path: &str) -> u16 {
        match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(self.url(path)))
            .await
            .expect("connect timed out")
        {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String, String) {
        http_get(self.port, path).await
    }

    pub async fn scrape(&self) -> String {
        let (status, _, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// A sample's value from a fresh scrape of /metrics, e.g. `ws_connections` or
    /// `ws_closed_conns_errors_total{reason="abnormal"}`.
    pub async fn sample(&self, series: &str) -> f64 {
        let text = self.scrape().await;
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series}"))
    }

    /// Polls /metrics until `series` equals `want` (bounded by TIMEOUT); returns the last value.
    pub async fn wait_sample(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.sample(series).await;
            if v == want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.notify();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub async fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The next message within TIMEOUT (pings and pongs are skipped).
pub async fn recv(ws: &mut Client) -> Option<Message> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("receive timed out")?;
        match msg {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

pub async fn recv_json(ws: &mut Client) -> Value {
    match recv(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("server sent JSON"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub async fn send_json(ws: &mut Client, v: &Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Reads until the server's close frame; returns its code and reason (None if the stream ended
/// without one).
pub async fn recv_close(ws: &mut Client) -> Option<(u16, String)> {
    loop {
        match recv(ws).await? {
            Message::Close(Some(CloseFrame { code, reason })) => {
                return Some((code.into(), reason.to_string()))
            }
            Message::Close(None) => return Some((1005, String::new())),
            _ => continue,
        }
    }
}

/// A WebSocket client on a bare TCP socket, for frames a library won't send.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl Raw {
    /// Connects, upgrades, and returns the client with the HTTP status.
    pub async fn connect(port: u16, path: &str) -> (Raw, u16) {
        Raw::connect_with(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), path).await
    }

    pub async fn connect_with(mut stream: TcpStream, path: &str) -> (Raw, u16) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let rest = buf[end..].to_vec();
        (Raw { stream, buf: rest }, status)
    }

    /// Sends one masked frame with the given first byte (FIN, RSV bits, opcode).
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next server frame, or None when the TCP connection ended (or timed out).
    pub async fn recv_frame(&mut self) -> Option<RawFrame> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0F;
                let (len, hdr) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return Some(RawFrame { opcode, payload });
                }
            }
            let mut chunk = [0u8; 65536];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until the TCP connection ends; returns the frames and whether it ended in time.
    pub async fn frames_until_end(&mut self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(f) = self.recv_frame().await {
            frames.push(f);
            assert!(frames.len() < 100_000, "unbounded frame stream");
        }
        frames
    }
}
