//! Watching the server under test: RSS and CPU from `/proc/PID` when given `--pid`, else from its
//! Prometheus process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`).
//!
//! Which process that is gets checked: a `--pid` must own the socket listening on the target's
//! port (`pgrep -n rust-ws` picks whichever started last, not necessarily the one under load),
//! and without `--pid` the one process listening there is found and used ([`server_pid`]).
//! The server's `ws_build_info` says whether it is a debug build ([`Probe::build_info`]).
//!
//! The modes ask a [`Probe`] for one reading at a time, or start an [`RssWatch`] over their
//! measured window. `/metrics` is fetched with one bounded HTTP/1.0 GET and read by the
//! `prometheus-parse` crate (the parser rust-ws's tests use too).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sys::{self, CpuTimes};
use crate::target::Target;

/// Server CPU as far as it can be known: user and system apart from `/proc`, only their sum from
/// Prometheus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cpu {
    Split(CpuTimes),
    Total(f64),
}

impl Cpu {
    pub fn since(self, earlier: Cpu) -> Cpu {
        match (self, earlier) {
            (Cpu::Split(a), Cpu::Split(b)) => Cpu::Split(a.since(b)),
            (a, b) => Cpu::Total((a.total() - b.total()).max(0.0)),
        }
    }
    pub fn total(self) -> f64 {
        match self {
            Cpu::Split(t) => t.user + t.sys,
            Cpu::Total(t) => t,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub pid: Option<i32>,
    pub metrics: Option<Target>,
}

impl Probe {
    pub fn is_blind(&self) -> bool {
        self.pid.is_none() && self.metrics.is_none()
    }

    pub async fn rss(&self) -> Option<u64> {
        if let Some(pid) = self.pid {
            return sys::proc_rss(Some(pid));
        }
        self.metric("process_resident_memory_bytes")
            .await
            .map(|v| v as u64)
    }

    pub async fn cpu(&self) -> Option<Cpu> {
        if let Some(pid) = self.pid {
            return sys::proc_cpu(Some(pid)).map(Cpu::Split);
        }
        self.metric("process_cpu_seconds_total")
            .await
            .map(Cpu::Total)
    }

    /// One sample (unlabelled series) from the server's `/metrics`, if there is a metrics URL.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = scrape(self.metrics.as_ref()?).await.ok()?;
        metric_value(&text, name)
    }

    /// A histogram family (unlabelled) from the server's `/metrics`, if there is a metrics URL.
    pub async fn histogram(&self, name: &str) -> Option<PromHist> {
        let text = scrape(self.metrics.as_ref()?).await.ok()?;
        histogram_value(&text, name)
    }

    /// The server's build, from its `/metrics`: at `--metrics-url`, else at `/metrics` on the
    /// target's own host and port (where both twins serve it). `None` if it can't be read.
    pub async fn build_info(&self, target: &Target) -> Option<BuildInfo> {
        let at = self.metrics.clone().unwrap_or_else(|| Target {
            path: "/metrics".into(),
            ..target.clone()
        });
        build_info(&scrape(&at).await.ok()?)
    }

    /// The node's `ws_node_info{node_id,broker}` (PROTOCOL.md §4), read where [`Probe::build_info`]
    /// reads: `None` if it can't be read or the server has no such gauge (no broker then).
    pub async fn node_info(&self, target: &Target) -> Option<NodeInfo> {
        let at = self.metrics.clone().unwrap_or_else(|| Target {
            path: "/metrics".into(),
            ..target.clone()
        });
        node_info(&scrape(&at).await.ok()?)
    }

    /// Samples RSS in the background until the returned guard is stopped; keeps the maximum.
    pub fn watch_rss(&self) -> RssWatch {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let probe = self.clone();
        let (m, s) = (max.clone(), stop.clone());
        // /proc is cheap to read; a scrape costs the server a request, so go slower there.
        let every = if self.pid.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        };
        let task = tokio::spawn(async move {
            // Bounded: at most one day of samples even if nobody stops it.
            for _ in 0..(86_400_000 / every.as_millis() as u64) {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(r) = probe.rss().await {
                    m.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
        });
        RssWatch { max, stop, task }
    }
}

pub struct RssWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    pub async fn finish(self, probe: &Probe) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        if let Some(last) = probe.rss().await {
            self.max.fetch_max(last, Ordering::Relaxed);
        }
        match self.max.load(Ordering::Relaxed) {
            0 => None,
            m => Some(m),
        }
    }
}

