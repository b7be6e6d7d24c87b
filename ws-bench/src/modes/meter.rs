//! The measured window every mode reports on: CPU and peak RSS of the server and of ws-bench
//! itself, whether ws-bench was the bottleneck, and the notes every row carries about what its
//! figures can't tell (a saturated client, failed handshakes, errors, a server not measured).
//!
//! With several nodes (`--url` repeated) each node is measured apart (its row in the report's
//! `nodes`) and the row's server figures are their sums: CPU in percent of one core added over
//! nodes, RSS the sum of each node's peak.
//!
//! A mode starts a [`Meter`] where its window begins, finishes it where it ends, and calls
//! [`common_notes`] before adding notes of its own.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::probe::{Cpu, RssWatch};
use crate::report::Report;
use crate::sys;

/// CPU and RSS of both sides over a measured window.
pub struct Meter {
    t0: Instant,
    /// ws-bench's own CPU seconds at the start.
    client0: f64,
    /// Per node, in `ctx.nodes` order.
    server0: Vec<Option<Cpu>>,
    rss: Vec<RssWatch>,
}

impl Meter {
    pub async fn start(ctx: &Ctx) -> Meter {
        let mut server0 = Vec::with_capacity(ctx.nodes.len());
        for n in ctx.nodes.iter() {
            server0.push(n.probe.cpu().await);
        }
        Meter {
            t0: Instant::now(),
            client0: sys::self_cpu_seconds(),
            server0,
            rss: ctx.nodes.iter().map(|n| n.probe.watch_rss()).collect(),
        }
    }

    /// Fills the report's CPU, RSS and saturation figures (the sums over nodes, and each node's
    /// own with its spread); returns the window's length.
    pub async fn finish(self, ctx: &Ctx, r: &mut Report) -> Duration {
        let wall = self.t0.elapsed();
        let client = (sys::self_cpu_seconds() - self.client0).max(0.0);
        r.cpu_window_s = wall.as_secs_f64();
        ctx.count_spread(r);
        let mut cpus = Vec::new();
        for (k, (n, c0)) in ctx.nodes.iter().zip(self.server0).enumerate() {
            let d = match (n.probe.cpu().await, c0) {
                (Some(c1), Some(c0)) => Some(c1.since(c0)),
                _ => None,
            };
            if let (Some(d), Some(s)) = (d, r.nodes.get_mut(k)) {
                s.cpu_pct = Some(sys::pct(d.total(), wall));
            }
            cpus.push(d);
        }
        // The row's figure: every node's, added (or none if any node went unmeasured).
        let total = cpus.iter().copied().collect::<Option<Vec<Cpu>>>();
        match total.as_deref() {
            Some(all) if !all.is_empty() && all.iter().all(|c| matches!(c, Cpu::Split(_))) => {
                let (mut user, mut sys_s) = (0.0, 0.0);
                for c in all {
                    if let Cpu::Split(t) = c {
                        user += t.user;
                        sys_s += t.sys;
                    }
                }
                r.server_cpu_user_pct = Some(sys::pct(user, wall));
                r.server_cpu_sys_pct = Some(sys::pct(sys_s, wall));
            }
            Some(all) if !all.is_empty() => {
                let t: f64 = all.iter().map(|c| c.total()).sum();
                r.server_cpu_total_pct = Some(sys::pct(t, wall));
            }
            _ => {}
        }
        let mut rss_sum = Some(0u64);
        for (k, (n, w)) in ctx.nodes.iter().zip(self.rss).enumerate() {
            let m = w.finish(&n.probe).await;
            if let Some(s) = r.nodes.get_mut(k) {
                s.max_rss = m;
            }
            rss_sum = rss_sum.zip(m).map(|(a, b)| a + b);
        }
        r.server_max_rss = rss_sum;
        r.client_cpu_pct = sys::pct(client, wall);
        r.client_peak_rss = sys::self_peak_rss();
        // Past 90% of the cores it may use, the client, not the server, may be what limits the run.
        let usable = ctx.threads.min(sys::usable_cores()).max(1) as f64;
        r.client_saturated = r.client_cpu_pct >= 90.0 * usable;
        wall
    }
}

/// Notes every mode shares: what the numbers can't say.
pub fn common_notes(ctx: &Ctx, r: &mut Report) {
    if r.is_debug_build() {
        r.notes.insert(
            0,
            format!(
                "DEBUG BUILD of {} (ws_build_info profile=\"debug\"): these are not the release server's figures",
                ctx.build.as_ref().map_or("the server", |b| b.server.as_str())
            ),
        );
    }
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
    if ctx.nodes.len() > 1 {
        r.notes.push(format!(
            "{} nodes ({}): server CPU and RSS are their sums",
            ctx.nodes.len(),
            r.spread()
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
