//! fanout: N members of ONE room, spread over every node and over P helper processes, held idle,
//! then K broadcasts into the room: for each broadcast, the time until the LAST member has it
//! (p50/p99/max over the K), reach (exact, per node and overall), the order of `seq` on every
//! member, the nodes' memory per connection, and CPU of the whole (nodes, helpers, this process,
//! the broker with `--broker-pid`) while the N are idle (keepalive pings) and while broadcasting.
//!
//! This is the 100,000-connection run (bench/hundredk.py): no process on the lab's machine may
//! hold more than 20,000 descriptors, so the members live in helper processes
//! (`fanout-agent`, below, started by this process as `hold --procs` starts its helpers) and the
//! nodes are six or more. Member g (counted over all helpers) connects to node g mod nodes, so
//! the room has the same share on every node. Each helper keeps, per member, the arrival time of
//! each broadcast (identified by its `sent_at`, which this process stamps distinct), and reports
//! per broadcast its count and latest arrival; this process merges them. All processes read one
//! clock (the machine's), so arrival minus `sent_at` is a latency across processes.
//!
//! The broadcasts come from one extra connection of this process (on the first node; one member
//! more in the room, counted apart): it sends them `--interval-secs` apart, and reads its own
//! copies back and any error answering them (`broker_unavailable` carries the `ref`). A broadcast
//! answered with an error is not owed to anyone (PROTOCOL.md §5: "never a silent split"); every
//! other one is owed to every member that stayed connected.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep_until, timeout};

use super::hold::helper_args;
use super::meter::common_notes;
use super::reach::SeqCheck;
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::client::{self, Scanned};
use crate::probe::Cpu;
use crate::report::{bump, merge, BroadcastStats, Counts, HoldStats, Latency, Report, SharedHist};
use crate::sys;
use crate::{secs, Common, Failure};

/// `fanout`'s command line.
#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Members of the room (not counting the sender).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub members: u64,
    /// Helper processes holding the members (each under its own open-files limit).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Broadcasts to send into the room once every member is connected.
    #[arg(long, default_value_t = 10)]
    pub broadcasts: u64,
    /// Seconds between two broadcasts (each should have reached everyone before the next).
    #[arg(long, default_value_t = 2.0)]
    pub interval_secs: f64,
    /// Seconds the members are held idle before the broadcasts (the idle-CPU window).
    #[arg(long, default_value_t = 10.0)]
    pub hold_secs: f64,
    /// Seconds after the last broadcast before the members are told to report.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// The room's name; default `fanout-<this process's id>`.
    #[arg(long)]
    pub room: Option<String>,
    /// The broker's process (Redis), to measure its CPU and RSS with the nodes'.
    #[arg(long)]
    pub broker_pid: Option<i32>,
}

impl Load for FanoutArgs {
    type Opts = FanoutOpts;

    fn sockets(&self) -> u64 {
        // This process holds the sender; the helpers hold the members.
        1
    }

    fn opts(self, c: &Common, read_buffer: usize) -> Result<FanoutOpts, String> {
        if !(1..=64).contains(&self.procs) {
            return Err("--procs must be 1-64".into());
        }
        if self.broadcasts == 0 {
            return Err("--broadcasts must be at least 1".into());
        }
        let share = self.members.div_ceil(self.procs as u64);
        let nofile = sys::nofile_limit().unwrap_or(u64::MAX);
        if share + 64 > nofile {
            return Err(format!(
                "{share} members per helper need more file descriptors than RLIMIT_NOFILE allows ({nofile}): raise --procs"
            ));
        }
        Ok(FanoutOpts {
            members: self.members,
            procs: self.procs,
            broadcasts: self.broadcasts,
            interval: secs(self.interval_secs, "--interval-secs")?,
            hold: secs(self.hold_secs, "--hold-secs")?,
            drain: secs(self.drain_secs, "--drain-secs")?,
            room: self
                .room
                .unwrap_or_else(|| format!("fanout-{}", std::process::id())),
            broker_pid: self.broker_pid,
            agent_args: helper_args(c, &c.url.join(","), read_buffer, self.procs),
        })
    }

