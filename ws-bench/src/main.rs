//! ws-bench: wslab's own low-overhead WebSocket load generator for protocol v1 (PROTOCOL.md).
//!
//! k6 costs ~60 KiB per socket and saturates a core long before a good server does; ws-bench is
//! native tokio with its own WebSocket client (`wire.rs`) and 4 KiB read buffers, so the server is
//! what runs out first, and when the client does run out it says so.
//!
//! Run it against a server on loopback (other addresses are refused):
//!
//! ```text
//! cargo run --release -p ws-bench -- --url ws://127.0.0.1:8000/ws hold -n 10000
//! cargo run --release -p ws-bench -- echo -c 1000 -d 10                        # closed loop
//! cargo run --release -p ws-bench -- echo -c 1000 -d 10 --requests-per-conn 5  # then reconnect
//! cargo run --release -p ws-bench -- broadcast -c 1000 --rooms 10 -d 10        # --rate 0 = closed loop
//! cargo run --release -p ws-bench -- echo -c 100 -d 10 --rate 20000 --msg-bytes 1024  # open loop
//! cargo run --release -p ws-bench -- --source-addrs 4 hold -n 100000 --procs 6 --exchange error --end reset
//! cargo run --release -p ws-bench -- sessions -c 50 -d 10
//! cargo run --release -p ws-bench -- --url ws://127.0.0.1:8001/ws,ws://127.0.0.1:8002/ws --source-addrs 6 \
//!     fanout -n 100000 --procs 8 --broadcasts 10      # one room over every node: last arrival
//! cargo run --release -p ws-bench -- --url ws://127.0.0.1:8001/ws,ws://127.0.0.1:8002/ws \
//!     broadcast -c 1000 --rooms 10 -d 10 --require-reach      # several nodes: reach and order
//! cargo run --release -p ws-bench -- compare rust.jsonl python.jsonl          # side by side + budgets
//! cargo run --release -p ws-bench -- show rust.jsonl                          # JSON lines as tables
//! ```
//!
//! Each run prints one markdown table row (with its header unless `--no-header`), or one JSON
//! object with `--json`. Server RSS and CPU come from `/proc/PID` of the process listening on the
//! target's port (found, or `--pid`, which must be that process), else from the server's
//! `/metrics` with `--metrics-url`. A debug build of the server is flagged. With several `--url`s
//! (nodes of one cluster) connections are spread round-robin, each node is measured apart, and
//! every broadcast run checks reach and order (`modes/reach.rs`). Exit status: 0 for a report, 1
//! when the run could not measure anything (every handshake failed: stopped early, with one line
//! saying where and why), 2 for a command line that can't be run, 3 with `--require-reach` when
//! a broadcast missed a member or broke the order (after the report). Progress goes to stderr
//! when it is a terminal. `bench/run.sh` runs the whole matrix.

mod client;
mod compare;
mod modes;
mod probe;
mod progress;
mod report;
mod sys;
mod target;
mod wire;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::modes::{Ctx, Load, Tally};
use crate::probe::Probe;
use crate::target::Target;

#[derive(Parser, Debug)]
#[command(
    name = "ws-bench",
    version,
    about = "Low-overhead WebSocket load generator for wslab protocol v1 (loopback only)",
    after_help = "Exit status: 0 a report was printed; 1 the run could not measure what it was asked \
(no handshake succeeded: it stops within a second or 32 failures, with one line saying where and \
why); 2 the command line can't be run (bad values, a --pid that is not the server); 3 with \
--require-reach, a broadcast run whose reach was below 100% or whose order check failed (the report \
is printed all the same).\n\
Progress (phase, time, connections open) goes to stderr when it is a terminal."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

