//! The four load shapes: hold, echo, broadcast, sessions.
//!
//! Every connection is one tokio task. Tasks connect under a shared semaphore (so a storm never
//! exceeds `--connect-concurrency` handshakes in flight), tell the conductor how that went, then
//! wait for the phase to say go. Every loop ends by a deadline, and every wait has a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{self, Conn, Fail};
use crate::probe::{Cpu, Probe};
use crate::report::{bump, merge, BroadcastStats, Counts, HoldStats, Report, SharedHist};
use crate::sys::{self, CpuTimes};
use crate::target::Target;

/// What every mode needs.
#[derive(Clone)]
pub struct Ctx {
    pub target: Target,
    pub probe: Probe,
    pub cfg: WebSocketConfig,
    pub connect_timeout: Duration,
    pub connect_sem: Arc<Semaphore>,
    pub text: String,
    pub threads: usize,
    pub label: String,
}

impl Ctx {
    async fn connect(&self, room: Option<&str>, hist: &SharedHist) -> Result<Conn, Fail> {
        let _permit = self
            .connect_sem
            .acquire()
            .await
            .map_err(|_| Fail::new("internal", "semaphore closed"))?;
        let t = Instant::now();
        let c = client::connect(&self.target, room, self.cfg, self.connect_timeout).await?;
        hist.recorder().record(t.elapsed().as_micros() as u64);
        Ok(c)
    }

