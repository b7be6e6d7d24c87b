//! hold: open N connections (a storm, or at `--rate`), exchange one message on each, hold them
//! all, then end them; the server's RSS idle before, at N and idle after says what a connection
//! costs it and whether that memory comes back, and its CPU while they are held says what idle
//! connections (keepalive pings) cost.
//!
//! How a connection is used and how it ends are chosen (`--exchange`, `--end`), because memory
//! coming back depends on the path (bench/README.md, "Memory coming back, on every path"): an ok
//! echo, an error reply, a broadcast in a room of its own, or nothing; a close handshake or an
//! abrupt reset (RST).
//!
//! With `--procs P` the connections are opened by P helper processes (`agent.rs`), each under its
//! own open-files limit, so one run can hold more sockets than one process may; this file then
//! conducts them and does the measuring. Otherwise the runner's tasks hold them in-process.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, sleep_until, timeout};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::client::{self, Fail};
use crate::report::{merge, Counts, HoldStats, Report, SharedHist};
use crate::sys;
use crate::{secs, Common, Failure};

/// What each connection sends once after its welcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    /// Nothing: only the handshake and welcome.
    None,
    /// One valid echo, and its reply.
    Echo,
    /// One short non-JSON text, and the server's error reply (the connection stays open).
    Error,
    /// One broadcast in a room of its own, and its delivery back.
    Broadcast,
}

/// How each connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// Close handshake (1000) from the client.
    Close,
    /// SO_LINGER 0 and drop: an RST, no close frame.
    Reset,
}

impl Exchange {
    pub fn name(self) -> &'static str {
        match self {
            Exchange::None => "none",
            Exchange::Echo => "echo",
            Exchange::Error => "error",
            Exchange::Broadcast => "broadcast",
        }
    }
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Close => "close",
            End::Reset => "reset",
        }
    }
}

/// `hold`'s command line.
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub connections: u64,
    /// New connections per second; 0 = as fast as --connect-concurrency allows (a storm).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to hold all connections open.
    #[arg(long, default_value_t = 10.0)]
    pub hold_secs: f64,
    /// Seconds after the last close before reading idle RSS again (shown as "settling").
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
    /// Don't exchange a message after the welcome (same as --exchange none).
    #[arg(long)]
    pub no_exchange: bool,
    /// What each connection sends once after its welcome.
    #[arg(long, value_enum, default_value = "echo")]
    pub exchange: Exchange,
    /// How each connection ends: a close handshake, or an abrupt reset (SO_LINGER 0, RST).
    #[arg(long, value_enum, default_value = "close")]
    pub end: End,
    /// Open the connections from this many helper processes (each has its own open-files
    /// limit); 1 = this process.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
}

impl Load for HoldArgs {
    type Opts = HoldOpts;

    fn sockets(&self) -> u64 {
        self.connections.div_ceil(self.procs.max(1) as u64)
    }

    fn opts(self, c: &Common, read_buffer: usize) -> Result<HoldOpts, String> {
        if !(1..=64).contains(&self.procs) {
            return Err("--procs must be 1-64".into());
        }
        // Memory per connection is one server's figure: hold measures one node.
        if c.url.len() != 1 {
            return Err("hold measures one server: give one --url".into());
        }
        Ok(HoldOpts {
            connections: self.connections,
            rate: self.rate.max(0.0),
            hold: secs(self.hold_secs, "--hold-secs")?,
            settle: secs(self.settle_secs, "--settle-secs")?,
            exchange: if self.no_exchange {
                Exchange::None
            } else {
                self.exchange
            },
            end: self.end,
            procs: self.procs,
            agent_args: helper_args(c, &c.url[0], read_buffer, self.procs),
        })
    }

    async fn run(ctx: Ctx, o: HoldOpts) -> Result<Option<Report>, Failure> {
        Ok(Some(hold(ctx, o).await))
    }
}

/// The common options a helper process needs to connect as this one would, to `urls` (hold: the
/// one target; fanout: every node, comma-separated); each gets its share of the handshakes in
/// flight. (Not --pid or --metrics-url: the conductor does the measuring.)
pub(super) fn helper_args(c: &Common, urls: &str, read_buffer: usize, procs: usize) -> Vec<String> {
    let mut args = vec![
        "--url".to_string(),
        urls.to_string(),
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
        args.extend(["--threads".into(), t.to_string()]);
    }
    args
}

pub struct HoldOpts {
    pub connections: u64,
    /// New connections per second; 0 = a storm.
    pub rate: f64,
    pub hold: Duration,
    pub settle: Duration,
    pub exchange: Exchange,
    pub end: End,
    /// Helper processes to open the connections; 1 = this process.
    pub procs: usize,
    /// The global options a helper process is started with (URL, timeouts, sources, ...).
    pub agent_args: Vec<String>,
}

