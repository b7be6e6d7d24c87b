//! What only rust-ws can test about itself; PROTOCOL.md as such is tests/conformance's job
//! (run against both servers, this one included).
//!
//! Counterpart: python-ws/tests/, python-ws's own tests of what only it can test.
//!
//! - In-process (the same `rocket()` as the binary, on 127.0.0.1:0): shutdown reads the metrics
//!   after every connection has ended, which a black-box test cannot (the process is gone).
//! - The real binary: the listen-backlog workaround seen from outside with `ss`, the start-up
//!   line, the exit within 5 s of SIGTERM, exit 2 for an invalid `ROCKET_*` value or argument,
//!   and `--healthcheck`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rocket::fairing::AdHoc;
use rust_ws::metrics::CloseReason;
use rust_ws::{Config, Metrics};
use tokio_tungstenite::tungstenite::Message;

/// The bound on every wait in these tests.
const TIMEOUT: Duration = Duration::from_secs(5);

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until the server's close frame; its code and reason, or None if the stream ended (or
/// `TIMEOUT` passed) without one.
async fn recv_close(ws: &mut Client) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Close(Some(frame))) => {
                return Some((frame.code.into(), frame.reason.to_string()))
            }
            Ok(Message::Close(None)) => return Some((1005, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_with_1001_and_counts_nothing_abnormal() {
    let config = Config {
        host: Some("127.0.0.1".parse().unwrap()),
        port: Some(0),
        ping_interval_secs: 0,
        ..Config::default()
    };
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
    let server = tokio::spawn(async move {
        // A shutdown Rocket had to force is still a shutdown; any other error fails the test.
        if let Err(e) = rocket.launch().await {
            if !matches!(e.kind(), rocket::error::ErrorKind::Shutdown(..)) {
                panic!("server failed: {e}");
            }
        }
    });
    let port = tokio::time::timeout(TIMEOUT, rx).await.unwrap().unwrap();

    let mut clients = Vec::new();
    for room in ["one", "two"] {
        let url = format!("ws://127.0.0.1:{port}/ws?room={room}");
        let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        // The welcome: the session is running.
        let first = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap();
        assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
        clients.push(ws);
    }
    assert_eq!(metrics.connections.get(), 2);

    shutdown.notify();
    for ws in &mut clients {
        assert_eq!(
            recv_close(ws).await,
            Some((1001, "server shutting down".to_string()))
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let deadline = Instant::now() + TIMEOUT;
    while metrics.connections.get() != 0 {
        assert!(Instant::now() < deadline, "connections still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A shutdown close is not abnormal.
    for reason in CloseReason::ALL {
        assert_eq!(metrics.closed_count(reason), 0, "{reason:?}");
    }
}

// ---- the binary ------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_rust-ws");

/// Starts the binary on a free port; returns the child and its port (read from the start line).
fn spawn_binary() -> (std::process::Child, u16) {
    let mut child = Command::new(BIN)
        .env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", "0")
        .env_remove("ROCKET_ADDRESS")
        .env_remove("ROCKET_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    // The backlog the listen_backlog fairing set, reported before any warning could follow.
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
    // Only one line at start-up: in particular no "could not raise the listen backlog".
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

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_listens_with_backlog_1024_and_exits_0_within_5s_of_sigterm() {
    let (mut child, port) = spawn_binary();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let first = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");

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

    // tests/conformance allows 6.5 s for any server; rust-ws's own budget (connection tasks
    // 2.5 s, Rocket's grace 2 s + mercy 1 s, overlapping) is 5 s.
    let started = Instant::now();
    sigterm(&child);
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

/// Rocket's own settings are validated before anything binds, like WS_* (which
/// tests/conformance/test_config.py covers): exit 2 with one `config error:` line. So is an
/// unknown argument.
#[test]
fn binary_exits_2_for_an_invalid_rocket_setting_or_argument() {
    let out = Command::new(BIN)
        .env("WS_PORT", "0")
        .env("ROCKET_WORKERS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("config error: "), "{stderr}");

    let out = Command::new(BIN)
        .arg("--bogus")
        .env("WS_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("usage: rust-ws"), "{stderr}");
}

#[test]
fn healthcheck_flag_probes_healthz_on_ws_port() {
    let (mut child, port) = spawn_binary();
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
    // Not a port: unhealthy, not a crash.
    assert_eq!(probe("not-a-port"), Some(1));
    sigterm(&child);
    let exit = wait_exit(&mut child, Duration::from_secs(8)).expect("did not exit");
    assert!(exit.success());
}