    fn report(&self, mode: &str) -> Report {
        Report {
            label: self.label.clone(),
            mode: mode.into(),
            url: self.target.ws_uri(None),
            client_threads: self.threads as u64,
            client_cores: sys::usable_cores() as u64,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Wait,
    Go(Instant),
    Stop,
}

async fn wait_go(rx: &mut watch::Receiver<Phase>) -> Option<Instant> {
    match rx.wait_for(|p| *p != Phase::Wait).await.map(|p| *p) {
        Ok(Phase::Go(end)) => Some(end),
        _ => None,
    }
}

/// CPU and RSS of both sides over a measured window.
struct Meter {
    t0: Instant,
    client0: CpuTimes,
    server0: Option<Cpu>,
    rss: crate::probe::RssWatch,
}

impl Meter {
    async fn start(probe: &Probe) -> Meter {
        Meter {
            t0: Instant::now(),
            client0: sys::proc_cpu(None).unwrap_or_default(),
            server0: probe.cpu().await,
            rss: probe.watch_rss(),
        }
    }

    async fn finish(self, ctx: &Ctx, r: &mut Report) -> Duration {
        let wall = self.t0.elapsed();
        let client = sys::proc_cpu(None).unwrap_or_default().since(self.client0);
        if let (Some(s1), Some(s0)) = (ctx.probe.cpu().await, self.server0) {
            match s1.since(s0) {
                Cpu::Split(t) => {
                    r.server_cpu_user_pct = Some(sys::pct(t.user, wall));
                    r.server_cpu_sys_pct = Some(sys::pct(t.sys, wall));
                }
                Cpu::Total(t) => r.server_cpu_total_pct = Some(sys::pct(t, wall)),
            }
        }
        r.server_max_rss = self.rss.finish(&ctx.probe).await;
        r.client_cpu_pct = sys::pct(client.user + client.sys, wall);
        r.client_peak_rss = sys::self_peak_rss();
        // Past 90% of the cores it may use, the client, not the server, may be what limits the run.
        let usable = ctx.threads.min(sys::usable_cores()).max(1) as f64;
        r.client_saturated = r.client_cpu_pct >= 90.0 * usable;
        wall
    }
}

/// Notes every mode shares: what the numbers can't say.
fn common_notes(ctx: &Ctx, r: &mut Report) {
    if r.client_saturated {
        r.notes.insert(
            0,
            format!(
                "CLIENT SATURATED ({:.0}% CPU on {} usable core(s)): throughput is a floor for the server, latency includes client queueing",
                r.client_cpu_pct,
                ctx.threads.min(sys::usable_cores())
            ),
        );
    }
    let failed = r.failed_handshakes();
    if failed > 0 {
        let kinds: Vec<String> = r
            .connect_failures
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        r.notes.push(format!(
            "{failed} of {} handshakes failed ({})",
            r.connect_attempts,
            kinds.join(", ")
        ));
    }
    let errs: u64 = r.errors.values().sum();
    if errs > 0 {
        let kinds: Vec<String> = r.errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
        r.notes.push(format!(
            "{errs} errors after connect ({})",
            kinds.join(", ")
        ));
    }
    if ctx.probe.is_blind() {
        r.notes
            .push("no --pid or --metrics-url: server RSS and CPU not measured".into());
    } else if ctx.probe.pid.is_none() {
        r.notes.push(
            "server figures from /metrics: CPU is user+system, RSS sampled every 500 ms".into(),
        );
    }
}

fn record_fail(counts: &mut Counts, f: &Fail) {
    bump(counts, f.kind);
}

// ----------------------------------------------------------------------------------------------
// hold

pub struct HoldOpts {
    pub connections: u64,
    pub rate: f64,
    pub hold: Duration,
    pub settle: Duration,
    pub exchange: bool,
}

pub async fn hold(ctx: Ctx, o: HoldOpts) -> Report {
    let mut r = ctx.report("hold");
    r.connections = o.connections;
    let rss_idle_before = ctx.probe.rss().await;
    let meter = Meter::start(&ctx.probe).await;
    let hist = SharedHist::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Result<String, Fail>>();
    let dropped = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..o.connections {
        if o.rate > 0.0 {
            sleep_until((t0 + Duration::from_secs_f64(i as f64 / o.rate)).into()).await;
        }
        let (ctx, hist, res_tx, mut phase_rx, dropped) = (
            ctx.clone(),
            hist.clone(),
            res_tx.clone(),
            phase_rx.clone(),
            dropped.clone(),
        );
        let exchange = o.exchange;
        tasks.spawn(async move {
            let mut conn = match ctx.connect(None, &hist).await {
                Ok(c) => c,
                Err(f) => {
                    let _ = res_tx.send(Err(f));
                    return;
                }
            };
            if exchange {
                // One small message each way, as a chat client would, so the server's write path
                // and buffers are in the figure too.
                let ex = async {
                    client::send(&mut conn.ws, client::echo_msg(&ctx.text)).await?;
                    client::recv_text(&mut conn.ws).await
                };
                if let Err(f) = tokio::time::timeout(ctx.connect_timeout, ex).await.unwrap_or_else(|_| Err(Fail::new("timeout", "no echo"))) {
                    let _ = res_tx.send(Err(f));
                    return;
                }
            }
            let _ = res_tx.send(Ok(conn.server.clone()));
            // The conductor counts results until every sender is gone: let go of ours now.
            drop(res_tx);
            // Hold: keep reading so the server's pings get their pongs, until told to stop.
            loop {
                tokio::select! {
                    ch = phase_rx.changed() => if ch.is_err() || *phase_rx.borrow() == Phase::Stop { break },
                    m = client::recv_text(&mut conn.ws) => if m.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    },
                }
            }
            let _ = client::close(conn.ws, Duration::from_secs(10)).await;
        });
    }
    drop(res_tx);
    let mut open = 0;
    while let Some(res) = res_rx.recv().await {
        r.connect_attempts += 1;
        match res {
            Ok(server) => {
                open += 1;
                r.server = server;
            }
            Err(f) => record_fail(&mut r.connect_failures, &f),
        }
    }
    let open_time = t0.elapsed();
    r.conns_opened = open;
    r.conn_per_s = Some(open as f64 / open_time.as_secs_f64().max(1e-9));
    sleep(o.hold).await;
    let rss_at_n = ctx.probe.rss().await;
    let server_connections_at_n = ctx.probe.metric("ws_connections").await;
    let _ = phase_tx.send(Phase::Stop);
    let closing = Instant::now();
    let all_closed = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    let close_time = closing.elapsed();
    r.duration_s = meter.finish(&ctx, &mut r).await.as_secs_f64();
    sleep(o.settle).await;
    let rss_idle_after = ctx.probe.rss().await;
    let server_connections_after = ctx.probe.metric("ws_connections").await;
    let bytes_per_conn = match (rss_at_n, rss_idle_before) {
        (Some(a), Some(b)) if open > 0 => Some((a as f64 - b as f64) / open as f64),
        _ => None,
    };
    r.latency = hist.summary();
    r.connect_latency = r.latency.clone();
    let d = dropped.load(Ordering::Relaxed);
    if d > 0 {
        r.errors.insert("dropped_while_held".into(), d);
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
    });
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "opened {open} in {:.1} s, held {:.0} s, closed in {:.1} s; latency = handshake+welcome; rss idle after = {:.0} s after the last close",
        open_time.as_secs_f64(),
        o.hold.as_secs_f64(),
        close_time.as_secs_f64(),
        o.settle.as_secs_f64()
    ));
    if let Some(peak) = r.client_peak_rss {
        let mib = peak as f64 / 1048576.0;
        r.notes
            .push(format!("ws-bench itself peaked at {mib:.0} MiB RSS"));
    }
    if !all_closed {
        r.notes
            .push("some connections did not finish closing within 60 s".into());
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

// ----------------------------------------------------------------------------------------------
// echo

pub struct EchoOpts {
    pub connections: u64,
    pub duration: Duration,
    /// Requests per connection before closing and reconnecting; None = keep the connection.
    pub requests_per_conn: Option<u64>,
}

#[derive(Default)]
struct TaskOut {
    requests: u64,
    reconnects: u64,
    connect_attempts: u64,
    connect_failures: Counts,
    errors: Counts,
    /// broadcast: messages sent, deliveries in the window, deliveries in total.
    sent: u64,
    deliveries: u64,
    delivered_total: u64,
    room: usize,
}

pub async fn echo(ctx: Ctx, o: EchoOpts) -> Report {
    let mut r = ctx.report("echo");
    r.connections = o.connections;
    r.requests_per_conn = o.requests_per_conn;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Result<String, Fail>>();
    let mut tasks = JoinSet::new();
    for _ in 0..o.connections {
        let (ctx, lat, conn_hist, res_tx, mut phase_rx) = (
            ctx.clone(),
            lat.clone(),
            conn_hist.clone(),
            res_tx.clone(),
            phase_rx.clone(),
        );
        let per_conn = o.requests_per_conn;
        tasks.spawn(async move {
            let mut out = TaskOut {
                connect_attempts: 1,
                ..Default::default()
            };
            let first = ctx.connect(None, &conn_hist).await;
            let _ = res_tx.send(
                first
                    .as_ref()
                    .map(|c| c.server.clone())
                    .map_err(|f| f.clone()),
            );
            drop(res_tx);
            let Ok(first) = first else { return out };
            let Some(end) = wait_go(&mut phase_rx).await else {
                return out;
            };
            let mut conn = Some(first);
            let mut on_this = 0u64;
            let mut rec = lat.recorder();
            let msg = client::echo_msg(&ctx.text);
            let deadline = sleep_until(end.into());
            tokio::pin!(deadline);
            while Instant::now() < end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        out.connect_attempts += 1;
                        match timeout_at(end.into(), ctx.connect(None, &conn_hist)).await {
                            Err(_) => {
                                out.connect_attempts -= 1; // cut by the deadline, not a failure
                                break;
                            }
                            Ok(Ok(c)) => {
                                out.reconnects += 1;
                                on_this = 0;
                                conn.insert(c)
                            }
                            Ok(Err(f)) => {
                                record_fail(&mut out.connect_failures, &f);
                                sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                };
                let t = Instant::now();
                let ex = async {
                    client::send(&mut c.ws, msg.clone()).await?;
                    // Bounded: a reply is owed; anything else in between is counted and skipped.
                    for _ in 0..1000 {
                        let text = client::recv_text(&mut c.ws).await?;
                        // Fast path: both servers write compact JSON, and our text is all `x`,
                        // so this can only be the echo. Anything else gets a full parse.
                        if text.contains(r#""type":"echo""#) {
                            return Ok(());
                        }
                        let m = client::parse(&text)?;
                        match m.kind.as_deref() {
                            Some("echo") => return Ok(()),
                            Some("error") => {
                                let (code, detail) = (
                                    m.code.as_deref().unwrap_or("?"),
                                    m.detail.as_deref().unwrap_or(""),
                                );
                                return Err(Fail::new("server_error", format!("{code}: {detail}")));
                            }
                            _ => continue,
                        }
                    }
                    Err(Fail::new("protocol", "no echo among 1000 messages"))
                };
                // One timer per task for the deadline, not one per request.
                let done = tokio::select! {
                    biased;
                    r = ex => Ok(r),
                    _ = &mut deadline => Err(()),
                };
                match done {
                    Err(()) => break,
                    Ok(Ok(())) => {
                        rec.record(t.elapsed().as_micros() as u64);
                        out.requests += 1;
                        on_this += 1;
                    }
                    Ok(Err(f)) => {
                        record_fail(&mut out.errors, &f);
                        conn = None;
                        continue;
                    }
                }
                if per_conn.is_some_and(|n| on_this >= n) {
                    if let Some(c) = conn.take() {
                        if let Err(f) = client::close(c.ws, Duration::from_secs(5)).await {
                            record_fail(&mut out.errors, &f);
                        }
                    }
                }
            }
            if let Some(c) = conn.take() {
                let _ = client::close(c.ws, Duration::from_secs(2)).await;
            }
            out
        });
    }
    drop(res_tx);
    collect_connects(&mut r, &mut res_rx).await;
    let meter = Meter::start(&ctx.probe).await;
    let _ = phase_tx.send(Phase::Go(Instant::now() + o.duration));
    let outs = join_all(&mut tasks, o.duration + Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64().min(wall.as_secs_f64());
    for out in &outs {
        r.requests += out.requests;
        r.conns_opened += out.reconnects;
        r.connect_attempts += out.connect_attempts - 1; // the first attempt was counted already
        merge(&mut r.connect_failures, &out.connect_failures);
        merge(&mut r.errors, &out.errors);
    }
    r.duration_s = d;
    r.req_per_s = Some(r.requests as f64 / d);
    if o.requests_per_conn.is_some() {
        r.conn_per_s = Some(r.conns_opened as f64 / d);
    }
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    if outs.len() < o.connections as usize {
        r.notes.push(format!(
            "{} connection tasks did not finish in time",
            o.connections as usize - outs.len()
        ));
    }
    r
}

/// The first connect of every task: counts attempts and failures, learns the server's name.
async fn collect_connects(r: &mut Report, rx: &mut mpsc::UnboundedReceiver<Result<String, Fail>>) {
    while let Some(res) = rx.recv().await {
        r.connect_attempts += 1;
        match res {
            Ok(server) => {
                r.conns_opened += 1;
                r.server = server;
            }
            Err(f) => record_fail(&mut r.connect_failures, &f),
        }
    }
    // Those were set-up connections, not part of the measured window.
    r.conns_opened = 0;
}

async fn join_all(tasks: &mut JoinSet<TaskOut>, limit: Duration) -> Vec<TaskOut> {
    let mut outs = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(o) = res {
                outs.push(o);
            }
        }
    })
    .await;
    tasks.abort_all();
    outs
}

