//! echo: closed-loop request/response on C connections (each sends its next echo when the last
//! came back), optionally closing and reconnecting every `--requests-per-conn` requests; req/s,
//! conn/s and round-trip latency.
//!
//! With `--rate R` it is open loop instead: R requests per second in all, spread over the
//! connections on a fixed schedule whatever the replies do, each request stamped (`sent_at`)
//! with the time it was *meant* to go, so latency includes any time it waited to be sent (no
//! coordinated omission) and a server that falls behind shows it. `--msg-bytes` sets the size
//! of a request on the wire (see `client::Template` for what fills it).
//!
//! The runner opens the connections before the window and gives go; each task then runs its loop
//! until the window's end, and this file sums what the tasks counted.

use std::time::{Duration, Instant};

use tokio::time::{sleep, sleep_until, timeout_at};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::client::{self, Fail, Scanned, Template};
use crate::report::{bump, merge, Counts, EchoStats, Report, SharedHist};
use crate::{secs, Common, Failure};

/// `echo`'s command line.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: u64,
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Close and reconnect after this many requests; 0 = never.
    #[arg(long, default_value_t = 0)]
    pub requests_per_conn: u64,
    /// Open loop: this many requests per second in all, on a fixed schedule, latency from
    /// each one's scheduled time; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bytes per request on the wire (past 4,096 characters of text, an ignored `pad` field
    /// fills it); 0 = a message with --text-len characters of text.
    #[arg(long, default_value_t = 0)]
    pub msg_bytes: usize,
    /// Open loop: longest wait after the window for outstanding replies.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
}

impl Load for EchoArgs {
    type Opts = EchoOpts;

    fn sockets(&self) -> u64 {
        self.connections
    }

    fn opts(self, _: &Common, _: usize) -> Result<EchoOpts, String> {
        if self.msg_bytes > 64 << 20 {
            return Err("--msg-bytes: at most 64 MiB".into());
        }
        if self.rate > 0.0 && self.requests_per_conn > 0 {
            return Err("--rate (open loop) and --requests-per-conn don't go together".into());
        }
        Ok(EchoOpts {
            connections: self.connections,
            duration: secs(self.duration_secs, "--duration-secs")?,
            requests_per_conn: (self.requests_per_conn > 0).then_some(self.requests_per_conn),
            rate: if self.rate.is_finite() {
                self.rate.max(0.0)
            } else {
                0.0
            },
            msg_bytes: self.msg_bytes,
            drain: secs(self.drain_secs, "--drain-secs")?,
        })
    }

    async fn run(ctx: Ctx, o: EchoOpts) -> Result<Option<Report>, Failure> {
        Ok(Some(echo(ctx, o).await))
    }
}

pub struct EchoOpts {
    pub connections: u64,
    pub duration: Duration,
    /// Requests per connection before closing and reconnecting; None = keep the connection.
    pub requests_per_conn: Option<u64>,
    /// Total requests per second, open loop; 0 = closed loop.
    pub rate: f64,
    /// Bytes per request on the wire; 0 = the `--text-len` message.
    pub msg_bytes: usize,
    /// Open loop: longest wait after the window for outstanding replies.
    pub drain: Duration,
}

/// Open loop: a connection with this many replies outstanding skips its next send (counted), so
/// a server that stops answering can't make ws-bench queue without bound.
const MAX_OUTSTANDING: u64 = 1000;

/// What one connection task counted in the window.
#[derive(Debug, Default)]
struct EchoOut {
    requests: u64,
    sent: u64,
    skipped: u64,
    missing: u64,
    sent_bytes: u64,
    recv_bytes: u64,
    /// Connects after the first (which the runner counts): attempts, successes, failures.
    reconnect_attempts: u64,
    reconnects: u64,
    reconnect_failures: Counts,
    errors: Counts,
}

fn template(ctx: &Ctx, o: &EchoOpts) -> Template {
    if o.msg_bytes > 0 {
        Template::sized("echo", o.msg_bytes)
    } else {
        Template::new("echo", &ctx.text, 0)
    }
}

