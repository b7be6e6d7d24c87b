//! Results: latency histograms, the per-run report, and its markdown row / JSON forms.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A histogram of microseconds shared by many tasks. Each task buffers its samples and takes the
/// lock once per batch, so a thousand connections cost one histogram, not a thousand.
#[derive(Clone)]
pub struct SharedHist(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHist {
    fn default() -> Self {
        // 1 µs to 1 hour at 3 significant digits.
        let h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        SharedHist(Arc::new(Mutex::new(h)))
    }
}

impl SharedHist {
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            buf: Vec::with_capacity(BATCH),
        }
    }
    pub fn summary(&self) -> Option<Latency> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Latency::of(&h)
    }
    /// The histogram as (value, count) pairs, for another process to merge (`add_pairs`).
    pub fn pairs(&self) -> Vec<(u64, u64)> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
    pub fn add_pairs(&self, pairs: &[(u64, u64)]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &(v, n) in pairs {
            h.saturating_record_n(v.max(1), n);
        }
    }
    fn add(&self, samples: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &s in samples {
            h.saturating_record(s.max(1));
        }
    }
}

const BATCH: usize = 128;

pub struct Recorder {
    shared: SharedHist,
    buf: Vec<u64>,
}

impl Recorder {
    pub fn record(&mut self, us: u64) {
        self.buf.push(us);
        if self.buf.len() >= BATCH {
            self.flush();
        }
    }
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.shared.add(&self.buf);
            self.buf.clear();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Latency summary, microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub avg_us: f64,
    pub min_us: u64,
    pub max_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            count: h.len(),
            avg_us: h.mean(),
            min_us: h.min(),
            max_us: h.max(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
        })
    }
}

/// Failure counts by kind (see `client::Fail`).
pub type Counts = BTreeMap<String, u64>;

pub fn bump(c: &mut Counts, kind: &str) {
    *c.entry(kind.to_string()).or_default() += 1;
}

pub fn merge(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct HoldStats {
    pub target: u64,
    pub open: u64,
    pub rss_idle_before: Option<u64>,
    pub rss_at_n: Option<u64>,
    pub rss_idle_after: Option<u64>,
    /// (rss_at_n - rss_idle_before) / open.
    pub bytes_per_conn: Option<f64>,
    pub server_connections_at_n: Option<f64>,
    pub server_connections_after: Option<f64>,
    pub settle_after_s: f64,
    /// What each connection sent once (`none`, `echo`, `error`, `broadcast`) and how it ended
    /// (`close`, `reset`): memory coming back depends on the path.
    #[serde(default)]
    pub exchange: String,
    #[serde(default)]
    pub end: String,
    /// Server CPU (percent of one core) while all connections were held idle: keepalive pings.
    #[serde(default)]
    pub idle_cpu_pct: Option<f64>,
    /// Client processes and loopback source addresses the connections were spread over.
    #[serde(default)]
    pub procs: u64,
    #[serde(default)]
    pub source_addrs: u64,
    /// ws-bench's own open-files limit (per process).
    #[serde(default)]
    pub client_nofile: Option<u64>,
}

/// A server-side histogram over one run (from `/metrics` before and after), in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ServerTimer {
    pub count: f64,
    pub mean_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p95_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Echo's own figures: sizes, bytes moved, and for an open-loop run what was offered.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct EchoStats {
    /// Bytes of one request on the wire (payload).
    pub msg_bytes: u64,
    /// Requests per second offered in total (open loop); 0 = closed loop.
    pub rate: f64,
    pub sent: u64,
    /// Sends skipped because a connection already had too many replies outstanding.
    pub skipped: u64,
    /// Replies that never came within the drain.
    pub missing: u64,
    pub sent_bytes: u64,
    pub recv_bytes: u64,
    pub sent_mb_per_s: f64,
    pub recv_mb_per_s: f64,
}

/// One node of a run (`--url`), as measured: who it is, its share of the connections, its own
/// CPU and RSS, and (broadcast) the deliveries its members received against those owed them.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct NodeStats {
    pub url: String,
    /// From its `ws_node_info`; `None` for a server without the gauge.
    #[serde(default)]
    pub node_id: Option<String>,
    /// `redis` or `none` (`ws_node_info`); `None` for a server without the gauge (no broker).
    #[serde(default)]
    pub broker: Option<String>,
    #[serde(default)]
    pub pid: Option<i32>,
    /// Handshakes that succeeded to this node (for broadcast: its members).
    #[serde(default)]
    pub conns: u64,
    /// Its CPU (user + system) in percent of one core over the measured window.
    #[serde(default)]
    pub cpu_pct: Option<f64>,
    #[serde(default)]
    pub max_rss: Option<u64>,
    /// Broadcast: deliveries its members received, and those owed them (see [`BroadcastStats`]).
    #[serde(default)]
    pub received: u64,
    #[serde(default)]
    pub expected: u64,
}