/// How one connection task ended.
#[derive(Debug, PartialEq)]
pub(super) enum Held {
    /// Its connect or its exchange failed (counted as a failed handshake).
    NotOpened,
    /// The server ended it while it was held.
    Dropped,
    /// Held until told to stop, then ended as asked.
    Ended,
}

/// How a batch of held connections is opened, used and ended.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub n: u64,
    /// New connections per second; 0 = a storm.
    pub rate: f64,
    pub exchange: Exchange,
    pub end: End,
}

/// Spawns the connection tasks into `fleet` (paced, or all at once): each connects, does its
/// exchange, reports its first connect, holds until stop, then ends. `tag` keeps the rooms of
/// broadcast exchanges apart across helper processes.
pub(super) async fn spawn_holders(
    ctx: &Ctx,
    fleet: &mut Fleet<Held>,
    shape: Shape,
    hist: &SharedHist,
    tag: &str,
) {
    let Shape {
        n,
        rate,
        exchange,
        end,
    } = shape;
    let t0 = Instant::now();
    for i in 0..n {
        if rate > 0.0 {
            sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        }
        let (ctx, hist) = (ctx.clone(), hist.clone());
        let room = (exchange == Exchange::Broadcast).then(|| format!("hold-{tag}-{i}"));
        fleet.spawn(move |cue| async move {
            let mut conn = match ctx.connect(room.as_deref(), &hist).await {
                Ok(c) => c,
                Err(f) => {
                    cue.connected(Err(&f));
                    return Held::NotOpened;
                }
            };
            // One message each way, as a chat client would, so the server's read, reply and
            // write paths (and the buffers they leave behind) are in the figure too.
            let (msg, want) = match exchange {
                Exchange::None => (None, ""),
                Exchange::Echo => (Some(client::echo_msg(&ctx.text)), "echo"),
                Exchange::Error => (Some(client::Message::text("not json")), "error"),
                Exchange::Broadcast => (
                    Some(client::broadcast_msg(&ctx.text, "h", client::now_us())),
                    "broadcast",
                ),
            };
            if let Some(msg) = msg {
                let ex = async {
                    client::send(&mut conn.ws, msg).await?;
                    let text = client::recv_text(&mut conn.ws).await?;
                    match client::parse(&text)?.kind.as_deref() {
                        Some(k) if k == want => Ok(()),
                        other => Err(Fail::new(
                            "unexpected_reply",
                            format!("wanted {want}, got {other:?}"),
                        )),
                    }
                };
                if let Err(f) = timeout(ctx.connect_timeout, ex)
                    .await
                    .unwrap_or_else(|_| Err(Fail::new("timeout", format!("no {want} reply"))))
                {
                    cue.connected(Err(&f));
                    return Held::NotOpened;
                }
            }
            let mut signal = cue.connected(Ok(&conn));
            // Hold: keep reading so the server's pings get their pongs, until told to stop.
            loop {
                tokio::select! {
                    _ = signal.stopped() => break,
                    m = client::recv_text(&mut conn.ws) => if m.is_err() {
                        return Held::Dropped;
                    },
                }
            }
            match end {
                End::Close => {
                    let _ = client::close(conn.ws, Duration::from_secs(10)).await;
                }
                End::Reset => client::reset(conn.ws),
            }
            Held::Ended
        });
    }
}

/// What a helper process reports once its connections are open (one JSON line).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct AgentOpened {
    pub attempts: u64,
    pub opened: u64,
    pub failures: Counts,
    pub server: Option<String>,
    /// Handshake+welcome times, microseconds: (value, count) pairs of its histogram.
    pub hist: Vec<(u64, u64)>,
    /// Why its first failed handshake failed, if one did.
    #[serde(default)]
    pub first_failure: Option<String>,
}

/// What a helper process reports once its connections are ended (one JSON line).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct AgentDone {
    pub dropped: u64,
    pub all_finished: bool,
    /// Its own CPU time, user + system, seconds, from start to exit.
    pub cpu_s: f64,
    pub peak_rss: Option<u64>,
}

/// The connections opened and held, however that was done.
struct Opened {
    attempts: u64,
    opened: u64,
    failures: Counts,
    server: Option<String>,
}

/// Where the run's connections live: in this process's tasks, or in helper processes.
enum Holders {
    Here(Fleet<Held>),
    Agents(Vec<AgentProc>),
}

struct AgentProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