async fn echo(ctx: Ctx, o: EchoOpts) -> Report {
    if o.rate > 0.0 {
        return open_loop(ctx, o).await;
    }
    let mut r = ctx.report("echo");
    r.connections = o.connections;
    r.requests_per_conn = o.requests_per_conn;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let mut fleet = Fleet::new();
    for _ in 0..o.connections {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        let per_conn = o.requests_per_conn;
        let tpl = template(&ctx, &o);
        fleet.spawn(move |cue| async move {
            let mut out = EchoOut::default();
            let first = ctx.connect(None, &conn_hist).await;
            let mut signal = cue.connected(first.as_ref());
            let Ok(first) = first else { return out };
            let Some(end) = signal.go().await else {
                return out;
            };
            let mut conn = Some(first);
            let mut on_this = 0u64;
            let mut rec = lat.recorder();
            let deadline = sleep_until(end.into());
            tokio::pin!(deadline);
            while Instant::now() < end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        out.reconnect_attempts += 1;
                        match timeout_at(end.into(), ctx.connect(None, &conn_hist)).await {
                            Err(_) => {
                                out.reconnect_attempts -= 1; // cut by the deadline, not a failure
                                break;
                            }
                            Ok(Ok(c)) => {
                                out.reconnects += 1;
                                on_this = 0;
                                conn.insert(c)
                            }
                            Ok(Err(f)) => {
                                bump(&mut out.reconnect_failures, f.kind);
                                sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                };
                let t = Instant::now();
                let ex = async {
                    client::send(&mut c.ws, tpl.at(client::now_us())).await?;
                    // Bounded: a reply is owed; anything else in between is counted and skipped.
                    for _ in 0..1000 {
                        let text = client::recv_text(&mut c.ws).await?;
                        if let Scanned::Reply(d) = client::scan(&text) {
                            if !d.broadcast {
                                return Ok(text.len());
                            }
                        }
                        let m = client::parse(&text)?;
                        match m.kind.as_deref() {
                            Some("echo") => return Ok(text.len()),
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
                    Ok(Ok(n)) => {
                        rec.record(t.elapsed().as_micros() as u64);
                        out.requests += 1;
                        out.sent += 1;
                        out.sent_bytes += tpl.len() as u64;
                        out.recv_bytes += n as u64;
                        on_this += 1;
                    }
                    Ok(Err(f)) => {
                        bump(&mut out.errors, f.kind);
                        conn = None;
                        continue;
                    }
                }
                if per_conn.is_some_and(|n| on_this >= n) {
                    if let Some(c) = conn.take() {
                        if let Err(f) = client::close(c.ws, Duration::from_secs(5)).await {
                            bump(&mut out.errors, f.kind);
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
    // The first connects are set-up, not part of the measured window: only reconnects count as
    // connections opened.
    ctx.tally.phase("connecting", None);
    fleet.connects().await.count_into(&mut r);
    ctx.tally.phase("echoing", Some(o.duration));
    let meter = Meter::start(&ctx).await;
    fleet.go(Instant::now() + o.duration);
    let joined = fleet.join(o.duration + Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64().min(wall.as_secs_f64());
    let mut e = EchoStats {
        msg_bytes: template(&ctx, &o).len() as u64,
        ..Default::default()
    };
    for out in &joined.outs {
        r.requests += out.requests;
        e.sent += out.sent;
        e.sent_bytes += out.sent_bytes;
        e.recv_bytes += out.recv_bytes;
        r.conns_opened += out.reconnects;
        r.connect_attempts += out.reconnect_attempts;
        merge(&mut r.connect_failures, &out.reconnect_failures);
        merge(&mut r.errors, &out.errors);
    }
    r.duration_s = d;
    r.req_per_s = Some(r.requests as f64 / d);
    if o.requests_per_conn.is_some() {
        r.conn_per_s = Some(r.conns_opened as f64 / d);
    }
    e.sent_mb_per_s = e.sent_bytes as f64 / d / 1e6;
    e.recv_mb_per_s = e.recv_bytes as f64 / d / 1e6;
    r.echo = Some(e);
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    if joined.outs.len() < o.connections as usize {
        r.notes.push(format!(
            "{} connection tasks did not finish in time",
            o.connections as usize - joined.outs.len()
        ));
    }
    r
}

/// Open loop: each connection sends on its own fixed schedule (its share of `--rate`), stamps
/// each request with its scheduled time, and reads replies as they come.
async fn open_loop(ctx: Ctx, o: EchoOpts) -> Report {
    let mut r = ctx.report("echo");
    r.connections = o.connections;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let per_conn_rate = o.rate / o.connections.max(1) as f64;
    let period = Duration::from_secs_f64(1.0 / per_conn_rate.max(1e-6));
    let mut fleet = Fleet::new();
    for i in 0..o.connections {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        let tpl = template(&ctx, &o);
        let drain = o.drain;
        fleet.spawn(move |cue| async move {
            let mut out = EchoOut::default();
            let first = ctx.connect(None, &conn_hist).await;
            let mut signal = cue.connected(first.as_ref());
            let Ok(mut c) = first else { return out };
            let Some(end) = signal.go().await else {
                return out;
            };
            // One clock for both ends of every measurement: scheduled instants are turned into
            // epoch microseconds from one pair of readings.
            let (i0, us0) = (Instant::now(), client::now_us());
            let to_us = |t: Instant| us0 + t.saturating_duration_since(i0).as_micros() as u64;
            let mut rec = lat.recorder();
            // Golden-ratio offsets spread the connections' schedules over one period.
            let start = Instant::now() + period.mul_f64((i as f64 * 0.618_034) % 1.0);
            let mut ticker = tokio::time::interval_at(start.into(), period);
            // Burst: a tick that could not go on time goes as soon as it can, with its own
            // scheduled time as `sent_at`, so the delay counts in its latency.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let drain_end = end + drain;
            let drain_deadline = sleep_until(drain_end.into());
            tokio::pin!(drain_deadline);
            let mut outstanding = 0u64;
            // Bounded by drain_end.
            loop {
                let sending = Instant::now() < end;
                if !sending && outstanding == 0 {
                    break;
                }
                tokio::select! {
                    biased;
                    m = client::recv_text(&mut c.ws) => {
                        let text = match m {
                            Err(f) => { bump(&mut out.errors, f.kind); break; }
                            Ok(t) => t,
                        };
                        match client::scan(&text) {
                            Scanned::Reply(d) if !d.broadcast => {
                                let now = client::now_us();
                                if let Some(s) = d.sent_at {
                                    rec.record(now.saturating_sub(s));
                                }
                                outstanding = outstanding.saturating_sub(1);
                                out.recv_bytes += text.len() as u64;
                                if now < to_us(end) {
                                    out.requests += 1;
                                }
                            }
                            _ => match client::parse(&text) {
                                Ok(m) if m.kind.as_deref() == Some("error") => {
                                    outstanding = outstanding.saturating_sub(1);
                                    bump(&mut out.errors, "server_error");
                                }
                                Ok(_) => {}
                                Err(f) => bump(&mut out.errors, f.kind),
                            },
                        }
                    }
                    t = ticker.tick(), if sending => {
                        if t.into_std() >= end {
                            continue;
                        }
                        if outstanding >= MAX_OUTSTANDING {
                            out.skipped += 1;
                            continue;
                        }
                        if let Err(f) = client::send(&mut c.ws, tpl.at(to_us(t.into_std()))).await {
                            bump(&mut out.errors, f.kind);
                            break;
                        }
                        outstanding += 1;
                        out.sent += 1;
                        out.sent_bytes += tpl.len() as u64;
                    }
                    _ = &mut drain_deadline => break,
                }
            }
            if outstanding > 0 {
                // Never answered within the drain: they count in latency at least as late as
                // the drain's end (a floor), and as missing.
                out.missing += outstanding;
                let late = client::now_us().saturating_sub(to_us(end));
                for _ in 0..outstanding.min(100_000) {
                    rec.record(late);
                }
            }
            drop(rec);
            let _ = client::close(c.ws, Duration::from_secs(2)).await;
            out
        });
    }
    ctx.tally.phase("connecting", None);
    fleet.connects().await.count_into(&mut r);
    ctx.tally
        .phase("echoing (open loop, then drain)", Some(o.duration));
    let meter = Meter::start(&ctx).await;
    fleet.go(Instant::now() + o.duration);
    let joined = fleet
        .join(o.duration + o.drain + Duration::from_secs(30))
        .await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64();
    let mut e = EchoStats {
        msg_bytes: template(&ctx, &o).len() as u64,
        rate: o.rate,
        ..Default::default()
    };
    for out in &joined.outs {
        r.requests += out.requests;
        e.sent += out.sent;
        e.skipped += out.skipped;
        e.missing += out.missing;
        e.sent_bytes += out.sent_bytes;
        e.recv_bytes += out.recv_bytes;
        merge(&mut r.errors, &out.errors);
    }
    r.duration_s = d;
    r.req_per_s = Some(r.requests as f64 / d);
    e.sent_mb_per_s = e.sent_bytes as f64 / d / 1e6;
    e.recv_mb_per_s = e.recv_bytes as f64 / d / 1e6;
    r.latency = lat.summary();
    r.connect_latency = conn_hist.summary();
    common_notes(&ctx, &mut r);
    r.notes.push(format!(
        "open loop: {:.0} req/s offered over {} connections; latency from each request's scheduled send time; CPU over {:.1} s",
        o.rate,
        o.connections,
        wall.as_secs_f64()
    ));
    if e.skipped > 0 || e.missing > 0 {
        r.notes.push(format!(
            "server fell behind: {} sends skipped ({MAX_OUTSTANDING} outstanding on a connection), {} replies missing after a {:.0} s drain",
            e.skipped,
            e.missing,
            o.drain.as_secs_f64()
        ));
    }
    r.echo = Some(e);
    r
}
