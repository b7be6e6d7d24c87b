//! broadcast: C connections spread over R rooms, each sending broadcasts, closed loop (the next
//! when its own comes back) or paced at `--rate`; deliveries/s and fan-out latency (`sent_at` to
//! receipt), then a drain until every owed delivery has arrived. Paced sends are stamped with
//! their scheduled time, so latency includes any wait to be sent (no coordinated omission); each
//! sender's own broadcasts coming back give the round trip (the capacity sweep's figure); the
//! server's `ws_broadcast_duration_seconds` is scraped before and after, for its side of the story.
//!
//! A receiver reads only `type`, `from`, `seq` and `sent_at` of each delivery (`client::scan`),
//! not the whole object: this loop is where ws-bench spends its CPU when the server is fast.
//!
//! The runner opens the connections (which tells this file how many members each room has),
//! gives go and stop; this file runs the send/receive loop; `reach.rs` checks deliveries against
//! what was owed and the order of every member's `seq`.
//!
//! With several nodes (`--url` repeated), the k-th member of each room connects to node k mod
//! nodes, so every room has members on every node (round-robin over all connections would put a
//! room on one node whenever rooms and nodes share a factor).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::{sleep, sleep_until};

use super::meter::{common_notes, Meter};
use super::reach::{self, Member, SeqCheck};
use super::runner::Fleet;
use super::{Ctx, Load};
use crate::client::{self, Delivery, Scanned, Template};
use crate::probe::PromHist;
use crate::report::{bump, merge, BroadcastStats, Counts, Report, ServerTimer, SharedHist};
use crate::{secs, Common, Failure};

/// Paced: a sender with this many of its own broadcasts not yet back skips its next send
/// (counted), so a server that falls far behind can't make ws-bench queue without bound.
const MAX_OUTSTANDING: u64 = 1000;

/// `broadcast`'s command line.
#[derive(clap::Args, Debug)]
pub struct BroadcastArgs {
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: u64,
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Broadcasts per second per connection; 0 = closed loop (next when your own returns).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Longest wait after the last send for every owed delivery to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
}

impl Load for BroadcastArgs {
    type Opts = BroadcastOpts;

    fn sockets(&self) -> u64 {
        self.connections
    }

    /// Receivers read many small frames at a time.
    fn read_buffer(&self) -> usize {
        16 * 1024
    }

    fn opts(self, _: &Common, _: usize) -> Result<BroadcastOpts, String> {
        Ok(BroadcastOpts {
            connections: self.connections,
            rooms: self.rooms,
            rate: self.rate.max(0.0),
            duration: secs(self.duration_secs, "--duration-secs")?,
            drain: secs(self.drain_secs, "--drain-secs")?,
        })
    }

    async fn run(ctx: Ctx, o: BroadcastOpts) -> Result<Option<Report>, Failure> {
        Ok(Some(broadcast(ctx, o).await))
    }
}

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
    node: usize,
    /// Its first connect succeeded: it is one of its room's members.
    opened: bool,
    /// Stayed connected until stop or the drain's end (not cut off by an error).
    stayed: bool,
    seq: SeqCheck,
    /// Broadcasts it sent in the window.
    sent: u64,
    /// Broadcasts it received within the window, and in the window and drain together.
    deliveries: u64,
    delivered_total: u64,
    skipped: u64,
    errors: Counts,
}

