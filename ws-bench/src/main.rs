//! ws-bench: wslab's own low-overhead WebSocket load generator for protocol v1 (PROTOCOL.md).
//!
//! k6 costs ~60 KiB per socket and saturates a core long before a good server does; ws-bench is
//! native tokio + tokio-tungstenite with 4 KiB read buffers, so the server is what runs out first,
//! and when the client does run out it says so.
//!
//! Run it against a server on loopback (other addresses are refused):
//!
//! ```text
//! cargo run --release -p ws-bench -- --url ws://127.0.0.1:8000/ws --pid $(pgrep -n rust-ws) hold -n 10000
//! cargo run --release -p ws-bench -- echo -c 1000 -d 10                        # closed loop
//! cargo run --release -p ws-bench -- echo -c 1000 -d 10 --requests-per-conn 5  # then reconnect
//! cargo run --release -p ws-bench -- broadcast -c 1000 --rooms 10 -d 10        # --rate 0 = closed loop
//! cargo run --release -p ws-bench -- echo -c 100 -d 10 --rate 20000 --msg-bytes 1024  # open loop
//! cargo run --release -p ws-bench -- --source-addrs 4 hold -n 100000 --procs 6 --exchange error --end reset
//! cargo run --release -p ws-bench -- sessions -c 50 -d 10
//! cargo run --release -p ws-bench -- compare rust.jsonl python.jsonl          # side by side + budgets
//! cargo run --release -p ws-bench -- show rust.jsonl                          # JSON lines as tables
//! ```
//!
//! Each run prints one markdown table row (with its header unless `--no-header`), or one JSON
//! object with `--json`. Server RSS and CPU come from `/proc/PID` with `--pid`, else from the
//! server's `/metrics` with `--metrics-url`. `bench/run.sh` runs the whole matrix.

mod client;
mod compare;
mod modes;
mod probe;
mod report;
mod sys;
mod target;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::modes::Ctx;
use crate::probe::Probe;
use crate::target::Target;

#[derive(Parser, Debug)]
#[command(
    name = "ws-bench",
    version,
    about = "Low-overhead WebSocket load generator for wslab protocol v1 (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug)]