async fn hold(ctx: Ctx, o: HoldOpts) -> Report {
    let mut r = ctx.report("hold");
    r.connections = o.connections;
    let rss_idle_before = ctx.probe.rss().await;
    let meter = Meter::start(&ctx).await;
    let hist = SharedHist::default();
    let t0 = Instant::now();
    let paced = (o.rate > 0.0).then(|| Duration::from_secs_f64(o.connections as f64 / o.rate));
    ctx.tally.phase("connecting", paced);
    let (holders, opened) = if o.procs > 1 {
        match start_agents(&ctx, &o, &hist).await {
            Ok(x) => x,
            Err(e) => {
                r.notes.push(format!("helper processes failed: {e}"));
                r.errors.insert("agent_failed".into(), 1);
                return r;
            }
        }
    } else {
        let mut fleet = Fleet::new();
        let tag = std::process::id().to_string();
        let shape = Shape {
            n: o.connections,
            rate: o.rate,
            exchange: o.exchange,
            end: o.end,
        };
        spawn_holders(&ctx, &mut fleet, shape, &hist, &tag).await;
        let c = fleet.connects().await;
        let opened = Opened {
            attempts: c.attempts,
            opened: c.opened,
            failures: c.failures,
            server: c.server,
        };
        (Holders::Here(fleet), opened)
    };
    r.connect_attempts += opened.attempts;
    merge(&mut r.connect_failures, &opened.failures);
    if let Some(s) = opened.server {
        r.server = s;
    }
    let open = opened.opened;
    let open_time = t0.elapsed();
    // Here the opened connections are the run itself, not set-up.
    r.conns_opened = open;
    r.conn_per_s = Some(open as f64 / open_time.as_secs_f64().max(1e-9));
    // The held window: the server's CPU here is what idle connections cost it (keepalive pings).
    ctx.tally.phase("holding", Some(o.hold));
    let cpu0 = ctx.probe.cpu().await;
    let held_from = Instant::now();
    sleep(o.hold).await;
    let idle_cpu_pct = match (ctx.probe.cpu().await, cpu0) {
        (Some(c1), Some(c0)) => Some(sys::pct(c1.since(c0).total(), held_from.elapsed())),
        _ => None,
    };
    let rss_at_n = ctx.probe.rss().await;
    let server_connections_at_n = ctx.probe.metric("ws_connections").await;
    ctx.tally.phase("closing", None);
    let closing = Instant::now();
    let (dropped, all_finished, agents_cpu) = match holders {
        Holders::Here(fleet) => {
            fleet.stop();
            let joined = fleet.join(Duration::from_secs(60)).await;
            let dropped = joined.outs.iter().filter(|h| **h == Held::Dropped).count() as u64;
            (dropped, joined.all_finished, 0.0)
        }
        Holders::Agents(agents) => {
            let (done, errs) = stop_agents(agents).await;
            for e in errs {
                r.notes.push(format!("helper process: {e}"));
                *r.errors.entry("agent_failed".into()).or_default() += 1;
            }
            let dropped = done.iter().map(|d| d.dropped).sum();
            let all = done.iter().all(|d| d.all_finished) && done.len() == o.procs;
            let peak = done.iter().filter_map(|d| d.peak_rss).max();
            if let Some(p) = peak {
                r.notes.push(format!(
                    "largest helper process peaked at {:.0} MiB RSS",
                    p as f64 / 1048576.0
                ));
            }
            (dropped, all, done.iter().map(|d| d.cpu_s).sum::<f64>())
        }
    };
    let close_time = closing.elapsed();
    let wall = meter.finish(&ctx, &mut r).await;
    r.duration_s = wall.as_secs_f64();
    if agents_cpu > 0.0 {
        // The helpers' CPU is the client's too; saturation is judged on their sum.
        r.client_cpu_pct += sys::pct(agents_cpu, wall);
        let usable = sys::usable_cores().max(1) as f64;
        r.client_saturated = r.client_cpu_pct >= 90.0 * usable;
    }
    // Idle RSS after: the server is given --settle-secs to give memory back.
    ctx.tally.phase("settling", Some(o.settle));
    sleep(o.settle).await;
    let rss_idle_after = ctx.probe.rss().await;
    let server_connections_after = ctx.probe.metric("ws_connections").await;
    let bytes_per_conn = match (rss_at_n, rss_idle_before) {
        (Some(a), Some(b)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
        _ => None,
    };
    r.latency = hist.summary();
    r.connect_latency = r.latency.clone();
    if dropped > 0 {
        r.errors.insert("dropped_while_held".into(), dropped);
    }
    r.hold = Some(HoldStats {
        target: o.connections,
        open,
        rss_idle_before,
        rss_at_n,
        rss_idle_after,
        bytes_per_conn,
        server_connections_at_n,
        server_connections_after,
        settle_after_s: o.settle.as_secs_f64(),
        exchange: o.exchange.name().into(),
        end: o.end.name().into(),
        idle_cpu_pct,
        procs: o.procs.max(1) as u64,
        source_addrs: ctx.sources.len() as u64,
        client_nofile: sys::nofile_limit(),
    });
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "opened {open} in {:.1} s ({} exchange, {} process(es), {} source address(es)), held {:.0} s, ended by {} in {:.1} s; latency = handshake+welcome; rss idle after = {:.0} s after the last end",
        open_time.as_secs_f64(),
        o.exchange.name(),
        o.procs.max(1),
        ctx.sources.len().max(1),
        o.hold.as_secs_f64(),
        o.end.name(),
        close_time.as_secs_f64(),
        o.settle.as_secs_f64()
    ));
    if let Some(peak) = r.client_peak_rss {
        let mib = peak as f64 / 1048576.0;
        r.notes
            .push(format!("ws-bench itself peaked at {mib:.0} MiB RSS"));
    }
    if !all_finished {
        r.notes
            .push("some connections did not finish ending within 60 s".into());
    }
    if let Some(c) = server_connections_after {
        if c > 0.0 {
            r.notes.push(format!(
                "server still reports ws_connections={c} after settling"
            ));
        }
    }
    r
}