async fn broadcast(ctx: Ctx, o: BroadcastOpts) -> Report {
    let mut r = ctx.report("broadcast");
    r.connections = o.connections;
    let rooms = o.rooms.max(1) as usize;
    let lat = SharedHist::default();
    let own = SharedHist::default();
    let conn_hist = SharedHist::default();
    // Live totals, so the drain can end as soon as every owed delivery has arrived.
    let sent_per_room: Arc<Vec<AtomicU64>> =
        Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let tpl = Template::new("broadcast", &ctx.text, 0);
    let mut fleet = Fleet::new();
    for i in 0..o.connections as usize {
        let (ctx, lat, own, conn_hist) = (ctx.clone(), lat.clone(), own.clone(), conn_hist.clone());
        let (sent_per_room, delivered) = (sent_per_room.clone(), delivered.clone());
        let tpl = tpl.clone();
        let room = i % rooms;
        // This member's place in its room picks its node: each room spans every node.
        let node = (i / rooms) % ctx.nodes.len();
        let (rate, drain) = (o.rate, o.drain);
        fleet.spawn(move |cue| async move {
            let mut out = BroadcastOut {
                room,
                node,
                ..Default::default()
            };
            let name = format!("bench-{room}");
            let first = ctx.connect_to(node, Some(&name), &conn_hist).await;
            let mut signal = cue.connected(first.as_ref());
            let Ok(mut c) = first else { return out };
            out.opened = true;
            let Some(end) = signal.go().await else {
                return out;
            };
            // One clock for both ends of every measurement: scheduled instants are turned into
            // epoch microseconds from one pair of readings.
            let (i0, us0) = (Instant::now(), client::now_us());
            let to_us = |t: Instant| us0 + t.saturating_duration_since(i0).as_micros() as u64;
            let end_us = to_us(end);
            let drain_end = end + drain;
            let drain_deadline = sleep_until(drain_end.into());
            tokio::pin!(drain_deadline);
            // Made once, not once per message: a stop future re-armed on every delivery cost a
            // lock and a waiter registration each time.
            let stopped = signal.stopped();
            tokio::pin!(stopped);
            let mut rec = lat.recorder();
            let mut own_rec = own.recorder();
            let mut outstanding = 0u64;
            let paced = rate > 0.0;
            let every = if paced {
                Duration::from_secs_f64(1.0 / rate)
            } else {
                Duration::from_secs(3600)
            };
            // Paced senders start spread over one period (golden-ratio offsets), so a thousand
            // connections don't all fire in the same millisecond.
            let first = Instant::now() + every.mul_f64((i as f64 * 0.618_034) % 1.0);
            let mut ticker = tokio::time::interval_at(first.into(), every);
            // Burst: a tick that could not go on time goes as soon as it can, stamped with its
            // scheduled time, so the wait counts in its latency (no coordinated omission).
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            if !paced {
                sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                out.sent += 1;
                outstanding += 1;
                if let Err(f) = client::send(&mut c.ws, tpl.at(client::now_us())).await {
                    bump(&mut out.errors, f.kind);
                    return out;
                }
            }
            // Bounded by drain_end: every await below is cut off there.
            loop {
                tokio::select! {
                    biased;
                    m = client::recv_text(&mut c.ws) => {
                        let text = match m {
                            Err(f) => { bump(&mut out.errors, f.kind); break; }
                            Ok(t) => t,
                        };
                        let d = match client::scan(&text) {
                            Scanned::Reply(d) if d.broadcast => d,
                            _ => match client::parse(&text) {
                                Ok(m) if m.kind.as_deref() == Some("error") => {
                                    bump(&mut out.errors, "server_error");
                                    continue;
                                }
                                Ok(m) if m.kind.as_deref() == Some("broadcast") => Delivery {
                                    broadcast: true,
                                    from: "",
                                    seq: m.seq.unwrap_or(0),
                                    sent_at: m.sent_at,
                                },
                                Ok(_) => continue,
                                Err(f) => { bump(&mut out.errors, f.kind); continue; }
                            },
                        };
                        let now = client::now_us();
                        let mine = d.from == c.conn_id;
                        if let Some(s) = d.sent_at {
                            rec.record(now.saturating_sub(s));
                            if mine {
                                own_rec.record(now.saturating_sub(s));
                            }
                        }
                        let before = out.seq.violations;
                        out.seq.see(d.seq, d.from, d.sent_at);
                        if out.seq.violations > before {
                            bump(&mut out.errors, "seq_out_of_order");
                        }
                        out.delivered_total += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                        if now < end_us {
                            out.deliveries += 1;
                        }
                        if mine {
                            outstanding = outstanding.saturating_sub(1);
                            if !paced && now < end_us {
                                sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                                out.sent += 1;
                                outstanding += 1;
                                if let Err(f) = client::send(&mut c.ws, tpl.at(now)).await {
                                    bump(&mut out.errors, f.kind);
                                    break;
                                }
                            }
                        }
                    }
                    t = ticker.tick(), if paced && Instant::now() < end => {
                        let t = t.into_std();
                        if t >= end {
                            continue;
                        }
                        if outstanding >= MAX_OUTSTANDING {
                            out.skipped += 1;
                            continue;
                        }
                        // Counted before the send, so the conductor's drain never misses it.
                        sent_per_room[room].fetch_add(1, Ordering::Relaxed);
                        out.sent += 1;
                        outstanding += 1;
                        if let Err(f) = client::send(&mut c.ws, tpl.at(to_us(t))).await {
                            bump(&mut out.errors, f.kind);
                            break;
                        }
                    }
                    // Everyone stays until told to stop or drain_end: a task that left early would
                    // lose messages still in flight to it, and they would count as missing.
                    _ = &mut drain_deadline => { out.stayed = true; break }
                    _ = &mut stopped => { out.stayed = true; break }
                }
            }
            drop((rec, own_rec));
            let _ = client::close(c.ws, Duration::from_secs(2)).await;
            out
        });
    }
    // The first connects are set-up, not part of the measured window; they also tell each room's
    // size, which is what every send is owed.
    ctx.tally.phase("connecting", None);
    let connects = fleet.connects().await;
    connects.count_into(&mut r);
    let mut members = vec![0u64; rooms];
    for (i, &opened) in connects.opened_by_task.iter().enumerate() {
        if opened {
            members[i % rooms] += 1;
        }
    }
    let fanout0 = nodes_histogram(&ctx, "ws_broadcast_duration_seconds").await;
    let publish0 = nodes_histogram(&ctx, "ws_broker_publish_duration_seconds").await;
    let meter = Meter::start(&ctx).await;
    let end = Instant::now() + o.duration;
    ctx.tally.phase("broadcasting", Some(o.duration));
    fleet.go(end);
    // A little past the end, so sends that began just before it have been counted.
    sleep_until((end + Duration::from_millis(50)).into()).await;
    // Drain: until every delivery owed for what was sent has arrived, or --drain-secs is up.
    let drain_end = end + o.drain;
    ctx.tally.phase("draining (at most)", Some(o.drain));
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
    let fanout1 = nodes_histogram(&ctx, "ws_broadcast_duration_seconds").await;
    let publish1 = nodes_histogram(&ctx, "ws_broker_publish_duration_seconds").await;
    let d = o.duration.as_secs_f64();
    let mut b = BroadcastStats {
        rooms: rooms as u64,
        rate_per_conn: o.rate,
        members: members.iter().copied().max().unwrap_or(0),
        own_rtt: own.summary(),
        server_fanout: timer(fanout1, fanout0),
        broker_publish: timer(publish1, publish0).filter(|t| t.count > 0.0),
        ..Default::default()
    };
    let mut room_sent = vec![0u64; rooms];
    for out in &joined.outs {
        room_sent[out.room] += out.sent;
    }
    let ms: Vec<Member> = joined
        .outs
        .iter()
        .map(|out| Member {
            room: out.room,
            node: out.node,
            opened: out.opened,
            stayed: out.stayed,
            received: out.delivered_total,
            seq: out.seq.clone(),
        })
        .collect();
    reach::reckon(
        &ms.iter().collect::<Vec<_>>(),
        &room_sent,
        &mut b,
        &mut r.nodes,
    );
    for out in &joined.outs {
        b.sent += out.sent;
        b.deliveries += out.deliveries;
        b.delivered_total += out.delivered_total;
        b.skipped += out.skipped;
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
    if b.skipped > 0 {
        r.notes.push(format!(
            "server fell behind: {} sends skipped ({MAX_OUTSTANDING} of a sender's own broadcasts outstanding)",
            b.skipped
        ));
    }
    if o.rate > 0.0 {
        let offered = o.rate * o.connections.saturating_sub(r.failed_handshakes()) as f64;
        if b.sent_per_s < 0.9 * offered {
            r.notes.push(format!("offered {offered:.0} sends/s but only {:.0} went out: server or client could not keep up", b.sent_per_s));
        }
    }
    if let Some(why) = b.reach_failure() {
        // Loud, first: a run whose broadcasts did not reach every member measured something else.
        let per_node: Vec<String> = r
            .nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                format!(
                    "node {}{} ({}) {}",
                    k + 1,
                    n.node_id
                        .as_deref()
                        .map_or(String::new(), |id| format!(" {id}")),
                    n.url,
                    n.reach_pct().map_or("-".into(), |p| format!("{p:.1}%"))
                )
            })
            .collect();
        r.notes.insert(
            0,
            format!(
                "⚠ {why}: broadcasts did not reach every member once, in one order; per node: {}",
                per_node.join(", ")
            ),
        );
    }
    if b.members_dropped > 0 {
        r.notes.push(format!(
            "{} members' connections ended during the run: they count in no reach",
            b.members_dropped
        ));
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

/// A histogram family summed over every node's `/metrics` (`None` if no node has a metrics URL).
async fn nodes_histogram(ctx: &Ctx, name: &str) -> Option<PromHist> {
    let mut all: Option<PromHist> = None;
    for n in ctx.nodes.iter() {
        if let Some(h) = n.probe.histogram(name).await {
            all.get_or_insert_with(PromHist::default).add(&h);
        }
    }
    all
}

/// A server timer over the run, from its histogram before and after.
fn timer(after: Option<PromHist>, before: Option<PromHist>) -> Option<ServerTimer> {
    let h = after?.since(&before?);
    let us = |x: Option<f64>| x.map(|s| s * 1e6);
    Some(ServerTimer {
        count: h.count(),
        mean_us: (h.count() > 0.0).then(|| h.sum / h.count() * 1e6),
        p50_us: us(h.quantile(0.5)),
        p95_us: us(h.quantile(0.95)),
        p99_us: us(h.quantile(0.99)),
    })
}
