//! ws-reference: a bare tokio + tokio-tungstenite server, the yardstick rust-ws is measured
//! against in bench/README.md ("Reference server"). No Rocket, no metrics, no keepalive: only
//! what ws-bench exercises, done the obvious way, so a gap between it and rust-ws is Rocket's or
//! rust-ws's own cost.
//!
//! Same as rust-ws: tokio-tungstenite 0.28, mimalloc without THP, a 4 KiB read buffer,
//! `WS_MAX_MESSAGE_BYTES` 65536, one task per connection reading frames and writing a bounded
//! outbound queue (1024 messages, a full queue evicts), batches of up to 64 queued messages per
//! flush, serialise once per broadcast. Protocol subset (PROTOCOL.md §3): the welcome, `echo` and
//! `broadcast` with `from`, `user`, `text`, `ref`, `sent_at`, a per-room `seq` and `server_ts`;
//! an invalid message gets an `error` reply without the field-by-field checks.
//!
//! Coalescing: tungstenite's own write buffer (64 KiB, `max_write_buffer_size` 128 KiB), the plain
//! way; rust-ws does the same job in its `WriteBatch` layer instead (it frees the buffer when
//! drained and keeps one pending pong). `REF_WRITE_BUFFER=0` gives the old uncoalesced behaviour.
//!
//! ```text
//! cargo build --release -p ws-reference
//! WS_PORT=28102 taskset -c 0 target/release/ws-reference
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEND_QUEUE: usize = 1024;
const WRITE_BATCH: usize = 64;
const MAX_MESSAGE_BYTES: usize = 65536;

struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Utf8Bytes>)>,
}

#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    user: &'a str,
    text: &'a str,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    sent_at: Option<u64>,
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    from: String,
    user: &'a str,
    text: &'a str,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    sent_at: Option<u64>,
    seq: u64,
    server_ts: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn config() -> WebSocketConfig {
    let write_buffer = std::env::var("REF_WRITE_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 1024);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + 128 * 1024)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

fn main() {
    let host = std::env::var("WS_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("WS_PORT").unwrap_or_else(|_| "8002".into());
    // Like rust-ws: one worker per visible core (taskset decides how many that is).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(format!("{host}:{port}").parse().expect("WS_HOST:WS_PORT"))
            .expect("bind");
        // The same listen backlog as both servers (PROTOCOL.md §1).
        let listener: TcpListener = socket.listen(1024).expect("listen");
        eprintln!("ws-reference listening on ws://{host}:{port}/ws");
        let hub = Arc::new(Hub::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(session(stream, hub.clone()));
        }
    });
}

// The handshake callback's error type is tungstenite's `ErrorResponse`, fixed by its API.
#[allow(clippy::result_large_err)]
async fn session(stream: TcpStream, hub: Arc<Hub>) {
    let _ = stream.set_nodelay(true);
    let mut room = String::from("lobby");
    let pick_room = |req: &Request, resp: Response| {
        if let Some(q) = req.uri().query() {
            if let Some(r) = q.split('&').find_map(|kv| kv.strip_prefix("room=")) {
                room = r.to_string();
            }
        }
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick_room, Some(config())).await
    else {
        return;
    };
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(SEND_QUEUE);
    // The room holds the only strong sender, so an eviction (dropping it) ends `rx`.
    let own = tx.downgrade();
    {
        let mut rooms = hub.rooms.lock().unwrap();
        let r = rooms.entry(room.clone()).or_insert(Room {
            seq: 0,
            members: Vec::new(),
        });
        let welcome = serde_json::json!({
            "type": "welcome", "conn_id": id.to_string(), "room": room,
            "server": "ws-reference", "connections": r.members.len(),
        });
        let _ = tx.try_send(welcome.to_string().into());
        r.members.push((id, tx));
    }
    loop {
        tokio::select! {
            m = rx.recv() => {
                // None: evicted as a slow consumer (every sender gone).
                let Some(m) = m else { break };
                let mut ok = ws.feed(Message::Text(m)).await.is_ok();
                for _ in 1..WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(m) if ok => ok = ws.feed(Message::Text(m)).await.is_ok(),
                        _ => break,
                    }
                }
                if !ok || ws.flush().await.is_err() {
                    break;
                }
            }
            f = ws.next() => match f {
                Some(Ok(Message::Text(t))) => on_text(&hub, &room, id, &own, t.as_str()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    {
        let mut rooms = hub.rooms.lock().unwrap();
        if let Some(r) = rooms.get_mut(&room) {
            r.members.retain(|(m, _)| *m != id);
            if r.members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    // Our close frame if we are the one closing (an eviction), then read until the client's
    // answer, or, when the client closed, until tungstenite has written its echo.
    let _ = ws.close(None).await;
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

fn on_text(hub: &Hub, room: &str, id: u64, own: &mpsc::WeakSender<Utf8Bytes>, text: &str) {
    let reply = |m: Utf8Bytes| {
        if let Some(tx) = own.upgrade() {
            let _ = tx.try_send(m);
        }
    };
    let msg = match serde_json::from_str::<In>(text) {
        Ok(m) if m.kind == "echo" || m.kind == "broadcast" => m,
        _ => {
            let e = r#"{"type":"error","code":"invalid_message","detail":"invalid"}"#;
            reply(Utf8Bytes::from_static(e));
            return;
        }
    };
    let mut out = Out {
        kind: msg.kind,
        from: id.to_string(),
        user: msg.user,
        text: msg.text,
        reference: msg.reference,
        sent_at: msg.sent_at,
        seq: 0,
        server_ts: now_ms(),
    };
    if msg.kind == "echo" {
        reply(serde_json::to_string(&out).unwrap().into());
        return;
    }
    let mut rooms = hub.rooms.lock().unwrap();
    let Some(r) = rooms.get_mut(room) else { return };
    r.seq += 1;
    out.seq = r.seq;
    // Serialise once; every member gets the same bytes.
    let payload: Utf8Bytes = serde_json::to_string(&out).unwrap().into();
    // A full queue evicts that member: dropping its sender ends its session.
    r.members
        .retain(|(_, m)| m.try_send(payload.clone()).is_ok());
}