impl NodeStats {
    /// Deliveries received ÷ owed, in percent; `None` when nothing was owed.
    pub fn reach_pct(&self) -> Option<f64> {
        pct_of(self.received, self.expected)
    }
}

fn pct_of(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| 100.0 * a as f64 / b as f64)
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BroadcastStats {
    pub rooms: u64,
    /// Messages per second per connection asked for; 0 = closed loop.
    pub rate_per_conn: f64,
    pub sent: u64,
    pub sent_per_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Deliveries owed for what was sent: each send times its room's size.
    pub expected: u64,
    /// Deliveries received in the run and the drain after it (of messages sent in the run).
    pub delivered_total: u64,
    /// Sends skipped because the sender already had too many of its own broadcasts outstanding.
    #[serde(default)]
    pub skipped: u64,
    /// Members per room (the fan-out), as opened.
    #[serde(default)]
    pub members: u64,
    /// Round trip of each sender's own broadcasts (send time to its own receipt).
    #[serde(default)]
    pub own_rtt: Option<Latency>,
    /// The server's `ws_broadcast_duration_seconds` over the same run (enqueueing the fan-out),
    /// every node's observations together.
    #[serde(default)]
    pub server_fanout: Option<ServerTimer>,
    /// Every node's `ws_broker_publish_duration_seconds` over the run (the publish round trip),
    /// when a node has a broker.
    #[serde(default)]
    pub broker_publish: Option<ServerTimer>,
    /// Reach: deliveries received ÷ deliveries owed, over the members that stayed connected to
    /// the end (each is owed every broadcast sent to its room in the run). Exact counts; per node
    /// in the report's `nodes`.
    #[serde(default)]
    pub reach_received: u64,
    #[serde(default)]
    pub reach_expected: u64,
    /// Members whose connection ended during the run (their deliveries count in no reach).
    #[serde(default)]
    pub members_dropped: u64,
    /// Order (every member, every room): a `seq` not above the one before it.
    #[serde(default)]
    pub seq_violations: u64,
    /// Order: `seq` numbers skipped (a jump from 7 to 10 is 2).
    #[serde(default)]
    pub seq_gaps: u64,
    /// Order across members: members whose broadcasts carried other `seq` numbers than the rest
    /// of their room's (compared among members that saw the same `seq` range with no gap).
    #[serde(default)]
    pub seq_disagreements: u64,
}

impl BroadcastStats {
    /// Reach in percent; `None` when nothing was owed.
    pub fn reach_pct(&self) -> Option<f64> {
        pct_of(self.reach_received, self.reach_expected)
    }