/// The options every load mode shares (global: they may come before or after the mode).
#[derive(Args, Debug)]
pub struct Common {
    /// WebSocket endpoint; must be on loopback. Repeat it (or give a comma list) for several
    /// nodes: connections are spread round-robin over them, so each broadcast room has members on
    /// every node, and the row gives each node's share, its node id and broker (`ws_node_info`).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8000/ws"
    )]
    pub url: Vec<String>,
    /// Server process id: RSS and CPU from /proc/PID. It must own the socket listening on --url's
    /// port; default: the one process listening there. With several --url, one per --url, in the
    /// same order (or none).
    #[arg(long, global = true, value_delimiter = ',')]
    pub pid: Vec<i32>,
    /// Server metrics URL (loopback): RSS and CPU from its process metrics when no server process
    /// is known, ws_connections for the hold mode, the servers' own timers (fan-out, broker
    /// publish). The server's build (ws_build_info) and node (ws_node_info) are read here, else at
    /// /metrics on --url's host and port. With several --url, one per --url (or none).
    #[arg(long, global = true, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// Exit 3 (after printing the report) when a broadcast run's reach is below 100% or a member
    /// saw its room's seq out of order, with gaps, or differently from another member.
    #[arg(long, global = true)]
    pub require_reach: bool,
    /// One JSON object per run instead of a markdown row.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only the row, not the header.
    #[arg(long, global = true)]
    pub no_header: bool,
    /// Name of this run in the output (compare pairs runs by it).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Client worker threads; default: the cores this process may use.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for TCP connect + upgrade + welcome.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Client read buffer per connection, bytes; default 4096, and 16384 for broadcast, whose
    /// receivers read many small frames at a time.
    #[arg(long, global = true)]
    pub read_buffer: Option<usize>,
    /// Spread connections over this many loopback source addresses (127.0.0.2, 127.0.0.3, ...);
    /// 0 = the kernel's choice (127.0.0.1). Each source address gives ~28,000 ephemeral ports
    /// towards one server port, so 100,000 connections need at least 4.
    #[arg(long, global = true, default_value_t = 0)]
    pub source_addrs: u8,
    /// Characters of `text` per message (1-4096).
    #[arg(long, global = true, default_value_t = 16)]
    pub text_len: usize,
}

/// What a run ends with: `status` 2 for a command line that can't be run (clap's own status
/// for usage errors), 1 for a run that could not measure what it was asked (nothing answered, or
/// every handshake failed). `line` is printed as one last line on stderr, after `ws-bench: `.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub status: u8,
    pub line: String,
}

impl Failure {
    /// The run started but could not measure what it was asked.
    pub fn unmeasured(line: impl Into<String>) -> Failure {
        Failure {
            status: 1,
            line: line.into(),
        }
    }
}

impl From<String> for Failure {
    /// A bad command line or option value: a usage error.
    fn from(line: String) -> Failure {
        Failure { status: 2, line }
    }
}

impl From<&str> for Failure {
    fn from(line: &str) -> Failure {
        Failure::from(line.to_string())
    }
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open N connections at a rate, hold them, close; report server RSS per connection.
    Hold(modes::HoldArgs),
    /// A hold's helper process (started by `hold --procs`; not for direct use).
    #[command(hide = true)]
    HoldAgent(modes::AgentArgs),
    /// Closed-loop echo request/response on C connections.
    Echo(modes::EchoArgs),
    /// N members of one room over every node and P helper processes, held idle, then K
    /// broadcasts: time until the last member has each, reach, memory and idle CPU of the whole.
    Fanout(modes::FanoutArgs),
    /// A fanout's helper process (started by `fanout`; not for direct use).
    #[command(hide = true)]
    FanoutAgent(modes::FanoutAgentArgs),
    /// C connections over R rooms, each sending broadcasts; deliveries/s and fan-out latency.
    Broadcast(modes::BroadcastArgs),
    /// Connect, broadcast, receive own message, close, as fast as possible on C workers.
    Sessions(modes::SessionArgs),
    /// Two JSON-lines result files side by side, with ratios and the budgets rust-ws is held to.
    Compare {
        a: std::path::PathBuf,
        b: std::path::PathBuf,
    },
    /// A JSON-lines result file as markdown tables (a header wherever the columns change).
    Show { file: std::path::PathBuf },
}

