//! broadcast: C connections spread over R rooms, each sending broadcasts, closed loop (the next
//! when its own comes back) or paced at `--rate`; deliveries/s and fan-out latency (`sent_at` to
//! receipt), then a drain until every owed delivery has arrived.
//!
//! The runner opens the connections (which tells this file how many members each room has),
//! gives go and stop; this file runs the send/receive loop and checks deliveries against
//! what was owed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::{sleep, sleep_until};

use super::meter::{common_notes, Meter};
use super::runner::Fleet;
use super::Ctx;
use crate::client::{self, Conn, Fail};
use crate::report::{bump, merge, BroadcastStats, Counts, Report, SharedHist};

pub struct BroadcastOpts {
    pub connections: u64,
    pub rooms: u64,
    /// Messages per second per connection; 0 = closed loop (send the next when your own arrives).
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
}

/// What one connection task counted.
#[derive(Debug, Default)]
struct BroadcastOut {
    room: usize,
    /// Broadcasts it sent in the window.
    sent: u64,
    /// Broadcasts it received within the window, and in the window and drain together.
    deliveries: u64,
    delivered_total: u64,
    errors: Counts,
}

pub async fn broadcast(ctx: Ctx, o: BroadcastOpts) -> Report {
    let mut r = ctx.report("broadcast");
    r.connections = o.connections;
    let rooms = o.rooms.max(1) as usize;
    let lat = SharedHist::default();
    let conn_hist = SharedHist::default();
    // Live totals, so the drain can end as soon as every owed delivery has arrived.
    let sent_per_room: Arc<Vec<AtomicU64>> =
        Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut fleet = Fleet::new();
    for i in 0..o.connections as usize {
        let (ctx, lat, conn_hist) = (ctx.clone(), lat.clone(), conn_hist.clone());
        let (sent_per_room, delivered) = (sent_per_room.clone(), delivered.clone());
        let room = i % rooms;
        let (rate, drain) = (o.rate, o.drain);
        fleet.spawn(move |cue| async move {
            let mut out = BroadcastOut {
                room,
                ..Default::default()
            };
            let name = format!("bench-{room}");
            let first = ctx.connect(Some(&name), &conn_hist).await;
            let mut signal = cue.connected(first.as_ref());
            let Ok(mut c) = first else { return out };
            let Some(end) = signal.go().await else {
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
                    bump(&mut out.errors, f.kind);
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
                            bump(&mut out.errors, f.kind);
                            break;
                        }
                    }
                    _ = &mut drain_deadline => break,
                    _ = signal.stopped() => break,
                    m = client::recv_text(&mut c.ws) => {
                        let text = match m {
                            Err(f) => { bump(&mut out.errors, f.kind); break; }
                            Ok(t) => t,
                        };
                        let m = match client::parse(&text) {
                            Ok(m) => m,
                            Err(f) => { bump(&mut out.errors, f.kind); continue; }
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
                                        bump(&mut out.errors, f.kind);
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
    // The first connects are set-up, not part of the measured window; they also tell each room's
    // size, which is what every send is owed.
    let connects = fleet.connects().await;
    connects.count_into(&mut r);
    let mut members = vec![0u64; rooms];
    for (i, &opened) in connects.opened_by_task.iter().enumerate() {
        if opened {
            members[i % rooms] += 1;
        }
    }
    let meter = Meter::start(&ctx.probe).await;
    let end = Instant::now() + o.duration;
    fleet.go(end);
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
    fleet.stop();
    let joined = fleet.join(Duration::from_secs(30)).await;
    let wall = meter.finish(&ctx, &mut r).await;
    let d = o.duration.as_secs_f64();
    let mut b = BroadcastStats {
        rooms: rooms as u64,
        rate_per_conn: o.rate,
        ..Default::default()
    };
    for out in &joined.outs {
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
        let offered = o.rate * o.connections.saturating_sub(r.failed_handshakes()) as f64;
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
