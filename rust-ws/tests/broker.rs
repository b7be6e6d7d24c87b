//! rust-ws as a node of a Redis cluster (PROTOCOL.md §5), tested from outside: a real
//! `redis-server` on a free port, real rust-ws processes, real WebSocket clients.
//!
//! What this proves is this node's side of §5; tests/conformance/test_nodes.py checks the
//! cluster as a whole, across both kinds. Each test needs `redis-server` on the PATH (Debian's
//! 7.0 at /usr/bin/redis-server in the lab).

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_rust-ws");
/// The bound on every wait for one message.
const TIMEOUT: Duration = Duration::from_secs(5);
/// §5: ready within 3 s of Redis accepting connections; a little more for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(6);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when the test is done with it, however the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// `redis-server` on `port`, without persistence, accepting connections when this returns.
fn redis(port: u16, password: Option<&str>) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
    if let Some(pw) = password {
        cmd.args(["--requirepass", pw]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

/// A rust-ws node: the process, its port, and every line it wrote to stderr so far.
struct Node {
    proc: Proc,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

fn node(broker_url: &str, node_id: &str) -> Node {
    node_with(broker_url, node_id, &[])
}

fn node_with(broker_url: &str, node_id: &str, env: &[(&str, &str)]) -> Node {
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", "0")
        .env("WS_BROKER_URL", broker_url)
        .env("WS_NODE_ID", node_id)
        .env("WS_PING_INTERVAL_SECS", "0")
        .env_remove("ROCKET_ADDRESS")
        .env_remove("ROCKET_PORT")
        .env_remove("LOG_LEVEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no start-up line");
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    assert!(
        line.contains(&format!("WS_NODE_ID={node_id} ")),
        "the start-up line names the node: {line}"
    );
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    Node {
        proc: Proc(child),
        port,
        log,
    }
}

impl Node {
    /// (status, body) of a plain HTTP GET.
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    /// The value of the sample line `series` (name and labels exactly as exposed).
    fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// Waits until `/metrics` shows `series` at `value`.
    fn wait_metric(&self, series: &str, value: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.metric(series);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed {now}, not {value}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

async fn connect(port: u16, room: &str) -> (Ws, Value) {
    let url = format!("ws://127.0.0.1:{port}/ws?room={room}");
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text message as (raw text, JSON).
async fn recv_text(ws: &mut Ws) -> (String, Value) {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v = serde_json::from_str(t.as_str()).unwrap();
                return (t.to_string(), v);
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn recv(ws: &mut Ws) -> Value {
    recv_text(ws).await.1
}

async fn send(ws: &mut Ws, msg: Value) {
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

fn broadcast(text: &str, reference: &str) -> Value {
    json!({"type": "broadcast", "user": "ann", "text": text, "ref": reference})
}

/// Two nodes on one Redis (with a password) serve one room: a broadcast from either reaches the
/// members on both, as the same text with the same `seq`, and `seq` is the room's across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_room_with_one_sequence() {
    let redis_port = free_port();
    let _redis = redis(redis_port, Some("s3cret-pw"));
    let url = format!("redis://:s3cret-pw@127.0.0.1:{redis_port}/0");
    let (a, b) = (node(&url, "node-a"), node(&url, "node-b"));
    for n in [&a, &b] {
        n.wait_metric("ws_broker_up", 1.0, RECOVERY);
        assert_eq!(n.get("/readyz"), (200, "ready".to_string()));
    }

    let room = format!("r{}", std::process::id());
    let (mut on_a, welcome_a) = connect(a.port, &room).await;
    let (mut on_b, welcome_b) = connect(b.port, &room).await;
    // conn_id is NODE_ID:N; `connections` counts this node's members only.
    assert!(welcome_a["conn_id"]
        .as_str()
        .unwrap()
        .starts_with("node-a:"));
    assert!(welcome_b["conn_id"]
        .as_str()
        .unwrap()
        .starts_with("node-b:"));
    assert_eq!(welcome_a["connections"], 1);
    assert_eq!(welcome_b["connections"], 1);

    let mut seqs = Vec::new();
    for (i, from_a) in [true, false, true, true].into_iter().enumerate() {
        let reference = format!("m{i}");
        let sender = if from_a { &mut on_a } else { &mut on_b };
        send(sender, broadcast("hi", &reference)).await;
        let (text_a, got_a) = recv_text(&mut on_a).await;
        let (text_b, _) = recv_text(&mut on_b).await;
        // One payload: the very same text on both nodes, the sender's copy included.
        assert_eq!(text_a, text_b);
        assert_eq!(got_a["type"], "broadcast", "{got_a}");
        assert_eq!(got_a["ref"], reference.as_str());
        let from = if from_a { &welcome_a } else { &welcome_b };
        assert_eq!(got_a["from"], from["conn_id"]);
        seqs.push(got_a["seq"].as_u64().unwrap());
    }
    // Redis keeps the counter for an hour: a fresh room starts at 1 and goes up by one.
    assert_eq!(seqs, [1, 2, 3, 4]);

    // An echo stays on its node.
    send(
        &mut on_b,
        json!({"type": "echo", "user": "bob", "text": "e"}),
    )
    .await;
    assert_eq!(recv(&mut on_b).await["type"], "echo");

    for n in [&a, &b] {
        assert_eq!(n.metric("ws_broker_received_total"), 4.0);
        let info = format!(
            "ws_node_info{{broker=\"redis\",node_id=\"{}\"}}",
            if n.port == a.port { "node-a" } else { "node-b" }
        );
        assert_eq!(n.metric(&info), 1.0);
        let (_, metrics) = n.get("/metrics");
        assert!(!metrics.contains("s3cret"), "a metric carries the password");
        let log = n.log_text();
        assert!(
            !log.contains("s3cret"),
            "a log line carries the password:\n{log}"
        );
        assert!(log.contains(":***@127.0.0.1"), "{log}");
    }
    // Confirmations return on the publish connection and may trail the deliveries a moment.
    a.wait_metric("ws_broker_published_total", 3.0, TIMEOUT);
    b.wait_metric("ws_broker_published_total", 1.0, TIMEOUT);
    assert_eq!(a.metric("ws_broker_publish_duration_seconds_count"), 3.0);
    // Each node timed its own fan-out of each of the four broadcasts, none at publish time.
    assert_eq!(a.metric("ws_broadcast_duration_seconds_count"), 4.0);
}

/// Publishes are pipelined on one connection in the order they were handled: a burst from one
/// member comes back complete, in order, numbered without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_broadcasts_keeps_its_order() {
    const N: usize = 2000;
    let redis_port = free_port();
    let _redis = redis(redis_port, None);
    let n = node(&format!("redis://127.0.0.1:{redis_port}"), "burst");
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    let (ws, _) = connect(n.port, "burst").await;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let msg = broadcast("x", &i.to_string()).to_string();
            sink.feed(Message::text(msg)).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    for i in 0..N {
        let got = match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
            other => panic!("message {i}: {other:?}"),
        };
        assert_eq!(got["ref"], i.to_string().as_str(), "{got}");
        assert_eq!(got["seq"], i as u64 + 1, "{got}");
    }
    let _sink = writer.await.unwrap();
    // A confirmation comes back on the publish connection, the message on the subscription's:
    // the last confirmations may trail the last deliveries by a moment.
    n.wait_metric("ws_broker_published_total", N as f64, TIMEOUT);
}

/// A node starts without its Redis: alive, not ready, broadcasts answered at once. It becomes
/// ready when Redis appears, goes down when Redis is killed and comes back when Redis restarts,
/// all in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_its_redis_down_and_up_without_restarting() {
    let redis_port = free_port();
    let n = node(&format!("redis://127.0.0.1:{redis_port}"), "solo");
    let pid = n.proc.0.id();
    assert_eq!(n.get("/healthz"), (200, "ok".to_string()));
    assert_eq!(n.get("/readyz"), (503, "broker unavailable".to_string()));
    assert_eq!(n.metric("ws_broker_up"), 0.0);

    // Local work goes on; a broadcast is answered broker_unavailable with its ref.
    let (mut ws, _) = connect(n.port, "lobby").await;
    send(&mut ws, broadcast("x", "early")).await;
    let err = recv(&mut ws).await;
    assert_eq!(
        err,
        json!({"type": "error", "code": "broker_unavailable",
               "detail": "broadcast not delivered: the broker is unavailable", "ref": "early"})
    );
    send(&mut ws, json!({"type": "echo", "user": "a", "text": "b"})).await;
    assert_eq!(recv(&mut ws).await["type"], "echo");
    assert_eq!(
        n.metric("ws_broker_publish_failures_total{reason=\"unavailable\"}"),
        1.0
    );
    assert_eq!(n.metric("ws_messages_received_total{outcome=\"ok\"}"), 2.0);

    // Redis appears: ready, and broadcasts go round.
    let mut redis_proc = redis(redis_port, None);
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    assert_eq!(n.get("/readyz"), (200, "ready".to_string()));
    send(&mut ws, broadcast("x", "one")).await;
    let got = recv(&mut ws).await;
    assert_eq!(
        (got["ref"].clone(), got["seq"].clone()),
        (json!("one"), json!(1))
    );

    // Killed: down, 503; then restarted on the same port: up again, the same process.
    signal(&redis_proc.0, "-KILL");
    let _ = redis_proc.0.wait();
    n.wait_metric("ws_broker_up", 0.0, Duration::from_secs(4));
    assert_eq!(n.get("/readyz").0, 503);
    send(&mut ws, broadcast("x", "while-down")).await;
    assert_eq!(recv(&mut ws).await["ref"], "while-down");
    drop(redis_proc);
    let restarted = Instant::now();
    let _redis = redis(redis_port, None);
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    eprintln!(
        "ready again {:?} after Redis restarted",
        restarted.elapsed()
    );
    assert_eq!(n.get("/readyz").0, 200);
    assert_eq!(n.proc.0.id(), pid);
    // Redis kept no data: the room's sequence starts again at 1.
    send(&mut ws, broadcast("x", "after")).await;
    let got = recv(&mut ws).await;
    assert_eq!(
        (got["ref"].clone(), got["seq"].clone()),
        (json!("after"), json!(1))
    );
    let log = n.log_text();
    assert!(log.contains("down"), "one warning for the loss:\n{log}");
}

/// A paused Redis (SIGSTOP) keeps its sockets open: the heartbeat notices it within its 2 s
/// timeout, a publish sent meanwhile is answered `lost`, and SIGCONT brings the node back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_noticed_and_waiting_publishes_are_lost() {
    let redis_port = free_port();
    let redis_proc = redis(redis_port, None);
    let n = node(&format!("redis://127.0.0.1:{redis_port}/2"), "paused");
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    let (mut ws, _) = connect(n.port, "p").await;

    signal(&redis_proc.0, "-STOP");
    let paused = Instant::now();
    send(&mut ws, broadcast("x", "into-the-void")).await;
    let err = recv(&mut ws).await;
    assert_eq!(err["code"], "broker_unavailable", "{err}");
    assert_eq!(err["ref"], "into-the-void");
    let waited = paused.elapsed();
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    assert_eq!(n.metric("ws_broker_up"), 0.0);
    assert_eq!(
        n.metric("ws_broker_publish_failures_total{reason=\"lost\"}"),
        1.0
    );

    signal(&redis_proc.0, "-CONT");
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    send(&mut ws, broadcast("x", "back")).await;
    assert_eq!(recv(&mut ws).await["ref"], "back");
}

/// At most 4096 publishes wait for the broker: with Redis paused, a burst past that is answered
/// `overloaded` at once, and the 4096 that waited are answered `lost` when the node gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_waiting_for_the_broker_are_bounded() {
    const BURST: usize = 5000;
    let redis_port = free_port();
    let redis_proc = redis(redis_port, None);
    // Room in the sender's own queue for every answer, so it is not evicted as slow.
    let n = node_with(
        &format!("redis://127.0.0.1:{redis_port}"),
        "bounded",
        &[("WS_SEND_QUEUE", "16384")],
    );
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
    let (ws, _) = connect(n.port, "b").await;
    let (mut sink, mut stream) = ws.split();

    signal(&redis_proc.0, "-STOP");
    let writer = tokio::spawn(async move {
        for i in 0..BURST {
            let msg = broadcast("x", &i.to_string()).to_string();
            sink.feed(Message::text(msg)).await.unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    let mut refs = std::collections::BTreeSet::new();
    while refs.len() < BURST {
        let got: Value = match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("after {} answers: {other:?}", refs.len()),
        };
        assert_eq!(got["code"], "broker_unavailable", "{got}");
        assert!(refs.insert(got["ref"].as_str().unwrap().to_string()));
    }
    let _sink = writer.await.unwrap();
    let lost = n.metric("ws_broker_publish_failures_total{reason=\"lost\"}");
    let overloaded = n.metric("ws_broker_publish_failures_total{reason=\"overloaded\"}");
    let unavailable = n.metric("ws_broker_publish_failures_total{reason=\"unavailable\"}");
    eprintln!("lost {lost} overloaded {overloaded} unavailable {unavailable}");
    assert_eq!(lost + overloaded + unavailable, BURST as f64);
    assert!(lost <= 4096.0, "lost {lost}");
    if unavailable == 0.0 {
        // The whole burst came while the node still waited: exactly the bound waited.
        assert_eq!((lost, overloaded), (4096.0, (BURST - 4096) as f64));
    }
    assert!(
        overloaded >= (BURST - 4096) as f64 - unavailable,
        "overloaded {overloaded}"
    );
    signal(&redis_proc.0, "-CONT");
    n.wait_metric("ws_broker_up", 1.0, RECOVERY);
}

/// An invalid broker URL is a config error: exit 2, one stderr line, the password as `***`.
#[test]
fn an_invalid_broker_url_exits_2_without_the_password() {
    let out = Command::new(BIN)
        .env("WS_BROKER_URL", "redis://:hunter2@127.0.0.1:0/0")
        .env("WS_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("config error: WS_BROKER_URL=\"redis://:***@127.0.0.1:0/0\" is not "),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}
