//! The measured window every mode reports on: CPU and peak RSS of the server and of ws-bench
//! itself, whether ws-bench was the bottleneck, and the notes every row carries about what its
//! figures can't tell (a saturated client, failed handshakes, errors, a server not measured).
//!
//! A mode starts a [`Meter`] where its window begins, finishes it where it ends, and calls
//! [`common_notes`] before adding notes of its own.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::probe::{Cpu, Probe, RssWatch};
use crate::report::Report;
use crate::sys;

/// CPU and RSS of both sides over a measured window.
pub struct Meter {
    t0: Instant,
    /// ws-bench's own CPU seconds at the start.
    client0: f64,
    server0: Option<Cpu>,
    rss: RssWatch,
}

impl Meter {
    pub async fn start(probe: &Probe) -> Meter {
        Meter {
            t0: Instant::now(),
            client0: sys::self_cpu_seconds(),
            server0: probe.cpu().await,
            rss: probe.watch_rss(),
        }
    }

    /// Fills the report's CPU, RSS and saturation figures; returns the window's length.
    pub async fn finish(self, ctx: &Ctx, r: &mut Report) -> Duration {
        let wall = self.t0.elapsed();
        let client = (sys::self_cpu_seconds() - self.client0).max(0.0);
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
    if ctx.probe.is_blind() {
        r.notes
            .push("no --pid or --metrics-url: server RSS and CPU not measured".into());
    } else if ctx.probe.pid.is_none() {
        r.notes.push(
            "server figures from /metrics: CPU is user+system, RSS sampled every 500 ms".into(),
        );
    }
}
