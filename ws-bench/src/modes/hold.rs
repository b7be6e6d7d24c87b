//! hold: open N connections (a storm, or at `--rate`), exchange one echo on each, hold them all,
//! then close them; the server's RSS idle before, at N and idle after says what a connection
//! costs it and whether that memory comes back.
//!
//! The runner opens, stops and joins the connections; this file keeps them alive while held and
//! takes the memory readings around them.

use std::time::{Duration, Instant};

use tokio::time::{sleep, sleep_until};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::Ctx;
use crate::client::{self, Fail};
use crate::report::{HoldStats, Report, SharedHist};

pub struct HoldOpts {
    pub connections: u64,
    /// New connections per second; 0 = a storm.
    pub rate: f64,
    pub hold: Duration,
    pub settle: Duration,
    /// Exchange one echo per connection after the welcome.
    pub exchange: bool,
}

/// How one connection task ended.
#[derive(Debug, PartialEq)]
enum Held {
    /// Its connect or its echo failed (counted as a failed handshake).
    NotOpened,
    /// The server ended it while it was held.
    Dropped,
    /// Held until told to stop, then closed.
    Closed,
}

pub async fn hold(ctx: Ctx, o: HoldOpts) -> Report {
    let mut r = ctx.report("hold");
    r.connections = o.connections;
    let rss_idle_before = ctx.probe.rss().await;
    let meter = Meter::start(&ctx.probe).await;
    let hist = SharedHist::default();
    let mut fleet = Fleet::new();
    let t0 = Instant::now();
    for i in 0..o.connections {
        if o.rate > 0.0 {
            sleep_until((t0 + Duration::from_secs_f64(i as f64 / o.rate)).into()).await;
        }
        let (ctx, hist) = (ctx.clone(), hist.clone());
        let exchange = o.exchange;
        fleet.spawn(move |cue| async move {
            let mut conn = match ctx.connect(None, &hist).await {
                Ok(c) => c,
                Err(f) => {
                    cue.connected(Err(&f));
                    return Held::NotOpened;
                }
            };
            if exchange {
                // One small message each way, as a chat client would, so the server's write path
                // and buffers are in the figure too.
                let ex = async {
                    client::send(&mut conn.ws, client::echo_msg(&ctx.text)).await?;
                    client::recv_text(&mut conn.ws).await
                };
                if let Err(f) = tokio::time::timeout(ctx.connect_timeout, ex)
                    .await
                    .unwrap_or_else(|_| Err(Fail::new("timeout", "no echo")))
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
            let _ = client::close(conn.ws, Duration::from_secs(10)).await;
            Held::Closed
        });
    }
    let connects = fleet.connects().await;
    connects.count_into(&mut r);
    let open = connects.opened;
    let open_time = t0.elapsed();
    // Here the opened connections are the run itself, not set-up.
    r.conns_opened = open;
    r.conn_per_s = Some(open as f64 / open_time.as_secs_f64().max(1e-9));
    sleep(o.hold).await;
    let rss_at_n = ctx.probe.rss().await;
    let server_connections_at_n = ctx.probe.metric("ws_connections").await;
    fleet.stop();
    let closing = Instant::now();
    let joined = fleet.join(Duration::from_secs(60)).await;
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
    let dropped = joined.outs.iter().filter(|h| **h == Held::Dropped).count() as u64;
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
    if !joined.all_finished {
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