    async fn run(ctx: Ctx, o: FanoutOpts) -> Result<Option<Report>, Failure> {
        Ok(Some(fanout(ctx, o).await))
    }
}

pub struct FanoutOpts {
    pub members: u64,
    pub procs: usize,
    pub broadcasts: u64,
    pub interval: Duration,
    pub hold: Duration,
    pub drain: Duration,
    pub room: String,
    pub broker_pid: Option<i32>,
    pub agent_args: Vec<String>,
}

/// One broadcast as the whole run saw it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct FanoutBroadcast {
    #[serde(rename = "ref")]
    pub reference: String,
    pub sent_at_us: u64,
    /// Members (not the sender) that received it.
    pub delivered: u64,
    /// Latest arrival at any member, minus `sent_at` (None if nobody got it).
    pub last_us: Option<u64>,
    /// The error code its sender got for it (`broker_unavailable`), if any: then it is owed to
    /// nobody.
    #[serde(default)]
    pub error: Option<String>,
}

/// CPU of the whole over one window, percent of one core.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct WindowCpu {
    pub secs: f64,
    /// Every node's, per node in `--url` order, and their sum.
    pub nodes_pct: Vec<Option<f64>>,
    pub nodes_total_pct: Option<f64>,
    /// The helper processes' and this process's together.
    pub clients_pct: Option<f64>,
    pub broker_pct: Option<f64>,
    /// All of the above.
    pub total_pct: Option<f64>,
}

/// `fanout`'s own figures (the row's reach and order are in `broadcast`, memory in `hold`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct FanoutStats {
    pub room: String,
    pub members: u64,
    pub procs: u64,
    pub source_addrs: u64,
    pub interval_s: f64,
    pub broadcasts: Vec<FanoutBroadcast>,
    /// Over the broadcasts that reached someone: time until the last member had it.
    pub last_p50_us: Option<u64>,
    pub last_p99_us: Option<u64>,
    pub last_max_us: Option<u64>,
    /// Every delivery's latency (`sent_at` to arrival), all members.
    pub delivery: Option<Latency>,
    /// CPU while the members were held idle (keepalive on), and while broadcasting (with the drain).
    pub idle: WindowCpu,
    pub busy: WindowCpu,
    /// The nodes' RSS, per node: before any member, and with every member held.
    pub node_rss_before: Vec<Option<u64>>,
    pub node_rss_at_n: Vec<Option<u64>>,
    pub broker_rss_before: Option<u64>,
    pub broker_rss_at_n: Option<u64>,
    pub broker_rss_after: Option<u64>,
    /// Replies to the sender by error code (`broker_unavailable`...).
    pub sender_errors: Counts,
    /// Deliveries of broadcasts this run did not send (another sender in the room): 0 expected.
    pub stray: u64,
    /// The helpers' largest peak RSS.
    pub helper_peak_rss: Option<u64>,
}

/// What a helper reports once its members are open: [`super::hold::AgentOpened`]'s shape.
type Opened = super::hold::AgentOpened;

/// What a helper reports at the end.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct FanoutDone {
    /// Per node: (members opened, members that stayed connected to the end).
    pub per_node: Vec<(u64, u64)>,
    pub dropped: u64,
    /// Why members were dropped (the read's failure kind).
    pub drop_kinds: Counts,
    /// Among members that stayed: per (broadcast `sent_at`, node), the deliveries and the latest
    /// arrival (epoch microseconds).
    pub arrivals: Vec<(u64, usize, u64, u64)>,
    /// Delivery latencies as (value, count) pairs.
    pub hist: Vec<(u64, u64)>,
    pub seq_violations: u64,
    pub seq_gaps: u64,
    /// (first seq, last seq, digest, members) among members with no violation and no gap.
    pub views: Vec<(u64, u64, u64, u64)>,
    /// Messages other than broadcasts a member received, by type or error code.
    pub other: Counts,
    pub all_finished: bool,
    pub cpu_s: f64,
    pub peak_rss: Option<u64>,
}

