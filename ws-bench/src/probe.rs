//! Watching the server under test: RSS and CPU from `/proc/PID` when given `--pid`, else from its
//! Prometheus process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`).
//!
//! The modes ask a [`Probe`] for one reading at a time, or start an [`RssWatch`] over their
//! measured window. `/metrics` is fetched with one bounded HTTP/1.0 GET and read by the
//! `prometheus-parse` crate (the parser rust-ws's tests use too).

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
