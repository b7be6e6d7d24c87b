//! Integration tests: the real server (in-process, port 0) and the real binary, real clients.
//! Each protocol rule of PROTOCOL.md and each metric movement is asserted here.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn closed(reason: &str) -> String {
    format!("ws_closed_conns_errors_total{{reason=\"{reason}\"}}")
}

const OK: &str = "ws_messages_received_total{outcome=\"ok\"}";
const INVALID: &str = "ws_messages_received_total{outcome=\"invalid\"}";

async fn assert_no_abnormal_closes(s: &TestServer) {
    for reason in [
        "abnormal",
        "protocol",
        "too_large",
        "slow_consumer",
        "ping_timeout",
        "send_failed",
    ] {
        assert_eq!(s.sample(&closed(reason)).await, 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes() {
    let s = TestServer::start(config()).await;
    let (status, head, body) = s.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain"));

    let (status, head, body) = s.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("# TYPE ws_connections gauge"));
    assert!(!body.contains("_created"));

    for path in ["/", "/nope", "/ws/extra", "/metrics/x", "/healthz/"] {
        assert_eq!(s.get(path).await.0, 404, "{path}");
    }
    // A plain GET of /ws (no upgrade) is not a WebSocket request.
    assert_eq!(s.get("/ws").await.0, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rooms_get_400_before_the_upgrade() {
    let s = TestServer::start(config()).await;
    let long = format!("/ws?room={}", "r".repeat(65));
    for path in [
        "/ws?room=",
        "/ws?room=a%20b",
        "/ws?room=a/b",
        "/ws?room=%C3%A9",
        long.as_str(),
    ] {
        assert_eq!(s.upgrade_status(path).await, 400, "{path}");
    }
    let ok = format!("/ws?room={}", "r".repeat(64));
    for path in ["/ws", "/ws?room=A-z_0.9", ok.as_str()] {
        assert_eq!(s.upgrade_status(path).await, 101, "{path}");
    }
    // Refused upgrades are not connections.
    assert_eq!(s.wait_sample("all_ws_connections_total", 3.0).await, 3.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_broadcast_echo_and_rooms() {
    let s = TestServer::start(config()).await;
    let (mut a, wa) = s.join("/ws?room=blue").await;
    let (mut b, wb) = s.join("/ws?room=blue").await;
    let (mut c, wc) = s.join("/ws").await;
    assert_eq!(wa["room"], "blue");
    assert_eq!(wa["server"], "rust-ws");
    assert_eq!(
        (wa["connections"].as_u64(), wb["connections"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (wc["room"].as_str(), wc["connections"].as_u64()),
        (Some("lobby"), Some(1))
    );
    let ids: Vec<&str> = [&wa, &wb, &wc]
        .iter()
        .map(|w| w["conn_id"].as_str().unwrap())
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);

    send_json(
        &mut a,
        &json!({"type":"broadcast","user":"ann","text":"hi","ref":"r1","sent_at":1732358400000u64}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let m = recv_json(ws).await;
        assert_eq!(m["type"], "broadcast");
        assert_eq!(m["from"], wa["conn_id"]);
        assert_eq!(
            (m["user"].as_str(), m["text"].as_str()),
            (Some("ann"), Some("hi"))
        );
        assert_eq!(
            (m["ref"].as_str(), m["sent_at"].as_u64()),
            (Some("r1"), Some(1732358400000))
        );
        assert_eq!(m["seq"], 1);
        assert!(m["server_ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    send_json(
        &mut b,
        &json!({"type":"broadcast","user":"bob","text":"yo"}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let m = recv_json(ws).await;
        assert_eq!(
            (m["seq"].as_u64(), m["ref"].clone(), m["sent_at"].clone()),
            (Some(2), Value::Null, Value::Null)
        );
    }

    // Echo: the sender only, seq 0.
    send_json(
        &mut c,
        &json!({"type":"echo","user":"cy","text":"é","ref":null,"x":1}),
    )
    .await;
    let e = recv_json(&mut c).await;
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64(), e["text"].as_str()),
        (Some("echo"), Some(0), Some("é"))
    );
    assert_eq!(e["from"], wc["conn_id"]);

    // The other room heard nothing: its next message is its own echo.
    send_json(&mut c, &json!({"type":"echo","user":"cy","text":"again"})).await;
    assert_eq!(recv_json(&mut c).await["text"], "again");

    assert_eq!(s.sample(OK).await, 4.0);
    assert_eq!(s.sample(INVALID).await, 0.0);
    // 3 welcomes + 2 broadcasts x 2 recipients + 2 echoes.
    assert_eq!(s.wait_sample("ws_messages_sent_total", 9.0).await, 9.0);
    assert_eq!(
        s.sample("ws_message_handling_duration_seconds_count").await,
        4.0
    );
    assert_eq!(s.sample("ws_broadcast_duration_seconds_count").await, 2.0);
    assert_eq!(s.sample("ws_connections").await, 3.0);
    assert_eq!(s.sample("all_ws_connections_total").await, 3.0);

    for ws in [&mut a, &mut b, &mut c] {
        ws.close(None).await.unwrap();
    }
    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);
    assert_no_abnormal_closes(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_room_restarts_seq_and_members_see_broadcasts_in_seq_order() {
    let s = TestServer::start(config()).await;
    let (mut a, _) = s.join("/ws?room=order").await;
    let (mut b, _) = s.join("/ws?room=order").await;
    const N: u64 = 50;
    // Two senders at once: every member still sees 1..=2N with no gap and no reordering.
    for i in 0..N {
        send_json(
            &mut a,
            &json!({"type":"broadcast","user":"a","text":format!("a{i}")}),
        )
        .await;
        send_json(
            &mut b,
            &json!({"type":"broadcast","user":"b","text":format!("b{i}")}),
        )
        .await;
    }
    for ws in [&mut a, &mut b] {
        let seqs: Vec<u64> = {
            let mut v = Vec::new();
            for _ in 0..2 * N {
                v.push(recv_json(ws).await["seq"].as_u64().unwrap());
            }
            v
        };
        assert_eq!(seqs, (1..=2 * N).collect::<Vec<_>>());
    }
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);

    // The room was removed with its last member; a new one starts from seq 1.
    let (mut c, w) = s.join("/ws?room=order").await;
    assert_eq!(w["connections"], 1);
    send_json(
        &mut c,
        &json!({"type":"broadcast","user":"c","text":"fresh"}),
    )
    .await;
    assert_eq!(recv_json(&mut c).await["seq"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answer_the_sender_and_keep_the_connection_open() {
    let s = TestServer::start(config()).await;
    let (mut a, _) = s.join("/ws?room=err").await;
    let (mut b, _) = s.join("/ws?room=err").await;

    let cases: Vec<(Message, &str, &str)> = vec![
        (Message::text("not json"), "invalid_json", ""),
        (
            Message::text("[1,2]"),
            "invalid_message",
            "message: must be a JSON object",
        ),
        (
            Message::text(r#"{"user":"u"}"#),
            "invalid_message",
            "type: ",
        ),
        (
            Message::text(r#"{"type":"shout","user":"u","text":"t"}"#),
            "unknown_type",
            "",
        ),
        (
            Message::text(r#"{"type":"echo","user":"","text":"t"}"#),
            "invalid_message",
            "user: ",
        ),
        (
            Message::text(r#"{"type":"echo","user":"u","text":""}"#),
            "invalid_message",
            "text: ",
        ),
        (
            Message::text(r#"{"type":"echo","user":"u","text":"t","ref":1}"#),
            "invalid_message",
            "ref: ",
        ),
        (
            Message::text(r#"{"type":"echo","user":"u","text":"t","sent_at":1.5}"#),
            "invalid_message",
            "sent_at: ",
        ),
        (
            Message::Binary(vec![1u8, 2, 3].into()),
            "binary_unsupported",
            "",
        ),
    ];
    let n = cases.len() as f64;
    for (msg, code, detail_prefix) in cases {
        a.send(msg).await.unwrap();
        let e = recv_json(&mut a).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        let detail = e["detail"].as_str().unwrap();
        assert!(
            !detail.is_empty() && detail.starts_with(detail_prefix),
            "{e}"
        );
        // Still usable.
        send_json(&mut a, &json!({"type":"echo","user":"u","text":"alive"})).await;
        assert_eq!(recv_json(&mut a).await["text"], "alive");
    }
    // Errors went to the sender only: b's next message is its own echo.
    send_json(&mut b, &json!({"type":"echo","user":"b","text":"mine"})).await;
    assert_eq!(recv_json(&mut b).await["text"], "mine");

    assert_eq!(s.sample(INVALID).await, n);
    assert_eq!(s.sample(OK).await, n + 1.0);
    // One handling observation per text message (the binary frame is not text).
    assert_eq!(
        s.sample("ws_message_handling_duration_seconds_count").await,
        2.0 * n
    );
    assert_eq!(s.sample("ws_broadcast_duration_seconds_count").await, 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_with_the_same_code_then_1000_for_none() {
    let s = TestServer::start(config()).await;
    let (mut a, _) = s.join("/ws").await;
    a.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(recv_close(&mut a).await.map(|c| c.0), Some(4000));
    // The stream ends after the handshake (the server closed TCP).
    assert!(tokio::time::timeout(TIMEOUT, a.next())
        .await
        .unwrap()
        .is_none());

    // A close frame without a code is answered with 1000, then TCP close.
    let (mut raw, status) = Raw::connect(s.port, "/ws").await;
    assert_eq!(status, 101);
    assert_eq!(raw.recv_frame().await.unwrap().opcode, 1); // welcome
    raw.send_frame(0x88, &[]).await;
    let frames = raw.frames_until_end().await;
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].opcode, frames[0].close_code()), (8, Some(1000)));

    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);
    assert_no_abnormal_closes(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ping_gets_a_pong_with_the_same_payload() {
    let s = TestServer::start(config()).await;
    let (mut raw, _) = Raw::connect(s.port, "/ws").await;
    raw.recv_frame().await.unwrap(); // welcome
    raw.send_frame(0x89, b"abc").await;
    let pong = raw.recv_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, b"abc".as_slice())
    );
    // Pings and pongs are not messages.
    raw.send_frame(0x8A, b"unsolicited").await;
    raw.send_frame(0x88, &[0x03, 0xE8]).await;
    raw.frames_until_end().await;
    assert_eq!(s.sample(OK).await + s.sample(INVALID).await, 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_with_1009() {
    let mut cfg = config();
    cfg.max_message_bytes = 1024;
    let s = TestServer::start(cfg).await;
    let (mut a, _) = s.join("/ws").await;
    // Exactly at the limit is fine.
    let overhead = r#"{"type":"echo","user":"u","text":""}"#.len();
    let text = format!(
        r#"{{"type":"echo","user":"u","text":"{}"}}"#,
        "x".repeat(1024 - overhead)
    );
    assert_eq!(text.len(), 1024);
    a.send(Message::text(text)).await.unwrap();
    assert_eq!(recv_json(&mut a).await["type"], "echo");

    a.send(Message::text("x".repeat(1025))).await.unwrap();
    assert_eq!(recv_close(&mut a).await.map(|c| c.0), Some(1009));

    // Fragmented: each fragment is small, the reassembled message is not.
    let (mut raw, _) = Raw::connect(s.port, "/ws").await;
    raw.recv_frame().await.unwrap();
    raw.send_frame(0x01, &[b'a'; 600]).await; // text, not final
    raw.send_frame(0x80, &[b'a'; 600]).await; // continuation, final
    let frames = raw.frames_until_end().await;
    assert_eq!(frames.last().and_then(|f| f.close_code()), Some(1009));

    assert_eq!(s.wait_sample(&closed("too_large"), 2.0).await, 2.0);
    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);
    // A message closed with 1009 is not counted as received.
    assert_eq!(s.sample(OK).await, 1.0);
    assert_eq!(s.sample(INVALID).await, 0.0);
    assert_eq!(s.sample(&closed("abnormal")).await, 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_close_with_1002_or_1007_counted_as_protocol() {
    let s = TestServer::start(config()).await;
    // (first byte, payload, expected close code)
    let cases: [(u8, &[u8], u16); 3] = [
        (0xC1, b"{}", 1002),         // RSV1 set, no extension negotiated
        (0x81, &[0xC3, 0x28], 1007), // text frame with invalid UTF-8
        (0x83, b"x", 1002),          // reserved opcode
    ];
    for (first, payload, code) in cases {
        let (mut raw, _) = Raw::connect(s.port, "/ws").await;
        raw.recv_frame().await.unwrap();
        raw.send_frame(first, payload).await;
        let frames = raw.frames_until_end().await;
        assert_eq!(
            frames.last().and_then(|f| f.close_code()),
            Some(code),
            "{first:#x}"
        );
    }
    assert_eq!(s.wait_sample(&closed("protocol"), 3.0).await, 3.0);
    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);
    assert_eq!(s.sample(&closed("abnormal")).await, 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnects_count_abnormal_and_the_gauge_returns_to_zero() {
    let s = TestServer::start(config()).await;
    // EOF without a close frame. (Each client reads its welcome first, so the session is
    // running: a reset racing the server's side of the upgrade is a different case.)
    let (mut raw, _) = Raw::connect(s.port, "/ws").await;
    assert_eq!(raw.recv_frame().await.map(|f| f.opcode), Some(1));
    drop(raw);
    // A TCP reset.
    let (mut raw, _) = Raw::connect(s.port, "/ws").await;
    assert_eq!(raw.recv_frame().await.map(|f| f.opcode), Some(1));
    let sock = socket2::SockRef::from(&raw.stream);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(raw);
    assert_eq!(s.wait_sample(&closed("abnormal"), 2.0).await, 2.0);
    assert_eq!(s.wait_sample("ws_connections", 0.0).await, 0.0);
    assert_eq!(s.sample("all_ws_connections_total").await, 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_upgrade_gets_503() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let s = TestServer::start(cfg).await;
    let (mut a, _) = s.join("/ws").await;
    let (_b, _) = s.join("/ws").await;
    assert_eq!(s.upgrade_status("/ws").await, 503);
    // Other routes still answer.
    assert_eq!(s.get("/healthz").await.0, 200);
    a.close(None).await.unwrap();
    assert_eq!(s.wait_sample("ws_connections", 1.0).await, 1.0);
    let deadline = Instant::now() + TIMEOUT;
    while s.upgrade_status("/ws").await != 101 {
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.sample("all_ws_connections_total").await, 3.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_evicted_with_1008_and_nobody_else_waits() {
    let mut cfg = config();
    cfg.send_queue = 8;
    let s = TestServer::start(cfg).await;
    let (mut sender, _) = s.join("/ws?room=slow").await;
    let (mut healthy, _) = s.join("/ws?room=slow").await;
    // A reader with a tiny receive buffer that stops reading after its welcome.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(([127, 0, 0, 1], s.port).into()).await.unwrap();
    let (mut slow, status) = Raw::connect_with(stream, "/ws?room=slow").await;
    assert_eq!(status, 101);
    slow.recv_frame().await.unwrap();

    let big = "é".repeat(4096); // 4096 characters, 8 KiB
    let start = Instant::now();
    let mut sent = 0u64;
    while s
        .metrics
        .closed_count(rust_ws::metrics::CloseReason::SlowConsumer)
        == 0
    {
        assert!(
            sent < 2000 && start.elapsed() < Duration::from_secs(30),
            "not evicted after {sent}"
        );
        send_json(
            &mut sender,
            &json!({"type":"broadcast","user":"s","text":big}),
        )
        .await;
        sent += 1;
        // Lock-step: the fan-out never waited on the slow reader.
        for ws in [&mut sender, &mut healthy] {
            assert_eq!(recv_json(ws).await["seq"].as_u64(), Some(sent));
        }
    }
    for _ in 0..5 {
        send_json(
            &mut sender,
            &json!({"type":"broadcast","user":"s","text":"after"}),
        )
        .await;
        sent += 1;
        for ws in [&mut sender, &mut healthy] {
            assert_eq!(recv_json(ws).await["seq"].as_u64(), Some(sent));
        }
    }
    // The slow reader got a gap-free prefix, then 1008 "slow consumer", then TCP close.
    let frames = slow.frames_until_end().await;
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|f| f.opcode == 1)
        .map(|f| {
            serde_json::from_slice::<Value>(&f.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!((seqs.len() as u64) < sent);
    let close = frames.last().unwrap();
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(&close.payload[2..], b"slow consumer");

    assert_eq!(s.sample(&closed("slow_consumer")).await, 1.0);
    for reason in ["abnormal", "send_failed", "protocol"] {
        assert_eq!(s.sample(&closed(reason)).await, 0.0, "{reason}");
    }
    // Every fan-out was timed.
    assert_eq!(
        s.sample("ws_broadcast_duration_seconds_count").await,
        sent as f64
    );
    // Sent counts what reached sockets: 3 welcomes, every broadcast to the two readers, and the
    // slow reader's share, nothing it was never written.
    let want = (3 + 2 * sent + seqs.len() as u64) as f64;
    assert_eq!(s.wait_sample("ws_messages_sent_total", want).await, want);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_drops_a_peer_that_never_answers_pings() {
    let mut cfg = config();
    cfg.ping_interval_secs = 1;
    cfg.ping_timeout_secs = 1;
    let s = TestServer::start(cfg).await;
    // The raw client never answers pings; the library client answers while it reads.
    let (mut silent, _) = Raw::connect(s.port, "/ws").await;
    silent.recv_frame().await.unwrap();
    let (mut alive, _) = s.join("/ws").await;

    let reader = tokio::spawn(async move {
        // Read (and so answer pings) for 3.5 s; the server must not drop us.
        let until = Instant::now() + Duration::from_millis(3500);
        let mut pings = 0;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until.into(), alive.next()).await {
            if m.is_ping() {
                pings += 1;
            }
        }
        (alive, pings)
    });
    let first = silent.recv_frame().await.unwrap();
    assert_eq!(first.opcode, 0x9, "the server pings");
    // No pong: dropped within interval + timeout (plus slack).
    let frames = silent.frames_until_end().await;
    assert!(frames.iter().all(|f| f.opcode == 0x9));
    assert_eq!(s.wait_sample(&closed("ping_timeout"), 1.0).await, 1.0);

    let (mut alive, pings) = reader.await.unwrap();
    assert!(pings >= 2, "pings seen: {pings}");
    send_json(
        &mut alive,
        &json!({"type":"echo","user":"u","text":"still here"}),
    )
    .await;
    assert_eq!(recv_json(&mut alive).await["text"], "still here");
    assert_eq!(s.sample(&closed("ping_timeout")).await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_1001_to_every_client() {
    let s = TestServer::start(config()).await;
    let (mut a, _) = s.join("/ws?room=one").await;
    let (mut b, _) = s.join("/ws?room=two").await;
    let metrics = s.metrics.clone();
    s.stop().await;
    for ws in [&mut a, &mut b] {
        assert_eq!(
            recv_close(ws).await,
            Some((1001, "server shutting down".to_string()))
        );
    }
    let deadline = Instant::now() + TIMEOUT;
    while metrics.connections.get() != 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A shutdown close is not abnormal.
    for reason in rust_ws::metrics::CloseReason::ALL {
        assert_eq!(metrics.closed_count(reason), 0, "{reason:?}");
    }
}

// ---- the binary ------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_rust-ws");

/// Starts the binary on a free port; returns the child and its port (read from the start line).
fn spawn_binary(extra: &[(&str, &str)]) -> (std::process::Child, u16) {
    let mut cmd = Command::new(BIN);
    cmd.env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", "0")
        .env_remove("ROCKET_ADDRESS")
        .env_remove("ROCKET_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no start-up line");
    assert!(
        line.starts_with("INFO rust-ws: listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("backlog=1024") && line.contains("WS_SEND_QUEUE=1024"),
        "{line}"
    );
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    // Only one line at start-up.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "more than one start-up line"
    );
    (child, port)
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sigterm_closes_with_1001_and_exits_0_within_5s() {
    let (mut child, port) = spawn_binary(&[]);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");

    // The listen backlog really is 1024 (ss shows it as Send-Q of the listening socket).
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss from iproute2 is needed for the backlog check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ss from iproute2 is needed for the backlog check: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per listening socket: State Recv-Q Send-Q Local Peer.
    let listening: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("LISTEN"))
        .collect();
    assert_eq!(
        listening.len(),
        1,
        "no single listening socket on port {port} in ss output:\n{text}"
    );
    let send_q = listening[0].split_whitespace().nth(2);
    assert_eq!(send_q, Some("1024"), "listen backlog (Send-Q) in:\n{text}");

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        recv_close(&mut ws).await,
        Some((1001, "server shutting down".to_string()))
    );
    let exit = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(8)))
        .await
        .unwrap()
        .expect("did not exit");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn binary_rejects_invalid_config_with_status_2_and_one_line() {
    for (var, value) in [
        ("WS_PORT", "abc"),
        ("WS_SEND_QUEUE", "0"),
        ("LOG_LEVEL", "loud"),
    ] {
        let out = Command::new(BIN).env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("config error: {var}=\"{value}\"")),
            "{stderr}"
        );
    }
    // An invalid ROCKET_* value is a config error too, reported before binding.
    let out = Command::new(BIN)
        .env("WS_PORT", "0")
        .env("ROCKET_WORKERS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("config error: "), "{stderr}");
}

#[test]
fn healthcheck_flag_probes_healthz_on_ws_port() {
    let (mut child, port) = spawn_binary(&[]);
    let probe = |port: &str| {
        Command::new(BIN)
            .arg("--healthcheck")
            .env("WS_PORT", port)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(probe(&port.to_string()), Some(0));
    // Nothing listens there any more once a probe socket is closed.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(probe(&free.to_string()), Some(1));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = wait_exit(&mut child, Duration::from_secs(8)).expect("did not exit");
    assert!(exit.success());
}
