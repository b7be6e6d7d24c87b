//! CI smoke: the real ws-bench binary against the real rust-ws binary, a handful of connections,
//! a few seconds. Budgets are not judged here (that's `bench/run.sh`); this checks every mode
//! runs, speaks the protocol, and reports what it saw.
//!
//! Needs `target/debug/rust-ws`: a workspace `cargo test` builds it; otherwise this test builds it
//! with `cargo build -p rust-ws`, and says so if it can't.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_ws-bench");

fn rust_ws_binary() -> PathBuf {
    // rust-ws lands next to ws-bench in the same target dir, whatever CARGO_TARGET_DIR says.
    let beside = Path::new(BENCH)
        .parent()
        .expect("binary has a directory")
        .join("rust-ws");
    if beside.exists() {
        return beside;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "rust-ws"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status();
    assert!(
        built.is_ok_and(|s| s.success()) && beside.exists(),
        "rust-ws binary not found at {} and `cargo build -p rust-ws` did not produce it: \
         run `cargo build -p rust-ws` in the workspace root first",
        beside.display()
    );
    beside
}

/// A rust-ws process on loopback, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_rust_ws() -> Server {
    start_rust_ws_with(&[])
}

fn start_rust_ws_with(env: &[(&str, &str)]) -> Server {
    let bin = rust_ws_binary();
    // Ports below the ephemeral range (32768+), so no client's TIME_WAIT can be squatting on
    // them; a few tries in case another test run holds one.
    // Tests in this file run in parallel in one process, each with its own server: a counter
    // keeps their ports apart (the pid alone gave them all the same one, and one test measured
    // the other's server).
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 5 + k * 1_000;
    for port in (base..).step_by(7).take(8) {
        // Through sh, to lift the soft open-files limit to the hard one as compose's ulimits
        // and bench/run.sh do: the memory test holds 3,000 connections.
        let mut child = Command::new("sh")
            .args(["-c", r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0""#])
            .arg(&bin)
            .env("WS_HOST", "127.0.0.1")
            .env("WS_PORT", port.to_string())
            .env("LOG_LEVEL", "warning")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: most likely the port was taken
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Someone else may hold the port and ours be exiting on a failed bind: only a
                // child still alive a moment later is the one listening.
                std::thread::sleep(Duration::from_millis(300));
                if let Ok(None) = child.try_wait() {
                    return Server { child, port };
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("rust-ws did not start listening on any of 8 ports from {base}");
}

fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .expect("run ws-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bench_json(server: &Server, args: &[&str]) -> Value {
    let url = format!("ws://127.0.0.1:{}/ws", server.port);
    let pid = server.child.id().to_string();
    let metrics = format!("http://127.0.0.1:{}/metrics", server.port);
    let mut all = vec![
        "--url",
        &url,
        "--pid",
        &pid,
        "--metrics-url",
        &metrics,
        "--json",
        "--connect-timeout",
        "5",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = bench(&all);
    assert_eq!(code, 0, "ws-bench {args:?} failed: {err}");
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["server"], "rust-ws", "{v}");
    assert_eq!(v["connect_failures"], serde_json::json!({}), "{v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    assert!(v["server_max_rss"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["server_cpu_user_pct"].is_number(), "{v}");
    assert!(v["client_cpu_pct"].is_number(), "{v}");
    v
}

#[test]
fn every_mode_against_real_rust_ws() {
    let s = start_rust_ws();

    let hold = bench_json(
        &s,
        &[
            "hold",
            "-n",
            "20",
            "--hold-secs",
            "0.5",
            "--settle-secs",
            "0.5",
        ],
    );
    assert_eq!(hold["hold"]["open"], 20, "{hold}");
    assert_eq!(hold["hold"]["server_connections_at_n"], 20.0, "{hold}");
    assert_eq!(hold["hold"]["server_connections_after"], 0.0, "{hold}");
    assert!(hold["hold"]["rss_idle_after"].as_u64().unwrap() > 0);

    let echo = bench_json(&s, &["--label", "echo-inf", "echo", "-c", "5", "-d", "1"]);
    assert!(echo["req_per_s"].as_f64().unwrap() > 10.0, "{echo}");
    assert!(echo["latency"]["p99_us"].as_u64().unwrap() > 0, "{echo}");
    assert!(echo["conn_per_s"].is_null(), "{echo}");

    let echo5 = bench_json(
        &s,
        &["echo", "-c", "5", "-d", "1", "--requests-per-conn", "5"],
    );
    assert!(echo5["conn_per_s"].as_f64().unwrap() > 1.0, "{echo5}");

    let b = bench_json(
        &s,
        &[
            "broadcast",
            "-c",
            "6",
            "--rooms",
            "2",
            "-d",
            "1",
            "--drain-secs",
            "0.5",
        ],
    );
    let bs = &b["broadcast"];
    assert!(bs["sent"].as_u64().unwrap() > 0, "{b}");
    // 3 members per room: every send is owed 3 deliveries, and all arrive.
    assert_eq!(bs["expected"], bs["sent"].as_u64().unwrap() * 3, "{b}");
    assert_eq!(bs["delivered_total"], bs["expected"], "{b}");

    let paced = bench_json(
        &s,
        &[
            "broadcast",
            "-c",
            "4",
            "--rooms",
            "1",
            "--rate",
            "5",
            "-d",
            "1",
            "--drain-secs",
            "0.5",
        ],
    );
    assert!(paced["broadcast"]["sent"].as_u64().unwrap() >= 4, "{paced}");

    let sess = bench_json(
        &s,
        &["--label", "sessions", "sessions", "-c", "3", "-d", "1"],
    );
    assert!(sess["conn_per_s"].as_f64().unwrap() > 1.0, "{sess}");

    // The markdown form: a header and one row with as many cells.
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let (code, out, err) = bench(&["--url", &url, "echo", "-c", "2", "-d", "0.5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("| server | run | conns | req/s | conn/s | avg | min | max | p95 | p99 | max rss | cpu user | cpu system"));
    assert_eq!(
        lines[0].matches(" | ").count(),
        lines[2].matches(" | ").count(),
        "{out}"
    );
    // No --pid: the one process listening on the port is found and measured.
    assert!(
        lines[2].contains(&format!(
            "server pid {} (rust-ws) found listening on port {}",
            s.child.id(),
            s.port
        )),
        "{out}"
    );

    // compare: the same runs on both sides pair up and give 1.00× ratios.
    let dir = std::env::temp_dir().join(format!("ws-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("runs.jsonl");
    std::fs::write(&file, format!("{hold}\n{echo}\n{b}\n{sess}\n")).unwrap();
    let f = file.to_str().unwrap();
    let (code, md, err) = bench(&["compare", f, f]);
    assert_eq!(code, 0, "{err}");
    assert!(md.contains("req/s **1.00×**"), "{md}");
    assert!(md.contains("## Budgets"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Memory comes back after a mass disconnect with more than one worker thread (a
/// server that isn't pinned to one core, as in compose), where mimalloc's remote frees wait for
/// the owning worker to collect (rust-ws/src/reclaim.rs). Without the collect on park this kept
/// about 3x idle at this size (12x at 10,000 connections).
#[test]
fn memory_comes_back_with_several_workers() {
    let s = start_rust_ws_with(&[("ROCKET_WORKERS", "4")]);
    for (ex, end) in [("echo", "close"), ("error", "reset")] {
        let v = bench_json(
            &s,
            &[
                "hold",
                "-n",
                "3000",
                "--exchange",
                ex,
                "--end",
                end,
                "--hold-secs",
                "0.5",
                "--settle-secs",
                "3",
            ],
        );
        let h = &v["hold"];
        assert_eq!(h["open"], 3000, "{v}");
        assert_eq!(h["server_connections_after"], 0.0, "{v}");
        let idle = h["rss_idle_before"].as_f64().unwrap();
        let at_n = h["rss_at_n"].as_f64().unwrap();
        let after = h["rss_idle_after"].as_f64().unwrap();
        assert!(
            at_n > idle + 3000.0 * 4096.0,
            "connections cost memory: {v}"
        );
        assert!(
            after <= 2.0 * idle,
            "{ex}/{end}: RSS {after} 3 s after the last close, idle was {idle}: {v}"
        );
    }
}

#[test]
fn sweep_shapes_against_real_rust_ws() {
    let s = start_rust_ws();

    // Two helper processes over two loopback source addresses: the path that reaches 100,000+
    // connections where a process may not hold them all.
    let multi = bench_json(
        &s,
        &[
            "--source-addrs",
            "2",
            "hold",
            "-n",
            "30",
            "--procs",
            "2",
            "--hold-secs",
            "0.5",
            "--settle-secs",
            "0.5",
        ],
    );
    let h = &multi["hold"];
    assert_eq!(h["open"], 30, "{multi}");
    assert_eq!(
        (h["procs"].as_u64(), h["source_addrs"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(h["server_connections_at_n"], 30.0, "{multi}");
    assert_eq!(h["server_connections_after"], 0.0, "{multi}");
    assert_eq!(
        multi["latency"]["count"], 30,
        "both helpers' handshakes merged: {multi}"
    );
    assert!(h["idle_cpu_pct"].is_number(), "{multi}");
    // The helpers' CPU counts as the client's.
    assert!(multi["client_cpu_pct"].as_f64().unwrap() > 0.0, "{multi}");

    // Each memory path: error replies, a broadcast in a room of its own, an abrupt reset.
    for (ex, end) in [
        ("error", "close"),
        ("broadcast", "close"),
        ("echo", "reset"),
    ] {
        let v = bench_json(
            &s,
            &[
                "hold",
                "-n",
                "10",
                "--exchange",
                ex,
                "--end",
                end,
                "--hold-secs",
                "0.3",
                "--settle-secs",
                "0.5",
            ],
        );
        assert_eq!(v["hold"]["open"], 10, "{ex}/{end}: {v}");
        assert_eq!(
            (v["hold"]["exchange"].as_str(), v["hold"]["end"].as_str()),
            (Some(ex), Some(end))
        );
        assert_eq!(
            v["hold"]["server_connections_after"], 0.0,
            "{ex}/{end}: {v}"
        );
    }

    // Open-loop echo: every scheduled request answered, latency from the schedule.
    let open = bench_json(
        &s,
        &[
            "echo",
            "-c",
            "4",
            "--rate",
            "200",
            "-d",
            "1",
            "--msg-bytes",
            "1024",
        ],
    );
    let e = &open["echo"];
    assert_eq!(e["msg_bytes"], 1024, "{open}");
    assert!(e["sent"].as_u64().unwrap() >= 150, "{open}");
    assert_eq!(
        (e["missing"].as_u64(), e["skipped"].as_u64()),
        (Some(0), Some(0)),
        "{open}"
    );
    assert_eq!(open["latency"]["count"], e["sent"], "{open}");
    assert!(e["sent_mb_per_s"].as_f64().unwrap() > 0.1, "{open}");

    // The largest request the server takes by default: 64 KiB exactly, answered, no errors.
    let big = bench_json(
        &s,
        &["echo", "-c", "2", "-d", "0.5", "--msg-bytes", "65536"],
    );
    assert_eq!(big["echo"]["msg_bytes"], 65536, "{big}");
    assert!(big["requests"].as_u64().unwrap() > 0, "{big}");

    // Paced broadcast in one room: own round trips and the server's fan-out timer for the run.
    let fan = bench_json(
        &s,
        &[
            "broadcast",
            "-c",
            "5",
            "--rooms",
            "1",
            "--rate",
            "10",
            "-d",
            "1",
            "--drain-secs",
            "1",
        ],
    );
    let b = &fan["broadcast"];
    assert_eq!(b["members"], 5, "{fan}");
    assert_eq!(b["delivered_total"], b["expected"], "{fan}");
    assert_eq!(b["own_rtt"]["count"], b["sent"], "{fan}");
    let t = &b["server_fanout"];
    assert_eq!(
        t["count"].as_f64(),
        b["sent"].as_f64(),
        "one timer per broadcast: {fan}"
    );
    assert!(t["p99_us"].as_f64().unwrap() > 0.0, "{fan}");
}

/// The duration every run of the give-up tests asks for: far longer than giving up takes.
const GIVE_UP_DURATION: &str = "120";

/// A run that could not measure anything fails (status 1) with one line saying where and why,
/// and gives up well before its duration: within a sixth of it. (It stops 1 s after its first
/// failure; the rest is process start-up, which took up to 5.3 s when this ran beside the other
/// smoke tests on a loaded machine, so a fixed 5 s bound was a timing test, not this check.)
fn assert_gives_up(args: &[&str], url: &str, why: &str) {
    let t = Instant::now();
    let (code, out, err) = bench(args);
    let took = t.elapsed();
    assert_eq!(code, 1, "{args:?}: {out}{err}");
    assert!(out.is_empty(), "no report row: {out}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ws-bench: no handshake succeeded: ")
            && last.contains(&format!(" to {url} failed ({why})")),
        "{args:?}: {err}"
    );
    let duration: u64 = GIVE_UP_DURATION.parse().unwrap();
    assert!(
        took < Duration::from_secs(duration / 6),
        "{args:?} took {took:?} of its {duration} s: {err}"
    );
}

#[test]
fn nothing_listening_fails_at_once() {
    // A port that nothing listens on (bound and released at once).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = format!("ws://127.0.0.1:{port}/ws");
    for mode in [
        &["echo", "-c", "3", "-d", GIVE_UP_DURATION][..],
        &["sessions", "-c", "5", "-d", GIVE_UP_DURATION],
        &["hold", "-n", "5", "--hold-secs", GIVE_UP_DURATION],
        &[
            "hold",
            "-n",
            "4",
            "--procs",
            "2",
            "--hold-secs",
            GIVE_UP_DURATION,
        ],
        &["broadcast", "-c", "4", "-d", GIVE_UP_DURATION],
    ] {
        let mut args = vec!["--url", &url, "--json"];
        args.extend_from_slice(mode);
        assert_gives_up(&args, &url, "connection refused");
    }
}

/// An HTTP server that answers every request 404, as a wrong path on a real server would.
fn not_found_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(&s);
                let mut line = String::new();
                // Read the request head (bounded), then answer.
                for _ in 0..100 {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let _ = (&s).write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

#[test]
fn every_handshake_404_fails_at_once() {
    let port = not_found_server();
    let url = format!("ws://127.0.0.1:{port}/nowhere");
    for mode in [
        &["sessions", "-c", "5", "-d", GIVE_UP_DURATION][..],
        &["hold", "-n", "5", "--hold-secs", GIVE_UP_DURATION],
        &["echo", "-c", "300", "-d", GIVE_UP_DURATION],
    ] {
        let mut args = vec!["--url", &url];
        args.extend_from_slice(mode);
        assert_gives_up(&args, &url, "HTTP 404 Not Found");
    }
}

#[test]
fn some_failed_handshakes_are_a_measurement() {
    // Room for 5: of 8 held connections 3 are refused with 503, and the run still reports.
    let s = start_rust_ws_with(&[("WS_MAX_CONNECTIONS", "5")]);
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let (code, out, err) = bench(&[
        "--url",
        &url,
        "--json",
        "hold",
        "-n",
        "8",
        "--hold-secs",
        "0.3",
        "--settle-secs",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["hold"]["open"], 5, "{v}");
    assert_eq!(v["connect_failures"]["http_503"], 3, "{v}");
    assert!(
        v["notes"].to_string().contains("3 of 8 handshakes failed"),
        "{v}"
    );
}

#[test]
fn the_pid_measured_is_the_one_serving_the_port() {
    let s = start_rust_ws();
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let args = |pid: Option<&str>| {
        let mut a = vec!["--url", url.as_str(), "--json"];
        if let Some(p) = pid {
            a.extend(["--pid", p]);
        }
        a.extend(["echo", "-c", "2", "-d", "0.3"]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| bench(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // Without --pid: found from the port, named in the report, and measured.
    let (code, out, err) = run(args(None));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["server_pid"], s.child.id(), "{v}");
    assert!(v["server_cpu_user_pct"].is_number(), "{v}");
    assert!(
        v["notes"].to_string().contains(&format!(
            "server pid {} (rust-ws) found listening on port {}",
            s.child.id(),
            s.port
        )),
        "{v}"
    );

    // A --pid that is not the server (another rust-ws, as `pgrep -n` may pick; or this test):
    // one line naming both, status 2, before any load.
    let other = start_rust_ws();
    for wrong in [other.child.id(), std::process::id()] {
        let (code, out, err) = run(args(Some(&wrong.to_string())));
        assert_eq!(code, 2, "{out}{err}");
        let line = err.trim_end();
        assert!(!line.contains('\n'), "one line: {err}");
        assert!(
            line.starts_with(&format!("ws-bench: --pid {wrong} ("))
                && line.contains(&format!(
                    "does not own the socket listening on 127.0.0.1:{} (held by {} (rust-ws))",
                    s.port,
                    s.child.id()
                )),
            "{err}"
        );
    }
    // The right one passes, and is the one in the report.
    let (code, out, err) = run(args(Some(&s.child.id().to_string())));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["server_pid"], s.child.id(), "{v}");
}

/// rust-ws built without --release says so in `ws_build_info{profile="debug"}`, and ws-bench
/// flags it in the row and on stderr. (Needs the gauge in rust-ws's /metrics.)
#[test]
fn a_debug_server_is_flagged() {
    let s = start_rust_ws();
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let (code, out, err) = bench(&["--url", &url, "--json", "echo", "-c", "2", "-d", "0.3"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["server_profile"], "debug", "{v}");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("DEBUG BUILD of rust-ws"),
        "{v}"
    );
    assert!(
        err.contains("warning: rust-ws at 127.0.0.1:") && err.contains("is a debug build"),
        "{err}"
    );
    let (code, out, err) = bench(&["--url", &url, "--no-header", "echo", "-c", "2", "-d", "0.3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("| rust-ws ⚠ DEBUG BUILD | echo |"), "{out}");
}

#[test]
fn only_loopback_is_a_target() {
    let (code, _, err) = bench(&[
        "--url",
        "ws://192.0.2.2:8000/ws",
        "echo",
        "-c",
        "1",
        "-d",
        "0.1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("only sends load to loopback"), "{err}");
    let (code, _, err) = bench(&["--metrics-url", "http://10.0.0.1/metrics", "echo"]);
    assert_eq!(code, 2);
    assert!(err.contains("loopback"), "{err}");
}

/// Two single servers without a broker, one broadcast run spread over both: each broadcast
/// reaches only its sender's node, so reach is below 100%, and ws-bench must say so loudly (a
/// warning in the row, each node's share) and, with --require-reach, exit 3 after the report.
/// One server: reach is exactly 100% and the order check is clean.
#[test]
fn reach_across_nodes_without_a_broker_is_named() {
    let (a, b) = (start_rust_ws(), start_rust_ws());
    let urls = format!("ws://127.0.0.1:{}/ws,ws://127.0.0.1:{}/ws", a.port, b.port);
    let metrics = format!(
        "http://127.0.0.1:{}/metrics,http://127.0.0.1:{}/metrics",
        a.port, b.port
    );
    let pids = format!("{},{}", a.child.id(), b.child.id());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--url",
            &urls,
            "--pid",
            &pids,
            "--metrics-url",
            &metrics,
            "--json",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "broadcast",
            "-c",
            "20",
            "--rooms",
            "2",
            "-d",
            "0.5",
            "--drain-secs",
            "1",
        ]);
        bench(&args)
    };
    let (code, out, err) = run(&[]);
    assert_eq!(
        code, 0,
        "without --require-reach the run is a report: {err}"
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{v}");
    for (n, s) in nodes.iter().zip([&a, &b]) {
        // Each room's 10 members: 5 on each node.
        assert_eq!(n["conns"], 10, "{v}");
        assert_eq!(n["pid"], s.child.id(), "{v}");
        assert!(
            n["cpu_pct"].is_number() && n["max_rss"].as_u64() > Some(0),
            "{v}"
        );
        let (got, owed) = (
            n["received"].as_u64().unwrap(),
            n["expected"].as_u64().unwrap(),
        );
        assert!(got > 0 && got < owed, "{v}");
    }
    let bs = &v["broadcast"];
    let (got, owed) = (
        bs["reach_received"].as_u64().unwrap(),
        bs["reach_expected"].as_u64().unwrap(),
    );
    // Exact: what the nodes' members received, and every send owed to each of its room's 10.
    assert_eq!(
        got,
        nodes
            .iter()
            .map(|n| n["received"].as_u64().unwrap())
            .sum::<u64>()
    );
    assert_eq!(owed, bs["sent"].as_u64().unwrap() * 10, "{v}");
    assert!(got < owed, "{v}");
    let note = v["notes"][0].as_str().unwrap();
    assert!(
        // Each node named by its place, its node id (ws_node_info) and its URL.
        note.starts_with("⚠ REACH ")
            && note.contains("per node: node 1 ")
            && note.contains(&format!(" (ws://127.0.0.1:{}/ws) ", a.port))
            && note.contains(&format!(" (ws://127.0.0.1:{}/ws) ", b.port)),
        "{note}"
    );

    let (code, out, err) = run(&["--require-reach"]);
    assert_eq!(code, 3, "{out}{err}");
    // The last line says why the status is 3 (a warning about the debug build may come first).
    assert!(
        err.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("ws-bench: --require-reach: REACH ")),
        "{err}"
    );
    assert!(
        out.contains("\"reach_expected\""),
        "the report is printed all the same: {out}"
    );

    // One node: every member gets every broadcast, in one order.
    let one = format!("ws://127.0.0.1:{}/ws", a.port);
    let (code, out, err) = bench(&[
        "--url",
        &one,
        "--require-reach",
        "--no-header",
        "broadcast",
        "-c",
        "20",
        "--rooms",
        "2",
        "-d",
        "0.5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("| 1 none (20) |") && out.contains("| 100% | ok |"),
        "{out}"
    );
}

/// Keepalive costs no delivery: with a ping due every second, every member of a 2,000-member room
/// gets every broadcast. rust-ws's writer once raced the ping deadline against a write in one
/// `select!`; when the deadline won before the write was first polled, the message that write had
/// taken off the queue was dropped without a trace (2,960-2,999 of 3,000 members got a broadcast,
/// no one was evicted, and ws_messages_sent_total agreed with the loss).
#[test]
fn keepalive_costs_no_delivery() {
    let s = start_rust_ws_with(&[
        ("WS_PING_INTERVAL_SECS", "1"),
        ("WS_PING_TIMEOUT_SECS", "10"),
    ]);
    let url = format!("ws://127.0.0.1:{}/ws", s.port);
    let (code, out, err) = bench(&[
        "--url",
        &url,
        "--json",
        "fanout",
        "-n",
        "2000",
        "--procs",
        "2",
        "--broadcasts",
        "8",
        "--interval-secs",
        "0.5",
        "--hold-secs",
        "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let f = &v["fanout"];
    let delivered: Vec<u64> = f["broadcasts"]
        .as_array()
        .expect("one entry per broadcast")
        .iter()
        .map(|b| b["delivered"].as_u64().unwrap())
        .collect();
    assert_eq!(delivered, vec![2000; 8], "{f}");
}