struct AgentProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// CPU readings of everything measured, taken together.
struct Readings {
    at: Instant,
    nodes: Vec<Option<Cpu>>,
    helpers: Vec<Option<sys::CpuTimes>>,
    me: f64,
    broker: Option<sys::CpuTimes>,
}

async fn read_cpu(ctx: &Ctx, helper_pids: &[Option<i32>], broker: Option<i32>) -> Readings {
    let mut nodes = Vec::with_capacity(ctx.nodes.len());
    for n in ctx.nodes.iter() {
        nodes.push(n.probe.cpu().await);
    }
    Readings {
        at: Instant::now(),
        nodes,
        helpers: helper_pids
            .iter()
            .map(|p| p.and_then(|p| sys::proc_cpu(Some(p))))
            .collect(),
        me: sys::self_cpu_seconds(),
        broker: broker.and_then(|p| sys::proc_cpu(Some(p))),
    }
}

fn window(a: &Readings, b: &Readings) -> WindowCpu {
    let wall = b.at.duration_since(a.at);
    let pct = |s: f64| sys::pct(s, wall);
    let nodes: Vec<Option<f64>> = a
        .nodes
        .iter()
        .zip(&b.nodes)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Some(y.since(*x).total()),
            _ => None,
        })
        .collect();
    let nodes_total = nodes.iter().copied().sum::<Option<f64>>();
    let helpers = a
        .helpers
        .iter()
        .zip(&b.helpers)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => {
                let d = y.since(*x);
                Some(d.user + d.sys)
            }
            _ => None,
        })
        .sum::<Option<f64>>();
    let clients = helpers.map(|h| h + (b.me - a.me).max(0.0));
    let broker = match (a.broker, b.broker) {
        (Some(x), Some(y)) => {
            let d = y.since(x);
            Some(d.user + d.sys)
        }
        _ => None,
    };
    let total = match (nodes_total, clients) {
        (Some(n), Some(c)) => Some(n + c + broker.unwrap_or(0.0)),
        _ => None,
    };
    WindowCpu {
        secs: wall.as_secs_f64(),
        nodes_pct: nodes.iter().map(|n| n.map(pct)).collect(),
        nodes_total_pct: nodes_total.map(pct),
        clients_pct: clients.map(pct),
        broker_pct: broker.map(pct),
        total_pct: total.map(pct),
    }
}

/// Nearest-rank quantile of a sorted slice.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