    /// What broke, in one line: reach below 100% or the order check; `None` when neither did.
    pub fn reach_failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Some(p) = self
            .reach_pct()
            .filter(|_| self.reach_received != self.reach_expected)
        {
            why.push(format!(
                "REACH {p:.1}% ({} of {} deliveries)",
                self.reach_received, self.reach_expected
            ));
        }
        if self.seq_violations + self.seq_gaps + self.seq_disagreements > 0 {
            why.push(format!("ORDER {}", self.order()));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The order check in a few words: `ok`, or what it counted.
    pub fn order(&self) -> String {
        if self.seq_violations + self.seq_gaps + self.seq_disagreements == 0 {
            return "ok".into();
        }
        format!(
            "seq: {} out of order, {} skipped, {} members disagreeing",
            self.seq_violations, self.seq_gaps, self.seq_disagreements
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Report {
    pub label: String,
    pub server: String,
    /// The server process measured (`--pid`, or the one found listening on the target's port).
    #[serde(default)]
    pub server_pid: Option<i32>,
    /// The server's build profile from its `ws_build_info` gauge (`release`, `debug`), if shown.
    #[serde(default)]
    pub server_profile: Option<String>,
    pub mode: String,
    pub url: String,
    pub connections: u64,
    /// Requests per connection before reconnecting (echo); None = unlimited.
    pub requests_per_conn: Option<u64>,
    pub duration_s: f64,
    pub requests: u64,
    pub req_per_s: Option<f64>,
    pub conns_opened: u64,
    pub conn_per_s: Option<f64>,
    /// Request latency (echo), fan-out latency (broadcast), session time (sessions), handshake
    /// time (hold).
    pub latency: Option<Latency>,
    pub connect_latency: Option<Latency>,
    pub connect_attempts: u64,
    pub connect_failures: Counts,
    pub errors: Counts,
    pub server_max_rss: Option<u64>,
    pub server_cpu_user_pct: Option<f64>,
    pub server_cpu_sys_pct: Option<f64>,
    /// When only the sum is known (Prometheus), it goes here and user/sys stay empty.
    pub server_cpu_total_pct: Option<f64>,
    /// Seconds over which the CPU figures were measured (the window, a broadcast's drain
    /// included): percent × this ÷ 100 = CPU seconds.
    #[serde(default)]
    pub cpu_window_s: f64,
    pub client_cpu_pct: f64,
    pub client_cores: u64,
    pub client_threads: u64,
    pub client_saturated: bool,
    pub client_peak_rss: Option<u64>,
    pub hold: Option<HoldStats>,
    pub broadcast: Option<BroadcastStats>,
    #[serde(default)]
    pub echo: Option<EchoStats>,
    /// fanout's own figures (per-broadcast last arrival, CPU of the whole idle and busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<crate::modes::FanoutStats>,
    /// Every target (`--url`), in order: one for a single server.
    #[serde(default)]
    pub nodes: Vec<NodeStats>,
    pub notes: Vec<String>,
}

impl Report {
    /// The server said (`ws_build_info`) it is a debug build: its figures are not the release
    /// server's.
    pub fn is_debug_build(&self) -> bool {
        self.server_profile.as_deref() == Some("debug")
    }

    pub fn failed_handshakes(&self) -> u64 {
        self.connect_failures.values().sum()
    }

    /// How many nodes and which broker: `1 none`, `2 redis`, `2 none+redis`.
    pub fn topology(&self) -> String {
        let mut brokers: Vec<&str> = self
            .nodes
            .iter()
            .map(|n| n.broker.as_deref().unwrap_or("none"))
            .collect();
        brokers.sort_unstable();
        brokers.dedup();
        match brokers.is_empty() {
            true => "1 ?".into(),
            false => format!("{} {}", self.nodes.len(), brokers.join("+")),
        }
    }

    /// Connections per node, in `--url` order: `50/50`.
    pub fn spread(&self) -> String {
        let v: Vec<String> = self.nodes.iter().map(|n| n.conns.to_string()).collect();
        v.join("/")
    }

    /// The mode's own columns, after the common ones.
    fn mode_columns(&self) -> Vec<(&'static str, String)> {
        let mut c = Vec::new();
        if let Some(h) = &self.hold {
            c.push(("open", format!("{}/{}", h.open, h.target)));
            c.push(("rss idle before", bytes(h.rss_idle_before)));
            c.push(("rss at N", bytes(h.rss_at_n)));
            c.push((
                "per conn",
                h.bytes_per_conn
                    .map(|b| format!("{:.1} KiB", b / 1024.0))
                    .unwrap_or("-".into()),
            ));
            c.push(("rss idle after", bytes(h.rss_idle_after)));
            c.push((
                "after/before",
                match (h.rss_idle_after, h.rss_idle_before) {
                    (Some(a), Some(b)) if b > 0 => format!("{:.2}×", a as f64 / b as f64),
                    _ => "-".into(),
                },
            ));
        }
        if let Some(e) = &self.echo {
            c.push(("msg bytes", e.msg_bytes.to_string()));
            c.push(("MB/s out", format!("{:.1}", e.sent_mb_per_s)));
            c.push(("MB/s in", format!("{:.1}", e.recv_mb_per_s)));
        }
        c.push(("nodes", format!("{} ({})", self.topology(), self.spread())));
        if let Some(b) = &self.broadcast {
            c.push(("deliveries/s", num(Some(b.deliveries_per_s))));
            c.push(("sent/s", num(Some(b.sent_per_s))));
            c.push((
                "delivered",
                if b.expected == 0 {
                    "-".into()
                } else {
                    format!(
                        "{:.1}%",
                        100.0 * b.delivered_total as f64 / b.expected as f64
                    )
                },
            ));
            c.push((
                "reach",
                match b.reach_pct() {
                    None => "-".into(),
                    Some(_) if b.reach_received == b.reach_expected => "100%".into(),
                    Some(p) => format!("⚠ {p:.1}%"),
                },
            ));
            c.push((
                "order",
                match b.order().as_str() {
                    "ok" => "ok".into(),
                    o => format!("⚠ {o}"),
                },
            ));
        }
        c.push((
            "failed handshakes",
            format!("{}/{}", self.failed_handshakes(), self.connect_attempts),
        ));
        c.push(("errors", self.errors.values().sum::<u64>().to_string()));
        c
    }

    pub fn header(&self) -> String {
        let mut h: Vec<&str> = vec![
            "server",
            "run",
            "conns",
            "req/s",
            "conn/s",
            "avg",
            "min",
            "max",
            "p95",
            "p99",
            "max rss",
            "cpu user",
            "cpu system",
        ];
        let cols = self.mode_columns();
        h.extend(cols.iter().map(|(k, _)| *k));
        h.push("client cpu");
        h.push("notes");
        let sep: Vec<&str> = h.iter().map(|_| "---").collect();
        format!("| {} |\n|{}|", h.join(" | "), sep.join("|"))
    }

    pub fn row(&self) -> String {
        let l = self.latency.as_ref();
        let (user, sys) = match (
            self.server_cpu_user_pct,
            self.server_cpu_sys_pct,
            self.server_cpu_total_pct,
        ) {
            (Some(u), Some(s), _) => (pct(u), pct(s)),
            (_, _, Some(t)) => (format!("{} (u+s)", pct(t)), "-".into()),
            _ => ("-".into(), "-".into()),
        };
        let run = if self.label.is_empty() {
            self.mode.clone()
        } else {
            self.label.clone()
        };
        let server = if self.is_debug_build() {
            format!("{} ⚠ DEBUG BUILD", self.server)
        } else {
            self.server.clone()
        };
        let mut v = vec![
            server,
            run,
            self.connections.to_string(),
            num(self.req_per_s),
            num(self.conn_per_s),
            l.map(|l| us(l.avg_us)).unwrap_or("-".into()),
            l.map(|l| us(l.min_us as f64)).unwrap_or("-".into()),
            l.map(|l| us(l.max_us as f64)).unwrap_or("-".into()),
            l.map(|l| us(l.p95_us as f64)).unwrap_or("-".into()),
            l.map(|l| us(l.p99_us as f64)).unwrap_or("-".into()),
            bytes(self.server_max_rss),
            user,
            sys,
        ];
        v.extend(self.mode_columns().into_iter().map(|(_, x)| x));
        v.push(format!(
            "{}{}",
            pct(self.client_cpu_pct),
            if self.client_saturated { " ⚠" } else { "" }
        ));
        v.push(if self.notes.is_empty() {
            "-".into()
        } else {
            self.notes.join("; ").replace('|', "/")
        });
        format!("| {} |", v.join(" | "))
    }
}

pub fn num(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{}", x.round() as u64),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

pub fn pct(x: f64) -> String {
    format!("{x:.0}%")
}

pub fn us(x: f64) -> String {
    if x < 1000.0 {
        format!("{x:.0}µs")
    } else if x < 1_000_000.0 {
        format!("{:.2}ms", x / 1000.0)
    } else {
        format!("{:.2}s", x / 1_000_000.0)
    }
}

pub fn bytes(x: Option<u64>) -> String {
    match x {
        None => "-".into(),
        Some(b) if b >= 10 << 20 => format!("{:.0} MiB", b as f64 / (1 << 20) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_from_many_recorders() {
        let h = SharedHist::default();
        let mut a = h.recorder();
        let mut b = h.recorder();
        for i in 1..=1000 {
            if i % 2 == 0 {
                a.record(i)
            } else {
                b.record(i)
            }
        }
        drop(a);
        drop(b);
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!((s.min_us, s.max_us), (1, 1000));
        assert!((s.avg_us - 500.5).abs() < 1.0);
        assert!((949..=951).contains(&s.p95_us), "{}", s.p95_us);
        assert!(SharedHist::default().summary().is_none());
    }

    #[test]
    fn formats() {
        assert_eq!(us(412.0), "412µs");
        assert_eq!(us(12_345.0), "12.35ms");
        assert_eq!(us(2_500_000.0), "2.50s");
        assert_eq!(num(Some(123_456.7)), "123457");
        assert_eq!(num(Some(12.345)), "12.3");
        assert_eq!(num(None), "-");
        assert_eq!(bytes(Some(8 << 20)), "8.0 MiB");
        assert_eq!(bytes(Some(300 << 20)), "300 MiB");
    }

    #[test]
    fn row_matches_header_and_round_trips_json() {
        let mut r = Report {
            server: "rust-ws".into(),
            mode: "hold".into(),
            connections: 10,
            connect_attempts: 10,
            notes: vec!["a | b".into()],
            hold: Some(HoldStats {
                target: 10,
                open: 10,
                rss_idle_before: Some(1 << 20),
                rss_idle_after: Some(2 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        bump(&mut r.connect_failures, "timeout");
        let cells = |s: &str| s.lines().next().unwrap().matches(" | ").count();
        assert_eq!(cells(&r.header()), cells(&r.row()));
        assert!(r.row().contains("2.00×"));
        assert!(r.row().starts_with("| rust-ws | hold |"));
        r.server_profile = Some("debug".into());
        assert!(r.row().starts_with("| rust-ws ⚠ DEBUG BUILD | hold |"));
        assert_eq!(cells(&r.header()), cells(&r.row()));
        assert!(r.row().contains("1/10"));
        assert!(!r.row().contains("a | b"));
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
