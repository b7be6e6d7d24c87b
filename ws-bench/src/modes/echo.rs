//! echo: closed-loop request/response on C connections (each sends its next echo when the last
//! came back), optionally closing and reconnecting every `--requests-per-conn` requests; req/s,
//! conn/s and round-trip latency.
//!
//! The runner opens the connections before the window and gives go; each task then runs its loop
//! until the window's end, and this file sums what the tasks counted.

use std::time::{Duration, Instant};

use tokio::time::{sleep, sleep_until, timeout_at};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::Ctx;
use crate::client::{self, Fail};
use crate::report::{bump, merge, Counts, Report, SharedHist};

pub struct EchoOpts {
    pub connections: u64,
    pub duration: Duration,
    /// Requests per connection before closing and reconnecting; None = keep the connection.
    pub requests_per_conn: Option<u64>,
}

/// What one connection task counted in the window.
#[derive(Debug, Default)]
struct EchoOut {
    requests: u64,
    /// Connects after the first (which the runner counts): attempts, successes, failures.
    reconnect_attempts: u64,
    reconnects: u64,
    reconnect_failures: Counts,
    errors: Counts,
}

pub async fn echo(ctx: Ctx, o: EchoOpts) -> Report {
    let mut r = ctx.report("echo");
    r.connections = o.connections;
    r.requests_per_conn = o.requests_per_conn;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    let mut fleet = Fleet::new();
    for _ in 0..o.connections {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        let per_conn = o.requests_per_conn;
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
            let msg = client::echo_msg(&ctx.text);
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
    fleet.connects().await.count_into(&mut r);
    let meter = Meter::start(&ctx.probe).await;
    fleet.go(Instant::now() + o.duration);
    let joined = fleet.join(o.duration + Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64().min(wall.as_secs_f64());
    for out in &joined.outs {
        r.requests += out.requests;
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