struct Common {
    /// WebSocket endpoint; must be on loopback.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// Server process id: RSS and CPU from /proc/PID.
    #[arg(long, global = true)]
    pid: Option<i32>,
    /// Server metrics URL (loopback): RSS and CPU from its process metrics when there is no --pid,
    /// and ws_connections for the hold mode.
    #[arg(long, global = true)]
    metrics_url: Option<String>,
    /// One JSON object per run instead of a markdown row.
    #[arg(long, global = true)]
    json: bool,
    /// Print only the row, not the header.
    #[arg(long, global = true)]
    no_header: bool,
    /// Name of this run in the output (compare pairs runs by it).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// Client worker threads; default: the cores this process may use.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds allowed for TCP connect + upgrade + welcome.
    #[arg(long, global = true, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Client read buffer per connection, bytes; default 4096, and 16384 for broadcast, whose
    /// receivers read many small frames at a time.
    #[arg(long, global = true)]
    read_buffer: Option<usize>,
    /// Spread connections over this many loopback source addresses (127.0.0.2, 127.0.0.3, ...);
    /// 0 = the kernel's choice (127.0.0.1). Each source address gives ~28,000 ephemeral ports
    /// towards one server port, so 100,000 connections need at least 4.
    #[arg(long, global = true, default_value_t = 0)]
    source_addrs: u8,
    /// Characters of `text` per message (1-4096).
    #[arg(long, global = true, default_value_t = 16)]
    text_len: usize,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open N connections at a rate, hold them, close; report server RSS per connection.
    Hold {
        #[arg(short = 'n', long, default_value_t = 10_000)]
        connections: u64,
        /// New connections per second; 0 = as fast as --connect-concurrency allows (a storm).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seconds to hold all connections open.
        #[arg(long, default_value_t = 10.0)]
        hold_secs: f64,
        /// Seconds after the last close before reading idle RSS again.
        #[arg(long, default_value_t = 5.0)]
        settle_secs: f64,
        /// Don't exchange a message after the welcome (same as --exchange none).
        #[arg(long)]
        no_exchange: bool,
        /// What each connection sends once after its welcome.
        #[arg(long, value_enum, default_value = "echo")]
        exchange: modes::Exchange,
        /// How each connection ends: a close handshake, or an abrupt reset (SO_LINGER 0, RST).
        #[arg(long, value_enum, default_value = "close")]
        end: modes::End,
        /// Open the connections from this many helper processes (each has its own open-files
        /// limit); 1 = this process.
        #[arg(long, default_value_t = 1)]
        procs: usize,
    },
    /// A hold's helper process (started by `hold --procs`; not for direct use).
    #[command(hide = true)]
    HoldAgent {
        #[arg(short = 'n', long)]
        connections: u64,
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, value_enum)]
        exchange: modes::Exchange,
        #[arg(long, value_enum)]
        end: modes::End,
        #[arg(long, default_value_t = 0)]
        index: u64,
    },
    /// Closed-loop echo request/response on C connections.
    Echo {
        #[arg(short = 'c', long, default_value_t = 1000)]
        connections: u64,
        #[arg(short = 'd', long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Close and reconnect after this many requests; 0 = never.
        #[arg(long, default_value_t = 0)]
        requests_per_conn: u64,
        /// Open loop: this many requests per second in all, on a fixed schedule, latency from
        /// each one's scheduled time; 0 = closed loop.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Bytes per request on the wire (past 4,096 characters of text, an ignored `pad` field
        /// fills it); 0 = a message with --text-len characters of text.
        #[arg(long, default_value_t = 0)]
        msg_bytes: usize,
        /// Open loop: longest wait after the window for outstanding replies.
        #[arg(long, default_value_t = 5.0)]
        drain_secs: f64,
    },
    /// C connections over R rooms, each sending broadcasts; deliveries/s and fan-out latency.
    Broadcast {
        #[arg(short = 'c', long, default_value_t = 1000)]
        connections: u64,
        #[arg(long, default_value_t = 10)]
        rooms: u64,
        /// Broadcasts per second per connection; 0 = closed loop (next when your own returns).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(short = 'd', long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Longest wait after the last send for every owed delivery to arrive.
        #[arg(long, default_value_t = 10.0)]
        drain_secs: f64,
    },
    /// Connect, broadcast, receive own message, close, as fast as possible on C workers.
    Sessions {
        #[arg(short = 'c', long, default_value_t = 50)]
        workers: u64,
        #[arg(short = 'd', long, default_value_t = 10.0)]
        duration_secs: f64,
    },
    /// Two JSON-lines result files side by side, with ratios and the budgets rust-ws is held to.
    Compare {
        a: std::path::PathBuf,
        b: std::path::PathBuf,
    },
    /// A JSON-lines result file as markdown tables (a header wherever the columns change).
    Show { file: std::path::PathBuf },
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
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
        Err(e) => {
            eprintln!("ws-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let load = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        compare::load(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    match &cli.mode {
        Mode::Compare { a, b } => {
            print!("{}", compare::render(&load(a)?, &load(b)?));
            return Ok(());
        }
        Mode::Show { file } => {
            print!("{}", compare::show(&load(file)?));
            return Ok(());
        }
        _ => {}
    }
    let c = &cli.common;
    let target = Target::parse(&c.url, "ws")?;
    let metrics = c
        .metrics_url
        .as_deref()
        .map(|u| Target::parse(u, "http"))
        .transpose()?;
    if let Some(pid) = c.pid {
        if sys::proc_rss(Some(pid)).is_none() {
            return Err(format!(
                "--pid {pid}: no such process (or /proc/{pid}/status unreadable)"
            ));
        }
    }
    if !(1..=4096).contains(&c.text_len) {
        return Err("--text-len must be 1-4096 (the protocol's text limit)".into());
    }
    if c.connect_concurrency == 0 {
        return Err("--connect-concurrency must be at least 1".into());
    }
    let nofile = sys::raise_nofile().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let needed = match &cli.mode {
        Mode::Hold {
            connections, procs, ..
        } => connections.div_ceil((*procs).max(1) as u64),
        Mode::HoldAgent { connections, .. }
        | Mode::Echo { connections, .. }
        | Mode::Broadcast { connections, .. } => *connections,
        Mode::Sessions { workers, .. } => *workers,
        Mode::Compare { .. } | Mode::Show { .. } => 0,
    };
    if needed + 64 > nofile {
        return Err(format!(
            "{needed} connections need more file descriptors than RLIMIT_NOFILE allows ({nofile}) in one process: spread them with hold --procs"
        ));
    }
    if c.source_addrs > 0 && !target.addr.is_ipv4() {
        return Err("--source-addrs needs an IPv4 (127.x) target".into());
    }
    if let Mode::Echo { msg_bytes, .. } = &cli.mode {
        if *msg_bytes > 64 << 20 {
            return Err("--msg-bytes: at most 64 MiB".into());
        }
    }
    if let Mode::Hold { procs, .. } = &cli.mode {
        if !(1..=64).contains(procs) {
            return Err("--procs must be 1-64".into());
        }
    }
    let sources: Vec<std::net::IpAddr> = (0..c.source_addrs)
        .map(|k| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2 + k)))
        .collect();
    let read_buffer = c.read_buffer.unwrap_or(match cli.mode {
        Mode::Broadcast { .. } => 16 * 1024,
        _ => 4096,
    });
    let threads = c.threads.unwrap_or_else(sys::usable_cores).max(1);
    let ctx = Ctx {
        target,
        probe: Probe {
            pid: c.pid,
            metrics,
        },
        cfg: client::ws_config(read_buffer.max(256)),
        connect_timeout: secs(c.connect_timeout, "--connect-timeout")?,
        connect_sem: Arc::new(tokio::sync::Semaphore::new(c.connect_concurrency)),
        text: "x".repeat(c.text_len),
        threads,
        label: c.label.clone(),
        sources: Arc::new(sources),
        next_source: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
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
    let report = match cli.mode {
        Mode::Hold {
            connections,
            rate,
            hold_secs,
            settle_secs,
            no_exchange,
            exchange,
            end,
            procs,
        } => {
            // What a helper process needs to connect as this one would; each gets its share of
            // the handshakes in flight.
            let mut agent_args = vec![
                "--url".to_string(),
                c.url.clone(),
                "--connect-timeout".into(),
                c.connect_timeout.to_string(),
                "--read-buffer".into(),
                read_buffer.to_string(),
                "--text-len".into(),
                c.text_len.to_string(),
                "--source-addrs".into(),
                c.source_addrs.to_string(),
                "--connect-concurrency".into(),
                (c.connect_concurrency / procs.max(1)).max(1).to_string(),
            ];
            if let Some(t) = c.threads {
                agent_args.extend(["--threads".into(), t.to_string()]);
            }
            let o = modes::HoldOpts {
                connections,
                rate: rate.max(0.0),
                hold: secs(hold_secs, "--hold-secs")?,
                settle: secs(settle_secs, "--settle-secs")?,
                exchange: if no_exchange {
                    modes::Exchange::None
                } else {
                    exchange
                },
                end,
                procs,
                agent_args,
            };
            rt.block_on(modes::hold(ctx, o))
        }
        Mode::HoldAgent {
            connections,
            rate,
            exchange,
            end,
            index,
        } => {
            let r = rt.block_on(modes::agent(
                ctx,
                connections,
                rate.max(0.0),
                exchange,
                end,
                index,
            ));
            rt.shutdown_timeout(Duration::from_secs(1));
            return r;
        }
        Mode::Echo {
            connections,
            duration_secs,
            requests_per_conn,
            rate,
            msg_bytes,
            drain_secs,
        } => {
            if rate > 0.0 && requests_per_conn > 0 {
                return Err("--rate (open loop) and --requests-per-conn don't go together".into());
            }
            let o = modes::EchoOpts {
                connections,
                duration: secs(duration_secs, "--duration-secs")?,
                requests_per_conn: (requests_per_conn > 0).then_some(requests_per_conn),
                rate: if rate.is_finite() { rate.max(0.0) } else { 0.0 },
                msg_bytes,
                drain: secs(drain_secs, "--drain-secs")?,
            };
            rt.block_on(modes::echo(ctx, o))
        }
        Mode::Broadcast {
            connections,
            rooms,
            rate,
            duration_secs,
            drain_secs,
        } => {
            let o = modes::BroadcastOpts {
                connections,
                rooms,
                rate: rate.max(0.0),
                duration: secs(duration_secs, "--duration-secs")?,
                drain: secs(drain_secs, "--drain-secs")?,
            };
            rt.block_on(modes::broadcast(ctx, o))
        }
        Mode::Sessions {
            workers,
            duration_secs,
        } => {
            let o = modes::SessionOpts {
                workers,
                duration: secs(duration_secs, "--duration-secs")?,
            };
            rt.block_on(modes::sessions(ctx, o))
        }
        Mode::Compare { .. } | Mode::Show { .. } => unreachable!("handled above"),
    };
    // Don't wait for stragglers (aborted tasks, a metrics scrape): the report is complete.
    rt.shutdown_timeout(Duration::from_secs(1));
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
    Ok(())
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
        assert!(matches!(
            cli.mode,
            Mode::Echo {
                connections: 5,
                requests_per_conn: 5,
                ..
            }
        ));
    }

    #[test]
    fn refuses_non_loopback_and_bad_values() {
        let cli =
            Cli::try_parse_from(["ws-bench", "--url", "ws://10.1.2.3:8000/ws", "echo"]).unwrap();
        assert!(run(cli).unwrap_err().contains("loopback"));
        let cli = Cli::try_parse_from(["ws-bench", "--text-len", "0", "echo"]).unwrap();
        assert!(run(cli).unwrap_err().contains("text-len"));
        assert!(secs(f64::NAN, "x").is_err());
        assert!(secs(-1.0, "x").is_err());
    }
}