// ----------------------------------------------------------------------------------------------
// broadcast

pub struct BroadcastOpts {
    pub connections: u64,
    pub rooms: u64,
    /// Messages per second per connection; 0 = closed loop (send the next when your own arrives).
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
}

pub async fn broadcast(ctx: Ctx, o: BroadcastOpts) -> Report {
    let mut r = ctx.report("broadcast");
    r.connections = o.connections;
    let rooms = o.rooms.max(1) as usize;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Result<String, Fail>>();
    let mut members = vec![0u64; rooms];
    let (room_tx, mut room_rx) = mpsc::unbounded_channel::<usize>();
    // Live totals, so the drain can end as soon as every owed delivery has arrived.
    let sent_per_room: Arc<Vec<AtomicU64>> =
        Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..o.connections as usize {
        let (ctx, lat, conn_hist, res_tx, room_tx, mut phase_rx) = (
            ctx.clone(),
            lat.clone(),
            conn_hist.clone(),
            res_tx.clone(),
            room_tx.clone(),
            phase_rx.clone(),
        );
        let (sent_per_room, delivered) = (sent_per_room.clone(), delivered.clone());
        let room = i % rooms;
        let (rate, drain) = (o.rate, o.drain);
        tasks.spawn(async move {
            let mut out = TaskOut {
                room,
                ..Default::default()
            };
            let name = format!("bench-{room}");
            let first = ctx.connect(Some(&name), &conn_hist).await;
            if first.is_ok() {
                let _ = room_tx.send(room);
            }
            let _ = res_tx.send(
                first
                    .as_ref()
                    .map(|c| c.server.clone())
                    .map_err(|f| f.clone()),
            );
            drop((res_tx, room_tx));
            let Ok(mut c) = first else { return out };
            let Some(end) = wait_go(&mut phase_rx).await else {
                return out;
            };
            let drain_end = end + drain;
            let drain_deadline = sleep_until(drain_end.into());
            tokio::pin!(drain_deadline);
            let mut rec = lat.recorder();
            let mut last_seq = 0u64;
            let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
            // Paced senders start spread over one period (golden-ratio offsets), so a thousand
            // connections don't all fire in the same millisecond.
            let first = match period {
                Some(p) => Instant::now() + p.mul_f64((i as f64 * 0.618_034) % 1.0),
                None => Instant::now() + Duration::from_secs(3600),
            };
            let every = period.unwrap_or(Duration::from_secs(3600));
            let mut ticker = tokio::time::interval_at(first.into(), every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if period.is_none() {
                sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                out.sent += 1;
                if let Err(f) = send_bcast(&mut c, &ctx.text, 0).await {
                    record_fail(&mut out.errors, &f);
                    return out;
                }
            }
            // Bounded by drain_end: every await below is cut off there.
            loop {
                // Everyone drains until drain_end: a task that left early would lose messages still
                // in flight to it and they would show up as missing deliveries.
                let now = Instant::now();
                if now >= drain_end {
                    break;
                }
                tokio::select! {
                    _ = ticker.tick(), if period.is_some() && now < end => {
                        if Instant::now() >= end {
                            continue;
                        }
                        // Counted before the send, so the conductor's drain never misses it.
                        sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                        out.sent += 1;
                        if let Err(f) = send_bcast(&mut c, &ctx.text, out.sent - 1).await {
                            record_fail(&mut out.errors, &f);
                            break;
                        }
                    }
                    _ = &mut drain_deadline => break,
                    ch = phase_rx.changed() => if ch.is_err() || *phase_rx.borrow() == Phase::Stop { break },
                    m = client::recv_text(&mut c.ws) => {
                        let text = match m {
                            Err(f) => { record_fail(&mut out.errors, &f); break; }
                            Ok(t) => t,
                        };
                        let m = match client::parse(&text) {
                            Ok(m) => m,
                            Err(f) => { record_fail(&mut out.errors, &f); continue; }
                        };
                        match m.kind.as_deref() {
                            Some("broadcast") => {
                                let at = Instant::now();
                                if let Some(s) = m.sent_at {
                                    rec.record(client::now_us().saturating_sub(s));
                                }
                                if let Some(seq) = m.seq {
                                    if seq <= last_seq {
                                        bump(&mut out.errors, "seq_out_of_order");
                                    }
                                    last_seq = seq;
                                }
                                out.delivered_total += 1;
                                delivered.fetch_add(1, Ordering::Relaxed);
                                if at < end {
                                    out.deliveries += 1;
                                }
                                let own = m.from.as_deref() == Some(c.conn_id.as_str());
                                if period.is_none() && own && Instant::now() < end {
                                    sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                                    out.sent += 1;
                                    if let Err(f) = send_bcast(&mut c, &ctx.text, out.sent - 1).await {
                                        record_fail(&mut out.errors, &f);
                                        break;
                                    }
                                }
                            }
                            Some("error") => bump(&mut out.errors, "server_error"),
                            _ => {}
                        }
                    }
                }
            }
            let _ = client::close(c.ws, Duration::from_secs(2)).await;
            out
        });
    }
    drop((res_tx, room_tx));
    collect_connects(&mut r, &mut res_rx).await;
    while let Some(room) = room_rx.recv().await {
        members[room] += 1;
    }
    let meter = Meter::start(&ctx.probe).await;
    let end = Instant::now() + o.duration;
    let _ = phase_tx.send(Phase::Go(end));
    // A little past the end, so sends that began just before it have been counted.
    sleep_until((end + Duration::from_millis(50)).into()).await;
    // Drain: until every delivery owed for what was sent has arrived, or --drain-secs is up.
    let drain_end = end + o.drain;
    let owed = |members: &[u64]| -> u64 {
        sent_per_room
            .iter()
            .zip(members)
            .map(|(s, m)| s.load(Ordering::Relaxed) * m)
            .sum()
    };
    while Instant::now() < drain_end && delivered.load(Ordering::Relaxed) < owed(&members) {
        sleep(Duration::from_millis(20)).await;
    }
    let drained_in = end.elapsed();
    let _ = phase_tx.send(Phase::Stop);
    let outs = join_all(&mut tasks, Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64();
    let mut b = BroadcastStats {
        rooms: rooms as u64,
        rate_per_conn: o.rate,
        ..Default::default()
    };
    for out in &outs {
        b.sent += out.sent;
        b.deliveries += out.deliveries;
        b.delivered_total += out.delivered_total;
        b.expected += out.sent * members[out.room];
        merge(&mut r.errors, &out.errors);
    }
    b.sent_per_s = b.sent as f64 / d;
    b.deliveries_per_s = b.deliveries as f64 / d;
    r.requests = b.sent;
    r.req_per_s = Some(b.sent_per_s);
    r.duration_s = d;
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    let how = if o.rate > 0.0 {
        format!("{} msg/s per connection", o.rate)
    } else {
        "closed loop (next send when own message returns)".into()
    };
    r.notes.push(format!(
        "{rooms} rooms, {how}; req/s = sends/s; latency = fan-out, sent_at to receipt; \
         sends for {:.0} s, drained in {:.1} s, CPU over {:.1} s",
        o.duration.as_secs_f64(),
        drained_in.as_secs_f64(),
        wall.as_secs_f64()
    ));
    if o.rate > 0.0 {
        let offered = o.rate * r.conns_opened_or(o.connections) as f64;
        if b.sent_per_s < 0.9 * offered {
            r.notes.push(format!("offered {offered:.0} sends/s but only {:.0} went out: server or client could not keep up", b.sent_per_s));
        }
    }
    if b.expected > 0 && b.delivered_total < b.expected {
        r.notes.push(format!(
            "{} of {} deliveries missing after a {:.0} s drain",
            b.expected - b.delivered_total,
            b.expected,
            o.drain.as_secs_f64()
        ));
    }
    r.broadcast = Some(b);
    r
}

async fn send_bcast(c: &mut Conn, text: &str, n: u64) -> Result<(), Fail> {
    client::send(
        &mut c.ws,
        client::broadcast_msg(text, &n.to_string(), client::now_us()),
    )
    .await
}

impl Report {
    fn conns_opened_or(&self, n: u64) -> u64 {
        let failed = self.failed_handshakes();
        n.saturating_sub(failed)
    }
}

// ----------------------------------------------------------------------------------------------
// sessions

pub struct SessionOpts {
    pub workers: u64,
    pub duration: Duration,
}

pub async fn sessions(ctx: Ctx, o: SessionOpts) -> Report {
    let mut r = ctx.report("sessions");
    r.connections = o.workers;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let meter = Meter::start(&ctx.probe).await;
    let end = Instant::now() + o.duration;
    let mut tasks = JoinSet::new();
    for w in 0..o.workers {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        tasks.spawn(async move {
            let mut out = TaskOut::default();
            let mut rec = lat.recorder();
            // Each worker's own room: it is created on connect and gone on close, every session.
            let room = format!("bench-s-{w}");
            let mut server = String::new();
            while Instant::now() < end {
                let t = Instant::now();
                out.connect_attempts += 1;
                let session = async {
                    let mut c = ctx
                        .connect(Some(&room), &conn_hist)
                        .await
                        .map_err(|f| (true, f))?;
                    server = c.server.clone();
                    client::send(
                        &mut c.ws,
                        client::broadcast_msg(&ctx.text, "s", client::now_us()),
                    )
                    .await
                    .map_err(|f| (false, f))?;
                    for _ in 0..1000 {
                        let text = client::recv_text(&mut c.ws).await.map_err(|f| (false, f))?;
                        let m = client::parse(&text).map_err(|f| (false, f))?;
                        let own = m.from.as_deref() == Some(c.conn_id.as_str())
                            && m.reference.as_deref() == Some("s");
                        if m.kind.as_deref() == Some("broadcast") && own {
                            return match client::close(c.ws, ctx.connect_timeout).await {
                                Ok(true) => Ok(()),
                                Ok(false) => {
                                    Err((false, Fail::new("unclean_close", "no close handshake")))
                                }
                                Err(f) => Err((false, f)),
                            };
                        }
                    }
                    Err((false, Fail::new("protocol", "own message never came back")))
                };
                match timeout_at(end.into(), session).await {
                    Err(_) => {
                        out.connect_attempts -= 1; // cut by the deadline: neither success nor failure
                        break;
                    }
                    Ok(Ok(())) => {
                        rec.record(t.elapsed().as_micros() as u64);
                        out.requests += 1;
                    }
                    Ok(Err((during_connect, f))) => {
                        if during_connect {
                            record_fail(&mut out.connect_failures, &f);
                        } else {
                            record_fail(&mut out.errors, &f);
                        }
                        // Don't spin on a server that refuses: a short pause per failure.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out.errors.entry(format!("server:{server}")).or_default();
            out
        });
    }
    let outs = join_all(&mut tasks, o.duration + Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64().min(wall.as_secs_f64());
    for out in &outs {
        r.requests += out.requests;
        r.connect_attempts += out.connect_attempts;
        merge(&mut r.connect_failures, &out.connect_failures);
        for (k, v) in &out.errors {
            match k.strip_prefix("server:") {
                Some(s) if !s.is_empty() => r.server = s.to_string(),
                Some(_) => {}
                None => *r.errors.entry(k.clone()).or_default() += v,
            }
        }
    }
    r.conns_opened = r.requests;
    r.duration_s = d;
    r.conn_per_s = Some(r.requests as f64 / d);
    r.req_per_s = Some(r.requests as f64 / d);
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "{} workers; a session = connect, broadcast in own room, receive it, close; req/s = conn/s = sessions/s; latency = whole session",
        o.workers
    ));
    r
}