/// The process to measure for a server listening at `to`, and a note saying how it was found.
///
/// With `--pid`: that process must hold the socket listening on `to`'s port (in its own network
/// namespace, so a container's server checks out too), else an error naming who does. If nothing
/// listens at all there is nothing to check: the run fails on its handshakes instead.
/// Without: the one process holding that socket (parent and forked children count as several:
/// then none is picked and the note says to pass `--pid`).
pub fn server_pid(
    pid: Option<i32>,
    to: SocketAddr,
) -> Result<(Option<i32>, Option<String>), String> {
    let here = sys::listening_inodes(None, to);
    let name = |p: i32| format!("{p} ({})", sys::comm(p));
    let owners = || {
        let h = sys::holders(&here);
        match h.as_slice() {
            [] => "nobody this user can see".to_string(),
            _ => h.iter().map(|&p| name(p)).collect::<Vec<_>>().join(", "),
        }
    };
    if let Some(pid) = pid {
        let theirs = sys::listening_inodes(Some(pid), to);
        let holds = !theirs.is_empty() && sys::holds_any(pid, &theirs) == Some(true);
        if holds || here.is_empty() {
            return Ok((Some(pid), None));
        }
        return Err(format!(
            "--pid {} does not own the socket listening on {to} (held by {}): its figures would be another process's",
            name(pid),
            owners()
        ));
    }
    if here.is_empty() {
        return Ok((None, None));
    }
    let h = sys::holders(&here);
    match h.as_slice() {
        // A port forwarder (compose's docker-proxy) holds the socket, not the server.
        [p] if sys::comm(*p).contains("proxy") => Ok((
            None,
            Some(format!(
                "the socket on port {} is held by {}, a forwarder, not a server: pass --pid",
                to.port(),
                name(*p)
            )),
        )),
        [p] => Ok((
            Some(*p),
            Some(format!(
                "server pid {} found listening on port {}",
                name(*p),
                to.port()
            )),
        )),
        [] => Ok((None, None)),
        several => Ok((
            None,
            Some(format!(
                "{} processes hold the socket on port {} ({}): pass --pid to measure one",
                several.len(),
                to.port(),
                several
                    .iter()
                    .map(|&p| name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )),
    }
}

/// GET over HTTP/1.0, so the answer is never chunked and ends at EOF.
pub async fn scrape(t: &Target) -> Result<String, String> {
    let fut = async {
        let mut s = TcpStream::connect(t.addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            t.path, t.host
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::with_capacity(16 * 1024);
        s.take(8 << 20)
            .read_to_end(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let status_ok = text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200");
        if !status_ok {
            return Err(format!(
                "metrics: {}",
                text.lines().next().unwrap_or("no answer")
            ));
        }
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "metrics: timeout".to_string())?
}

/// The value of an unlabelled counter, gauge or untyped series `name` in Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    // prometheus-parse skips lines it can't read, so one odd line costs only itself.
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape.samples.into_iter().find_map(|s| match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)
            if s.metric == name && s.labels.is_empty() =>
        {
            Some(v)
        }
        _ => None,
    })
}

/// The server's `ws_build_info{server=...,profile=...} 1`: which twin, and whether it was built for
/// release or debug. `None` if the gauge isn't there (a server older than it).
pub fn build_info(text: &str) -> Option<BuildInfo> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape.samples.into_iter().find_map(|s| {
        if s.metric != "ws_build_info" {
            return None;
        }
        Some(BuildInfo {
            server: s.labels.get("server").unwrap_or("?").to_string(),
            profile: s.labels.get("profile")?.to_string(),
        })
    })
}

/// This node's `ws_node_info{node_id="...",broker="redis"|"none"} 1`. `None` if the gauge isn't
/// there (a server older than PROTOCOL.md §5).
pub fn node_info(text: &str) -> Option<NodeInfo> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape.samples.into_iter().find_map(|s| {
        if s.metric != "ws_node_info" {
            return None;
        }
        Some(NodeInfo {
            node_id: s.labels.get("node_id").unwrap_or("?").to_string(),
            broker: s.labels.get("broker").unwrap_or("?").to_string(),
        })
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node_id: String,
    pub broker: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildInfo {
    pub server: String,
    pub profile: String,
}

/// A Prometheus histogram as scraped: cumulative counts by upper bound (`le`, ending at +Inf)
/// and the sum of observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromHist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
}

impl PromHist {
    /// Observations between an earlier scrape and this one.
    pub fn since(&self, before: &PromHist) -> PromHist {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |x| x.1);
                (le, (c - b).max(0.0))
            })
            .collect();
        PromHist {
            buckets,
            sum: (self.sum - before.sum).max(0.0),
        }
    }

    /// Adds another node's observations (the same bucket bounds, as PROTOCOL.md §4 fixes them).
    pub fn add(&mut self, other: &PromHist) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            for (le, c) in &mut self.buckets {
                *c += other
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |x| x.1);
            }
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The q-quantile as Prometheus's `histogram_quantile` estimates it: linear within the
    /// bucket it falls in; the largest finite bound if it falls in +Inf.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n <= 0.0 {
            return None;
        }
        let rank = q * n;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let inb = c - prev.1;
                let frac = if inb > 0.0 {
                    (rank - prev.1) / inb
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

/// The unlabelled histogram `name` in Prometheus text format.
pub fn histogram_value(text: &str, name: &str) -> Option<PromHist> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let mut buckets = scrape.samples.iter().find_map(|s| match &s.value {
        Value::Histogram(h) if s.metric == name && s.labels.is_empty() => {
            Some(h.iter().map(|b| (b.less_than, b.count)).collect::<Vec<_>>())
        }
        _ => None,
    })?;
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sum = metric_value(text, &format!("{name}_sum")).unwrap_or(0.0);
    Some(PromHist { buckets, sum })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_series() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 1.2345e+07\n\
                    process_cpu_seconds_total 3.5\n\
                    ws_connections 7\n\
                    ws_connections_x 9\n\
                    ws_closed_conns_errors_total{reason=\"abnormal\"} 0\n";
        assert_eq!(
            metric_value(text, "process_resident_memory_bytes"),
            Some(12_345_000.0)
        );
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(3.5));
        assert_eq!(metric_value(text, "ws_connections"), Some(7.0));
        assert_eq!(metric_value(text, "ws_closed_conns_errors_total"), None);
        assert_eq!(metric_value(text, "missing"), None);
    }

    #[test]
    fn reads_real_exposition_around_other_shapes() {
        // Types, labels, a histogram and a line that is not the format at all, as a server's
        // /metrics may mix them: only the unlabelled series asked for comes back.
        let text = "# TYPE ws_connections gauge\n\
                    ws_connections 3\n\
                    # TYPE ws_message_latency_seconds histogram\n\
                    ws_message_latency_seconds_bucket{le=\"0.001\"} 5\n\
                    ws_message_latency_seconds_bucket{le=\"+Inf\"} 6\n\
                    ws_message_latency_seconds_sum 0.01\n\
                    ws_message_latency_seconds_count 6\n\
                    this is not a metric line\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.25\n";
        assert_eq!(metric_value(text, "ws_connections"), Some(3.0));
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(12.25));
        assert_eq!(
            metric_value(text, "ws_message_latency_seconds_count"),
            Some(6.0)
        );
        assert_eq!(metric_value(text, "ws_message_latency_seconds"), None);
        assert_eq!(metric_value("", "ws_connections"), None);
    }

    #[test]
    fn histogram_deltas_and_quantiles() {
        let scrape = |a: u32, b: u32, c: u32, sum: f64| {
            format!(
                "# TYPE ws_broadcast_duration_seconds histogram\n\
                 ws_broadcast_duration_seconds_bucket{{le=\"0.00001\"}} {a}\n\
                 ws_broadcast_duration_seconds_bucket{{le=\"0.001\"}} {b}\n\
                 ws_broadcast_duration_seconds_bucket{{le=\"+Inf\"}} {c}\n\
                 ws_broadcast_duration_seconds_sum {sum}\n\
                 ws_broadcast_duration_seconds_count {c}\n"
            )
        };
        let before =
            histogram_value(&scrape(5, 5, 5, 0.00002), "ws_broadcast_duration_seconds").unwrap();
        let after = histogram_value(
            &scrape(5, 105, 105, 0.05002),
            "ws_broadcast_duration_seconds",
        )
        .unwrap();
        let d = after.since(&before);
        assert_eq!(d.count(), 100.0);
        assert!((d.sum - 0.05).abs() < 1e-9);
        // All 100 new observations are in (10 µs, 1 ms]: the median is half way.
        let p50 = d.quantile(0.5).unwrap();
        assert!((p50 - 0.000505).abs() < 1e-9, "{p50}");
        assert_eq!(PromHist::default().quantile(0.5), None);
        assert!(histogram_value(&scrape(1, 1, 1, 0.0), "missing").is_none());
    }

    #[test]
    fn reads_build_info() {
        let text = "# HELP ws_build_info Which server this is and how it was built.\n\
                    # TYPE ws_build_info gauge\n\
                    ws_build_info{server=\"rust-ws\",profile=\"debug\"} 1\n\
                    ws_connections 0\n";
        assert_eq!(
            build_info(text),
            Some(BuildInfo {
                server: "rust-ws".into(),
                profile: "debug".into()
            })
        );
        // Label order is free; a float value (prometheus_client writes 1.0) is the same.
        let text = "ws_build_info{profile=\"release\",server=\"python-ws\"} 1.0\n";
        let b = build_info(text).unwrap();
        assert_eq!(
            (b.server.as_str(), b.profile.as_str()),
            ("python-ws", "release")
        );
        // A server without the gauge, or one without a profile: unknown, not a guess.
        assert_eq!(build_info("ws_connections 3\n"), None);
        assert_eq!(build_info("ws_build_info{server=\"rust-ws\"} 1\n"), None);
        assert_eq!(build_info(""), None);
    }

    #[test]
    fn reads_node_info() {
        let text = "# TYPE ws_node_info gauge\n\
                    ws_node_info{node_id=\"web-1-7\",broker=\"redis\"} 1\n";
        assert_eq!(
            node_info(text),
            Some(NodeInfo {
                node_id: "web-1-7".into(),
                broker: "redis".into()
            })
        );
        assert_eq!(node_info("ws_connections 3\n"), None);
    }

    #[test]
    fn histograms_of_several_nodes_add_up() {
        let h = |a: f64, b: f64| PromHist {
            buckets: vec![(0.001, a), (f64::INFINITY, b)],
            sum: b,
        };
        let mut all = PromHist::default();
        all.add(&h(1.0, 2.0));
        all.add(&h(3.0, 5.0));
        assert_eq!(all, h(4.0, 7.0));
    }

    #[test]
    fn cpu_deltas() {
        let a = Cpu::Split(CpuTimes {
            user: 3.0,
            sys: 1.0,
        });
        let b = Cpu::Split(CpuTimes {
            user: 1.0,
            sys: 0.5,
        });
        assert_eq!(
            a.since(b),
            Cpu::Split(CpuTimes {
                user: 2.0,
                sys: 0.5
            })
        );
        assert_eq!(Cpu::Total(5.0).since(Cpu::Total(2.0)), Cpu::Total(3.0));
    }
}