/// Starts `o.procs` helper processes, each opening its share of the connections, and waits until
/// every one has said how its connects went.
async fn start_agents(
    ctx: &Ctx,
    o: &HoldOpts,
    hist: &SharedHist,
) -> Result<(Holders, Opened), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let procs = o.procs as u64;
    let mut agents = Vec::with_capacity(o.procs);
    for k in 0..procs {
        let share = o.connections / procs + u64::from(k < o.connections % procs);
        let mut cmd = Command::new(&exe);
        cmd.args(&o.agent_args)
            .args(["hold-agent", "-n", &share.to_string()])
            .args(["--rate", &(o.rate / procs as f64).to_string()])
            .args(["--exchange", o.exchange.name(), "--end", o.end.name()])
            .args(["--index", &k.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        agents.push(AgentProc {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        });
    }
    let mut opened = Opened {
        attempts: 0,
        opened: 0,
        failures: Counts::new(),
        server: None,
    };
    // A storm of ~100k handshakes at a few thousand per second: minutes, not hours.
    let limit = ctx.connect_timeout + Duration::from_secs(600);
    for (k, a) in agents.iter_mut().enumerate() {
        let line = timeout(limit, a.stdout.next_line())
            .await
            .map_err(|_| format!("helper {k} did not report its connects in {limit:?}"))?
            .map_err(|e| format!("helper {k}: {e}"))?
            .ok_or_else(|| format!("helper {k} exited before reporting its connects"))?;
        let rep: AgentOpened =
            serde_json::from_str(&line).map_err(|e| format!("helper {k}: {e}: {line}"))?;
        opened.attempts += rep.attempts;
        opened.opened += rep.opened;
        merge(&mut opened.failures, &rep.failures);
        opened.server = opened.server.or(rep.server);
        hist.add_pairs(&rep.hist);
        // The conductor's tally: a run where no helper opened anything is given up.
        ctx.tally.add(
            rep.opened,
            rep.attempts.saturating_sub(rep.opened),
            rep.first_failure,
        );
    }
    Ok((Holders::Agents(agents), opened))
}

/// Tells every helper to end its connections, and collects what each reports.
async fn stop_agents(mut agents: Vec<AgentProc>) -> (Vec<AgentDone>, Vec<String>) {
    for a in agents.iter_mut() {
        if let Some(mut stdin) = a.stdin.take() {
            let _ = stdin.write_all(b"end\n").await;
            // Dropping stdin closes it: a helper also ends on EOF.
        }
    }
    let mut done = Vec::new();
    let mut errs = Vec::new();
    for (k, mut a) in agents.into_iter().enumerate() {
        match timeout(Duration::from_secs(90), a.stdout.next_line()).await {
            Ok(Ok(Some(line))) => match serde_json::from_str::<AgentDone>(&line) {
                Ok(d) => done.push(d),
                Err(e) => errs.push(format!("helper {k}: {e}: {line}")),
            },
            Ok(Ok(None)) => errs.push(format!("helper {k} exited without a final report")),
            Ok(Err(e)) => errs.push(format!("helper {k}: {e}")),
            Err(_) => errs.push(format!("helper {k} did not finish within 90 s")),
        }
        let _ = timeout(Duration::from_secs(10), a.child.wait()).await;
    }
    (done, errs)
}