async fn fanout(ctx: Ctx, o: FanoutOpts) -> Report {
    let mut r = ctx.report("fanout");
    r.connections = o.members;
    let nn = ctx.nodes.len();
    let mut f = FanoutStats {
        room: o.room.clone(),
        members: o.members,
        procs: o.procs as u64,
        source_addrs: ctx.sources.len() as u64,
        interval_s: o.interval.as_secs_f64(),
        ..Default::default()
    };
    for n in ctx.nodes.iter() {
        f.node_rss_before.push(n.probe.rss().await);
    }
    f.broker_rss_before = o.broker_pid.and_then(|p| sys::proc_rss(Some(p)));
    let hist = SharedHist::default();
    let t0 = Instant::now();
    ctx.tally.phase("connecting", None);
    let mut agents = match start_agents(&ctx, &o, &hist, &mut r).await {
        Ok(a) => a,
        Err(e) => {
            r.notes.push(format!("helper processes failed: {e}"));
            r.errors.insert("agent_failed".into(), 1);
            return r;
        }
    };
    let open = r.conns_opened;
    let open_time = t0.elapsed();
    r.conn_per_s = Some(open as f64 / open_time.as_secs_f64().max(1e-9));
    // The sender: one connection more, on the first node, counted in the handshakes.
    let sender = ctx.connect_to(0, Some(&o.room), &hist).await;
    r.connect_attempts += 1;
    let mut sender = match sender {
        Ok(c) => c,
        Err(e) => {
            bump(&mut r.connect_failures, e.kind);
            r.notes.push(format!("the sender could not connect: {e}"));
            stop_agents(&mut agents).await;
            return r;
        }
    };
    r.connect_latency = hist.summary();
    let helper_pids: Vec<Option<i32>> = agents
        .iter()
        .map(|a| a.child.id().map(|p| p as i32))
        .collect();
    // Idle: every member held, keepalive pings running.
    ctx.tally.phase("holding", Some(o.hold));
    let c0 = read_cpu(&ctx, &helper_pids, o.broker_pid).await;
    // The sender keeps reading while it waits, so it answers the server's pings: a sender that
    // read nothing for the hold was dropped by a keepalive shorter than the hold (python-ws caps
    // its ping timeout at the interval) and then had no broadcast to send.
    let idle_until = Instant::now() + o.hold;
    loop {
        tokio::select! {
            _ = sleep_until(idle_until.into()) => break,
            m = client::recv_text(&mut sender.ws) => {
                if let Err(e) = m {
                    bump(&mut f.sender_errors, e.kind);
                    r.notes.push(format!("the sender's connection failed while it waited: {e}"));
                    break;
                }
            }
        }
    }
    let c1 = read_cpu(&ctx, &helper_pids, o.broker_pid).await;
    f.idle = window(&c0, &c1);
    let mut server_conns = Some(0.0);
    for n in ctx.nodes.iter() {
        f.node_rss_at_n.push(n.probe.rss().await);
        server_conns = server_conns
            .zip(n.probe.metric("ws_connections").await)
            .map(|(a, b)| a + b);
    }
    f.broker_rss_at_n = o.broker_pid.and_then(|p| sys::proc_rss(Some(p)));
    // The broadcasts, each stamped with a distinct sent_at; the sender reads its own copies and
    // any error answering one.
    ctx.tally.phase(
        "broadcasting",
        Some(o.interval * o.broadcasts as u32 + o.drain),
    );
    let tpl_text = ctx.text.clone();
    let mut sent: Vec<FanoutBroadcast> = Vec::new();
    let mut own = 0u64;
    let start = Instant::now();
    let end = start + o.interval * (o.broadcasts.saturating_sub(1) as u32) + o.drain;
    let mut next = start;
    let mut last_stamp = 0u64;
    loop {
        let sending = (sent.len() as u64) < o.broadcasts;
        tokio::select! {
            _ = sleep_until(next.into()), if sending => {
                let stamp = client::now_us().max(last_stamp + 1);
                last_stamp = stamp;
                let reference = format!("f{}", sent.len());
                sent.push(FanoutBroadcast { reference: reference.clone(), sent_at_us: stamp, ..Default::default() });
                if let Err(e) = client::send(&mut sender.ws, client::broadcast_msg(&tpl_text, &reference, stamp)).await {
                    bump(&mut f.sender_errors, e.kind);
                    break;
                }
                next += o.interval;
            }
            m = client::recv_text(&mut sender.ws) => match m {
                Err(e) => { bump(&mut f.sender_errors, e.kind); break; }
                Ok(text) => match client::parse(&text) {
                    Ok(m) if m.kind.as_deref() == Some("broadcast") => own += 1,
                    Ok(m) if m.kind.as_deref() == Some("error") => {
                        let code = m.code.as_deref().unwrap_or("error").to_string();
                        bump(&mut f.sender_errors, &code);
                        if let Some(b) = sent.iter_mut().find(|b| Some(b.reference.as_str()) == m.reference.as_deref()) {
                            b.error = Some(code);
                        }
                    }
                    _ => {}
                },
            },
            _ = sleep_until(end.into()), if !sending => break,
        }
    }
    let c2 = read_cpu(&ctx, &helper_pids, o.broker_pid).await;
    f.busy = window(&c1, &c2);
    let _ = client::close(sender.ws, Duration::from_secs(2)).await;
    ctx.tally.phase("closing", None);
    let done = stop_agents(&mut agents).await;
    f.broker_rss_after = o.broker_pid.and_then(|p| sys::proc_rss(Some(p)));

    // Merge what the helpers saw.
    let mut b = BroadcastStats {
        rooms: 1,
        members: open,
        ..Default::default()
    };
    let mut arrivals: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut arrivals_on: HashMap<(u64, usize), u64> = HashMap::new();
    let all_lat = SharedHist::default();
    let mut opened_on = vec![0u64; nn];
    let mut views: HashMap<(u64, u64), HashMap<u64, u64>> = HashMap::new();
    let mut stayed_on = vec![0u64; nn];
    let mut others = Counts::new();
    for (k, d) in done.iter().enumerate() {
        match d {
            Ok(d) => {
                for (node, (opened, s)) in d.per_node.iter().enumerate() {
                    opened_on[node % nn] += opened;
                    stayed_on[node % nn] += s;
                }
                b.members_dropped += d.dropped;
                for (kind, v) in &d.drop_kinds {
                    *r.errors.entry(format!("dropped_{kind}")).or_default() += v;
                }
                for &(at, node, n, last) in &d.arrivals {
                    let e = arrivals.entry(at).or_default();
                    e.0 += n;
                    e.1 = e.1.max(last);
                    *arrivals_on.entry((at, node % nn)).or_default() += n;
                }
                all_lat.add_pairs(&d.hist);
                b.seq_violations += d.seq_violations;
                b.seq_gaps += d.seq_gaps;
                for &(first, last, digest, n) in &d.views {
                    *views
                        .entry((first, last))
                        .or_default()
                        .entry(digest)
                        .or_default() += n;
                }
                merge(&mut others, &d.other);
                f.helper_peak_rss = f.helper_peak_rss.max(d.peak_rss);
                if !d.all_finished {
                    r.notes
                        .push(format!("helper {k}: some members did not end within 60 s"));
                }
            }
            Err(e) => {
                r.notes.push(format!("helper {k}: {e}"));
                *r.errors.entry("agent_failed".into()).or_default() += 1;
            }
        }
    }
    for digests in views.values() {
        let all: u64 = digests.values().sum();
        b.seq_disagreements += all - digests.values().copied().max().unwrap_or(0);
    }
    f.delivery = all_lat.summary();
    let owed_each = sent.iter().filter(|s| s.error.is_none()).count() as u64;
    // Deliveries at members that stayed, of broadcasts owed to them, per node.
    let received_on: Vec<u64> = (0..nn)
        .map(|k| {
            sent.iter()
                .filter(|s| s.error.is_none())
                .map(|s| arrivals_on.get(&(s.sent_at_us, k)).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let mut lasts = Vec::new();
    for s in sent.iter_mut() {
        if let Some((n, last)) = arrivals.remove(&s.sent_at_us) {
            s.delivered = n;
            s.last_us = Some(last.saturating_sub(s.sent_at_us));
            lasts.push(last.saturating_sub(s.sent_at_us));
        }
    }
    f.stray = arrivals.values().map(|(n, _)| n).sum();
    lasts.sort_unstable();
    f.last_p50_us = quantile(&lasts, 0.50);
    f.last_p99_us = quantile(&lasts, 0.99);
    f.last_max_us = lasts.last().copied();
    // Reach: every member that stayed is owed every broadcast not answered with an error.
    let stayed: u64 = stayed_on.iter().sum();
    b.sent = sent.len() as u64;
    b.reach_expected = stayed * owed_each;
    b.reach_received = received_on.iter().sum();
    b.expected = open * owed_each;
    b.delivered_total = sent.iter().map(|s| s.delivered).sum();
    b.deliveries = b.delivered_total;
    let busy = f.busy.secs.max(1e-9);
    b.sent_per_s = b.sent as f64 / busy;
    b.deliveries_per_s = b.deliveries as f64 / busy;
    for (k, n) in r.nodes.iter_mut().enumerate() {
        // The members on it (the sender, on the first node, is not one).
        n.conns = opened_on[k];
        n.received = received_on[k];
        n.expected = stayed_on[k] * owed_each;
        n.cpu_pct = f.busy.nodes_pct.get(k).copied().flatten();
        n.max_rss = f.node_rss_at_n.get(k).copied().flatten();
    }
    merge(&mut r.errors, &others);
    if own < b.sent {
        r.notes.push(format!(
            "the sender got {own} of its {} broadcasts back",
            b.sent
        ));
    }
    f.broadcasts = sent;
    let before: Option<u64> = f.node_rss_before.iter().copied().sum();
    let at_n: Option<u64> = f.node_rss_at_n.iter().copied().sum();
    r.hold = Some(HoldStats {
        target: o.members,
        open,
        rss_idle_before: before,
        rss_at_n: at_n,
        rss_idle_after: None,
        bytes_per_conn: match (at_n, before) {
            (Some(a), Some(b)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
            _ => None,
        },
        server_connections_at_n: server_conns,
        server_connections_after: None,
        settle_after_s: 0.0,
        exchange: "none".into(),
        end: "close".into(),
        idle_cpu_pct: f.idle.nodes_total_pct,
        procs: o.procs as u64,
        source_addrs: ctx.sources.len() as u64,
        client_nofile: sys::nofile_limit(),
    });
    r.server_max_rss = at_n;
    r.server_cpu_total_pct = f.busy.nodes_total_pct;
    r.cpu_window_s = f.busy.secs;
    r.client_cpu_pct = f.busy.clients_pct.unwrap_or(0.0);
    r.client_peak_rss = sys::self_peak_rss();
    r.duration_s = f.busy.secs;
    r.requests = b.sent;
    r.req_per_s = Some(b.sent_per_s);
    r.latency = f.delivery.clone();
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "one room of {open} members over {nn} node(s), {} helper process(es), {} source address(es), opened in {:.1} s; held idle {:.0} s, then {} broadcasts {:.1} s apart from one more connection on node 1; latency = every delivery, sent_at to arrival; last = until the last member had it",
        o.procs,
        ctx.sources.len().max(1),
        open_time.as_secs_f64(),
        o.hold.as_secs_f64(),
        b.sent,
        o.interval.as_secs_f64(),
    ));
    if f.stray > 0 {
        r.notes.push(format!(
            "{} deliveries of broadcasts this run did not send",
            f.stray
        ));
    }
    if let Some(why) = b.reach_failure() {
        r.notes.insert(
            0,
            format!("⚠ {why}: broadcasts did not reach every member once, in one order"),
        );
    }
    r.broadcast = Some(b);
    r.fanout = Some(f);
    r
}

/// Starts the helpers and waits until each has said how its members' connects went; fills the
/// report's handshake counts.
async fn start_agents(
    ctx: &Ctx,
    o: &FanoutOpts,
    hist: &SharedHist,
    r: &mut Report,
) -> Result<Vec<AgentProc>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let procs = o.procs as u64;
    let mut agents = Vec::with_capacity(o.procs);
    let mut first = 0u64;
    for k in 0..procs {
        let share = o.members / procs + u64::from(k < o.members % procs);
        let mut cmd = Command::new(&exe);
        cmd.args(&o.agent_args)
            .args(["fanout-agent", "-n", &share.to_string()])
            .args(["--first", &first.to_string(), "--room", &o.room])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        first += share;
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        agents.push(AgentProc {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        });
    }
    let limit = ctx.connect_timeout + Duration::from_secs(900);
    for (k, a) in agents.iter_mut().enumerate() {
        let line = timeout(limit, a.stdout.next_line())
            .await
            .map_err(|_| format!("helper {k} did not report its connects in {limit:?}"))?
            .map_err(|e| format!("helper {k}: {e}"))?
            .ok_or_else(|| format!("helper {k} exited before reporting its connects"))?;
        let rep: Opened =
            serde_json::from_str(&line).map_err(|e| format!("helper {k}: {e}: {line}"))?;
        r.connect_attempts += rep.attempts;
        r.conns_opened += rep.opened;
        merge(&mut r.connect_failures, &rep.failures);
        if let Some(s) = rep.server {
            r.server = s;
        }
        hist.add_pairs(&rep.hist);
        ctx.tally.add(
            rep.opened,
            rep.attempts.saturating_sub(rep.opened),
            rep.first_failure,
        );
    }
    // Each helper counted its members per node; the conductor's spread is their sum (filled
    // from the per-node reports at the end), so none is counted here.
    Ok(agents)
}

/// Tells every helper to end its members, and collects what each reports.
async fn stop_agents(agents: &mut Vec<AgentProc>) -> Vec<Result<FanoutDone, String>> {
    for a in agents.iter_mut() {
        if let Some(mut stdin) = a.stdin.take() {
            let _ = stdin.write_all(b"end\n").await;
        }
    }
    let mut out = Vec::new();
    for (k, mut a) in agents.drain(..).enumerate() {
        let got = match timeout(Duration::from_secs(120), a.stdout.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str::<FanoutDone>(&line)
                .map_err(|e| format!("helper {k}: {e}: {line}")),
            Ok(Ok(None)) => Err(format!("helper {k} exited without a final report")),
            Ok(Err(e)) => Err(format!("helper {k}: {e}")),
            Err(_) => Err(format!("helper {k} did not finish within 120 s")),
        };
        out.push(got);
        let _ = timeout(Duration::from_secs(10), a.child.wait()).await;
    }
    out
}

// ---- the helper process --------------------------------------------------------------------------

/// `fanout-agent`'s command line, as `fanout` writes it.
#[derive(clap::Args, Debug)]
pub struct FanoutAgentArgs {
    #[arg(short = 'n', long)]
    pub members: u64,
    /// The global index of this helper's first member (member g connects to node g mod nodes).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    #[arg(long)]
    pub room: String,
}

impl Load for FanoutAgentArgs {
    type Opts = FanoutAgentArgs;
    const MEASURES: bool = false;

    fn sockets(&self) -> u64 {
        self.members
    }

    fn opts(self, _: &Common, _: usize) -> Result<FanoutAgentArgs, String> {
        Ok(self)
    }

    async fn run(ctx: Ctx, a: FanoutAgentArgs) -> Result<Option<Report>, Failure> {
        agent(ctx, a).await?;
        Ok(None)
    }
}

/// What one member saw.
#[derive(Default)]
struct MemberOut {
    node: usize,
    opened: bool,
    stayed: bool,
    drop_kind: Option<&'static str>,
    /// (sent_at, arrival) of each broadcast, in arrival order.
    got: Vec<(u64, u64)>,
    seq: SeqCheck,
    other: Counts,
}

async fn agent(ctx: Ctx, a: FanoutAgentArgs) -> Result<(), String> {
    let hist = SharedHist::default();
    let lat = SharedHist::default();
    let mut fleet: Fleet<MemberOut> = Fleet::new();
    let nn = ctx.nodes.len().max(1);
    for i in 0..a.members {
        let node = ((a.first + i) % nn as u64) as usize;
        let (ctx, hist, lat, room) = (ctx.clone(), hist.clone(), lat.clone(), a.room.clone());
        fleet.spawn(move |cue| async move {
            let mut out = MemberOut {
                node,
                ..Default::default()
            };
            let first = ctx.connect_to(node, Some(&room), &hist).await;
            let mut signal = cue.connected(first.as_ref());
            let Ok(mut c) = first else { return out };
            out.opened = true;
            let stopped = signal.stopped();
            tokio::pin!(stopped);
            let mut rec = lat.recorder();
            loop {
                tokio::select! {
                    biased;
                    m = client::recv_text(&mut c.ws) => {
                        let text = match m {
                            Err(f) => { out.drop_kind = Some(f.kind); break; }
                            Ok(t) => t,
                        };
                        let now = client::now_us();
                        match client::scan(&text) {
                            Scanned::Reply(d) if d.broadcast => {
                                out.seq.see(d.seq, d.from, d.sent_at);
                                let at = d.sent_at.unwrap_or(0);
                                rec.record(now.saturating_sub(at));
                                out.got.push((at, now));
                            }
                            _ => match client::parse(&text) {
                                Ok(m) if m.kind.as_deref() == Some("broadcast") => {
                                    out.seq.see(m.seq.unwrap_or(0), m.from.as_deref().unwrap_or(""), m.sent_at);
                                    let at = m.sent_at.unwrap_or(0);
                                    rec.record(now.saturating_sub(at));
                                    out.got.push((at, now));
                                }
                                Ok(m) => bump(&mut out.other, m.code.as_deref().or(m.kind.as_deref()).unwrap_or("unknown")),
                                Err(f) => bump(&mut out.other, f.kind),
                            },
                        }
                    }
                    _ = &mut stopped => { out.stayed = true; break }
                }
            }
            drop(rec);
            if out.stayed {
                let _ = client::close(c.ws, Duration::from_secs(5)).await;
            }
            out
        });
    }
    let c = fleet.connects().await;
    let opened = Opened {
        attempts: c.attempts,
        opened: c.opened,
        failures: c.failures,
        server: c.server,
        hist: hist.pairs(),
        first_failure: ctx.tally.first_reason(),
    };
    println!(
        "{}",
        serde_json::to_string(&opened).map_err(|e| e.to_string())?
    );
    // Hold until the conductor says so (a line) or goes away (EOF); at most a day.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = timeout(Duration::from_secs(86_400), stdin.next_line()).await;
    fleet.stop();
    let joined = fleet.join(Duration::from_secs(60)).await;
    let mut done = FanoutDone {
        per_node: vec![(0, 0); nn],
        all_finished: joined.all_finished,
        ..Default::default()
    };
    let mut arrivals: BTreeMap<(u64, usize), (u64, u64)> = BTreeMap::new();
    let mut views: HashMap<(u64, u64, u64), u64> = HashMap::new();
    for m in joined.outs.iter().filter(|m| m.opened) {
        done.per_node[m.node].0 += 1;
        done.seq_violations += m.seq.violations;
        done.seq_gaps += m.seq.gaps;
        merge(&mut done.other, &m.other);
        if !m.stayed {
            done.dropped += 1;
            bump(&mut done.drop_kinds, m.drop_kind.unwrap_or("unknown"));
            continue;
        }
        done.per_node[m.node].1 += 1;
        for &(at, now) in &m.got {
            let e = arrivals.entry((at, m.node)).or_default();
            e.0 += 1;
            e.1 = e.1.max(now);
        }
        if m.seq.count > 0 && m.seq.violations == 0 && m.seq.gaps == 0 {
            *views
                .entry((m.seq.first, m.seq.last, m.seq.digest))
                .or_default() += 1;
        }
    }
    done.arrivals = arrivals
        .into_iter()
        .map(|((at, node), (n, last))| (at, node, n, last))
        .collect();
    done.views = views
        .into_iter()
        .map(|((f, l, d), n)| (f, l, d, n))
        .collect();
    done.hist = lat.pairs();
    done.cpu_s = sys::self_cpu_seconds();
    done.peak_rss = sys::self_peak_rss();
    println!(
        "{}",
        serde_json::to_string(&done).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(quantile(&v, 0.5), Some(5));
        assert_eq!(quantile(&v, 0.99), Some(10));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.99), Some(7));
    }
}
