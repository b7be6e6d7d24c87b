//! The `--healthcheck` client: `GET http://127.0.0.1:$WS_PORT/healthz`, healthy on a 200.
//!
//! Twin: python-ws/python_ws/healthcheck.py.
//!
//! The container image has no curl, so the binary probes itself: main.rs runs [`healthcheck`] on
//! [`healthcheck_port`] and exits 0 or 1 (PROTOCOL.md §1, "Health check"). A plain blocking
//! socket with timeouts is enough for one request and keeps the probe out of any runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::config;

/// `GET http://127.0.0.1:{port}/healthz`; true on a 200. Every step is bounded by 2 s.
pub fn healthcheck(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // Only the status line matters; read at most a few KiB.
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&buf[..len]);
    let mut parts = status_line.split_whitespace();
    matches!(
        (parts.next(), parts.next()),
        (Some(v), Some("200")) if v.starts_with("HTTP/1.")
    )
}

/// The port `--healthcheck` should probe: WS_PORT, else ROCKET_PORT, else 8000; `None` when the
/// variable set is not a port (the probe then fails).
pub fn healthcheck_port() -> Option<u16> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match get("WS_PORT").or_else(|| get("ROCKET_PORT")) {
        Some(v) => v.parse().ok(),
        None => Some(config::DEFAULT_PORT),
    }
}