/// Seconds from the command line as a `Duration`, within a day.
pub fn secs(s: f64, what: &str) -> Result<Duration, String> {
    if s.is_finite() && (0.0..=86_400.0).contains(&s) {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "{what}: {s} is not a number of seconds from 0 to 86400"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ws-bench: {}", f.line);
            ExitCode::from(f.status)
        }
    }
}

/// Dispatches to the mode: each one owns its options (`modes/*.rs`); what every load mode shares
/// (the target, the probe, the runtime, the output) is [`load`].
fn run(cli: Cli) -> Result<(), Failure> {
    let read = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        compare::load(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let c = &cli.common;
    match cli.mode {
        Mode::Compare { a, b } => {
            print!("{}", compare::render(&read(&a)?, &read(&b)?));
            Ok(())
        }
        Mode::Show { file } => {
            print!("{}", compare::show(&read(&file)?));
            Ok(())
        }
        Mode::Hold(m) => load(c, m),
        Mode::HoldAgent(m) => load(c, m),
        Mode::Echo(m) => load(c, m),
        Mode::Fanout(m) => load(c, m),
        Mode::FanoutAgent(m) => load(c, m),
        Mode::Broadcast(m) => load(c, m),
        Mode::Sessions(m) => load(c, m),
    }
}

/// One load run: checks the common options and the mode's, builds the context and the runtime,
/// runs the mode and prints its report.
fn load<L: Load>(c: &Common, mode: L) -> Result<(), Failure> {
    let targets = c
        .url
        .iter()
        .map(|u| Target::parse(u, "ws"))
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err("--url: at least one".into());
    }
    let n = targets.len();
    for (what, given) in [
        ("--pid", c.pid.len()),
        ("--metrics-url", c.metrics_url.len()),
    ] {
        if given != 0 && given != n {
            return Err(format!("{what}: give one per --url ({n}) or none, not {given}").into());
        }
    }
    let metrics = c
        .metrics_url
        .iter()
        .map(|u| Target::parse(u, "http").map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes = Vec::with_capacity(n);
    let mut pid_notes = Vec::new();
    for (k, target) in targets.into_iter().enumerate() {
        let want = c.pid.get(k).copied();
        if let Some(pid) = want {
            if sys::proc_rss(Some(pid)).is_none() {
                return Err(format!(
                    "--pid {pid}: no such process (or /proc/{pid}/status unreadable)"
                )
                .into());
            }
        }
        // The process measured must be the one serving the target's port.
        let (pid, pid_note) = if L::MEASURES {
            probe::server_pid(want, target.addr)?
        } else {
            (None, None)
        };
        pid_notes.extend(pid_note);
        nodes.push(modes::Node {
            target,
            probe: Probe {
                pid,
                metrics: metrics.get(k).cloned().flatten(),
            },
            info: None,
            opened: Default::default(),
        });
    }
    if !(1..=4096).contains(&c.text_len) {
        return Err("--text-len must be 1-4096 (the protocol's text limit)".into());
    }
    if c.connect_concurrency == 0 {
        return Err("--connect-concurrency must be at least 1".into());
    }
    let nofile = sys::raise_nofile().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let needed = mode.sockets();
    if needed + 64 > nofile {
        return Err(format!(
            "{needed} connections need more file descriptors than RLIMIT_NOFILE allows ({nofile}) in one process: spread them with hold --procs"
        )
        .into());
    }
    let read_buffer = c.read_buffer.unwrap_or(mode.read_buffer());
    let opts = mode.opts(c, read_buffer)?;
    if c.source_addrs > 0 && nodes.iter().any(|n| !n.target.addr.is_ipv4()) {
        return Err("--source-addrs needs IPv4 (127.x) targets".into());
    }
    let sources: Vec<std::net::IpAddr> = (0..c.source_addrs)
        .map(|k| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2 + k)))
        .collect();
    let threads = c.threads.unwrap_or_else(sys::usable_cores).max(1);
    let mut ctx = Ctx {
        target: nodes[0].target.clone(),
        probe: nodes[0].probe.clone(),
        nodes: Arc::new(nodes),
        next_node: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        cfg: client::ws_config(read_buffer.max(256)),
        connect_timeout: secs(c.connect_timeout, "--connect-timeout")?,
        connect_sem: Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency)),
        text: "x".repeat(c.text_len),
        threads,
        label: c.label.clone(),
        sources: Arc::new(sources),
        next_source: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        build: None,
        notes: pid_notes,
        tally: Arc::new(Tally::default()),
    };
    let tally = ctx.tally.clone();
    let url = ctx.target.ws_uri(None);
    // One thread: the current-thread scheduler, which skips work-stealing's atomics.
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("tokio runtime: {e}"))?;
    // A run in which no handshake succeeds is given up as soon as that is clear, not at the end
    // of its duration.
    let report = rt.block_on(async {
        if !L::MEASURES {
            return L::run(ctx, opts).await;
        }
        // A debug build is easy to benchmark by mistake: say so now, and in the row.
        ctx.build = ctx.probe.build_info(&ctx.target).await;
        // Each node's id and broker, for the row (a server without ws_node_info has no broker).
        let mut nodes = (*ctx.nodes).clone();
        for n in &mut nodes {
            n.info = n.probe.node_info(&n.target).await;
        }
        ctx.nodes = Arc::new(nodes);
        if let Some(b) = ctx.build.as_ref().filter(|b| b.profile == "debug") {
            eprintln!(
                "ws-bench: warning: {} at {} is a debug build (ws_build_info profile=\"debug\"): its figures are not the release server's",
                b.server, ctx.target.addr
            );
        }
        // Progress on a terminal only: scripts reading stderr get nothing new.
        let progress = std::io::stderr()
            .is_terminal()
            .then(|| tokio::spawn(progress::show(tally.clone())));
        let r = tokio::select! {
            r = L::run(ctx, opts) => r,
            why = tally.given_up(&url) => Err(Failure::unmeasured(why)),
        };
        if let Some(p) = progress {
            p.abort();
            let _ = p.await;
            progress::clear();
        }
        r
    });
    // Don't wait for stragglers (aborted tasks, a metrics scrape): the report is complete.
    rt.shutdown_timeout(Duration::from_secs(1));
    let Some(report) = report? else {
        return Ok(()); // a helper process: it printed its own lines
    };
    // A short run may end before the give-up rule fires: with nothing connected it still
    // measured nothing.
    if let Some(why) = tally.nothing_worked(&url).filter(|_| L::MEASURES) {
        return Err(Failure::unmeasured(why));
    }
    if c.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        if !c.no_header {
            println!("{}", report.header());
        }
        println!("{}", report.row());
    }
    match report.broadcast.as_ref().and_then(|b| b.reach_failure()) {
        Some(why) if c.require_reach => Err(Failure {
            status: 3,
            line: format!("--require-reach: {why}"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ws-bench",
            "--json",
            "echo",
            "-c",
            "5",
            "--requests-per-conn",
            "5",
        ])
        .unwrap();
        assert!(cli.common.json);
        let Mode::Echo(e) = cli.mode else {
            panic!("{:?}", cli.mode)
        };
        assert_eq!((e.connections, e.requests_per_conn), (5, 5));
    }

    #[test]
    fn refuses_non_loopback_and_bad_values() {
        let cli =
            Cli::try_parse_from(["ws-bench", "--url", "ws://10.1.2.3:8000/ws", "echo"]).unwrap();
        let f = run(cli).unwrap_err();
        assert!(f.line.contains("loopback") && f.status == 2, "{f:?}");
        let cli = Cli::try_parse_from(["ws-bench", "--text-len", "0", "echo"]).unwrap();
        assert!(run(cli).unwrap_err().line.contains("text-len"));
        assert!(secs(f64::NAN, "x").is_err());
        assert!(secs(-1.0, "x").is_err());
    }
}
