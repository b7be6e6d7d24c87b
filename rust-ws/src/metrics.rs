//! The metrics contract of PROTOCOL.md §4, in a registry owned by one server instance.
//!
//! Twin: python-ws/python_ws/metrics.py.
//!
//! Each `Metrics` has its own `Registry` (no globals), so in-process tests that run servers in
//! parallel never see each other's counters. Two workarounds for the prometheus crate live in
//! files of their own: le_labels.rs (the `le` strings of PROTOCOL.md §4) and process_cpu.rs
//! (`process_cpu_seconds_total` as a float).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::le_labels::LeLabels;
#[cfg(target_os = "linux")]
use crate::process_cpu;

/// Bucket upper bounds (seconds) shared by both histograms and both servers.
pub const BUCKETS: [f64; 18] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The exposition content type Prometheus expects for text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// This build's profile, for the start-up line and `ws_build_info`: a debug build (`cargo run`)
/// echoes about 3x slower than a release build, and nothing else would say which one is serving.
pub const BUILD_PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// Why a connection ended abnormally: the `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Abnormal,
    Protocol,
    TooLarge,
    SlowConsumer,
    PingTimeout,
    SendFailed,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Abnormal,
        CloseReason::Protocol,
        CloseReason::TooLarge,
        CloseReason::SlowConsumer,
        CloseReason::PingTimeout,
        CloseReason::SendFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Abnormal => "abnormal",
            CloseReason::Protocol => "protocol",
            CloseReason::TooLarge => "too_large",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::SendFailed => "send_failed",
        }
    }
}

/// Why a broadcast was answered `broker_unavailable`: the `reason` label values (PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFailure {
    /// The node was not connected when the broadcast came.
    Unavailable,
    /// The node's publish queue was full.
    Overloaded,
    /// Sent, then the broker was lost or did not answer in time: maybe delivered.
    Lost,
}

impl PublishFailure {
    pub const ALL: [PublishFailure; 3] = [
        PublishFailure::Unavailable,
        PublishFailure::Overloaded,
        PublishFailure::Lost,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PublishFailure::Unavailable => "unavailable",
            PublishFailure::Overloaded => "overloaded",
            PublishFailure::Lost => "lost",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub accepted: IntCounter,
    closed_errors: IntCounterVec,
    pub received_ok: IntCounter,
    pub received_invalid: IntCounter,
    pub sent: IntCounter,
    pub handling: Histogram,
    pub broadcast: Histogram,
    node_info: IntGaugeVec,
    pub broker_up: IntGauge,
    pub broker_published: IntCounter,
    pub broker_received: IntCounter,
    broker_failures: IntCounterVec,
    pub broker_publish_duration: Histogram,
    le_labels: LeLabels,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let connections = IntGauge::new("ws_connections", "Open WebSocket connections.").unwrap();
        let accepted = IntCounter::new(
            "all_ws_connections_total",
            "WebSocket connections accepted since start.",
        )
        .unwrap();
        let closed_errors = IntCounterVec::new(
            Opts::new(
                "ws_closed_conns_errors_total",
                "WebSocket connections that ended abnormally, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        let received = IntCounterVec::new(
            Opts::new(
                "ws_messages_received_total",
                "Messages received from clients, by outcome.",
            ),
            &["outcome"],
        )
        .unwrap();
        let sent =
            IntCounter::new("ws_messages_sent_total", "Messages written to clients.").unwrap();
        let handling = Histogram::with_opts(
            HistogramOpts::new(
                "ws_message_handling_duration_seconds",
                "Time from a complete text message received until its reply payload is ready: \
                 parse, validate and serialise.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap();
        let broadcast = Histogram::with_opts(
            HistogramOpts::new(
                "ws_broadcast_duration_seconds",
                "Time to fan one broadcast out to every connection in its room: enqueueing the \
                 shared payload, not network delivery.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "ws_build_info",
                "Build of this server: its name and build profile (constant 1).",
            ),
            &["server", "profile"],
        )
        .unwrap();
        build_info
            .with_label_values(&["rust-ws", BUILD_PROFILE])
            .set(1);

        let node_info = IntGaugeVec::new(
            Opts::new(
                "ws_node_info",
                "This node: its id and its broker, redis or none (constant 1).",
            ),
            &["node_id", "broker"],
        )
        .unwrap();
        let broker_up = IntGauge::new(
            "ws_broker_up",
            "1 while this node is connected and subscribed to its broker, else 0 (always 0 \
             without a broker).",
        )
        .unwrap();
        let broker_published = IntCounter::new(
            "ws_broker_published_total",
            "Broadcasts this node handed to the broker and the broker confirmed.",
        )
        .unwrap();
        let broker_received = IntCounter::new(
            "ws_broker_received_total",
            "Broadcasts this node received from the broker.",
        )
        .unwrap();
        let broker_failures = IntCounterVec::new(
            Opts::new(
                "ws_broker_publish_failures_total",
                "Broadcasts this node could not confirm to the broker, by reason; each was \
                 answered with broker_unavailable.",
            ),
            &["reason"],
        )
        .unwrap();
        let broker_publish_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ws_broker_publish_duration_seconds",
                "Time from a broadcast handed to the broker until the broker confirmed it: the \
                 publish round trip, waiting in the node's publish queue included.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .unwrap();
        for reason in PublishFailure::ALL {
            broker_failures.with_label_values(&[reason.label()]);
        }

        // Every label value exists at 0 from start-up, so the first scrape shows every series.
        for reason in CloseReason::ALL {
            closed_errors.with_label_values(&[reason.label()]);
        }
        let received_ok = received.with_label_values(&["ok"]);
        let received_invalid = received.with_label_values(&["invalid"]);

        // Names are fixed and unique, so registration can only fail on a programming error.
        registry.register(Box::new(connections.clone())).unwrap();
        registry.register(Box::new(accepted.clone())).unwrap();
        registry.register(Box::new(closed_errors.clone())).unwrap();
        registry.register(Box::new(received)).unwrap();
        registry.register(Box::new(sent.clone())).unwrap();
        registry.register(Box::new(handling.clone())).unwrap();
        registry.register(Box::new(broadcast.clone())).unwrap();
        registry.register(Box::new(node_info.clone())).unwrap();
        registry.register(Box::new(broker_up.clone())).unwrap();
        registry
            .register(Box::new(broker_published.clone()))
            .unwrap();
        registry
            .register(Box::new(broker_received.clone()))
            .unwrap();
        registry
            .register(Box::new(broker_failures.clone()))
            .unwrap();
        registry
            .register(Box::new(broker_publish_duration.clone()))
            .unwrap();
        registry.register(Box::new(build_info)).unwrap();
        // process_* families (Linux only: they read /proc), CPU seconds as a float.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(process_cpu::ProcessMetrics::for_self()))
            .unwrap();

        Metrics {
            registry,
            connections,
            accepted,
            closed_errors,
            received_ok,
            received_invalid,
            sent,
            handling,
            broadcast,
            node_info,
            broker_up,
            broker_published,
            broker_received,
            broker_failures,
            broker_publish_duration,
            le_labels: LeLabels::for_buckets(&BUCKETS),
        }
    }

    /// Sets `ws_node_info`'s one series: this node's id and `redis` or `none`. Called once at
    /// construction of the server, before the first scrape.
    pub fn set_node_info(&self, node_id: &str, broker: &str) {
        self.node_info.reset();
        self.node_info.with_label_values(&[node_id, broker]).set(1);
    }

    pub fn publish_failed(&self, reason: PublishFailure) {
        self.broker_failures
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn publish_failures(&self, reason: PublishFailure) -> u64 {
        self.broker_failures
            .with_label_values(&[reason.label()])
            .get()
    }

    pub fn closed_abnormally(&self, reason: CloseReason) {
        self.closed_errors
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed_errors
            .with_label_values(&[reason.label()])
            .get()
    }

    /// The text exposition of every family, with the `le` strings of PROTOCOL.md §4 (le_labels.rs).
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding well-formed families into memory does not fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics");
        let text = String::from_utf8(out).expect("metrics text is UTF-8");
        self.le_labels.respell(text)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{LineInfo, Scrape, Value};

    fn scrape(m: &Metrics) -> Scrape {
        let text = m.render();
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
    }

    /// The one sample of `name` whose labels include `label` (if given).
    fn value<'a>(s: &'a Scrape, name: &str, label: Option<(&str, &str)>) -> &'a Value {
        let found: Vec<&Value> = s
            .samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| &x.value)
            .collect();
        assert_eq!(found.len(), 1, "{name} {label:?}: {found:?}");
        found[0]
    }

    #[test]
    fn exposes_every_family_and_label_at_zero() {
        let m = Metrics::new();
        m.set_node_info("web-1", "none");
        let s = scrape(&m);
        for (family, help) in [
            ("ws_connections", "Open WebSocket connections."),
            (
                "all_ws_connections_total",
                "WebSocket connections accepted since start.",
            ),
            (
                "ws_closed_conns_errors_total",
                "WebSocket connections that ended abnormally, by reason.",
            ),
            (
                "ws_messages_received_total",
                "Messages received from clients, by outcome.",
            ),
            ("ws_messages_sent_total", "Messages written to clients."),
            (
                "ws_message_handling_duration_seconds",
                "Time from a complete text message received until its reply payload is ready: \
                 parse, validate and serialise.",
            ),
            (
                "ws_broadcast_duration_seconds",
                "Time to fan one broadcast out to every connection in its room: enqueueing the \
                 shared payload, not network delivery.",
            ),
            (
                "ws_node_info",
                "This node: its id and its broker, redis or none (constant 1).",
            ),
            (
                "ws_broker_up",
                "1 while this node is connected and subscribed to its broker, else 0 (always 0 \
                 without a broker).",
            ),
            (
                "ws_broker_published_total",
                "Broadcasts this node handed to the broker and the broker confirmed.",
            ),
            (
                "ws_broker_received_total",
                "Broadcasts this node received from the broker.",
            ),
            (
                "ws_broker_publish_failures_total",
                "Broadcasts this node could not confirm to the broker, by reason; each was \
                 answered with broker_unavailable.",
            ),
            (
                "ws_broker_publish_duration_seconds",
                "Time from a broadcast handed to the broker until the broker confirmed it: the \
                 publish round trip, waiting in the node's publish queue included.",
            ),
        ] {
            assert_eq!(
                s.docs.get(family).map(String::as_str),
                Some(help),
                "{family}"
            );
        }
        // The value's kind is the family's TYPE.
        assert_eq!(value(&s, "ws_connections", None), &Value::Gauge(0.0));
        assert_eq!(value(&s, "ws_broker_up", None), &Value::Gauge(0.0));
        let info = value(&s, "ws_node_info", Some(("node_id", "web-1")));
        assert_eq!(info, &Value::Gauge(1.0));
        assert_eq!(
            value(&s, "ws_node_info", Some(("broker", "none"))),
            &Value::Gauge(1.0)
        );
        for reason in PublishFailure::ALL {
            let label = Some(("reason", reason.label()));
            let v = value(&s, "ws_broker_publish_failures_total", label);
            assert_eq!(v, &Value::Counter(0.0), "{reason:?}");
        }
        for name in [
            "all_ws_connections_total",
            "ws_messages_sent_total",
            "ws_broker_published_total",
            "ws_broker_received_total",
        ] {
            assert_eq!(value(&s, name, None), &Value::Counter(0.0), "{name}");
        }
        for reason in CloseReason::ALL {
            let label = Some(("reason", reason.label()));
            let v = value(&s, "ws_closed_conns_errors_total", label);
            assert_eq!(v, &Value::Counter(0.0), "{reason:?}");
        }
        for outcome in ["ok", "invalid"] {
            let v = value(&s, "ws_messages_received_total", Some(("outcome", outcome)));
            assert_eq!(v, &Value::Counter(0.0), "{outcome}");
        }
        for name in [
            "ws_message_handling_duration_seconds",
            "ws_broadcast_duration_seconds",
            "ws_broker_publish_duration_seconds",
        ] {
            let Value::Histogram(buckets) = value(&s, name, None) else {
                panic!("{name} is not a histogram");
            };
            let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
            let mut want = BUCKETS.to_vec();
            want.push(f64::INFINITY);
            assert_eq!(bounds, want, "{name}");
            assert!(buckets.iter().all(|b| b.count == 0.0), "{name}");
        }
        // How bounds are spelled is not a number: compared as exposition lines.
        let text = m.render();
        for line in [
            "ws_broadcast_duration_seconds_bucket{le=\"5e-06\"} 0",
            "ws_broadcast_duration_seconds_bucket{le=\"0.0001\"} 0",
            "ws_broadcast_duration_seconds_bucket{le=\"1.0\"} 0",
            "ws_broadcast_duration_seconds_bucket{le=\"2.5\"} 0",
            "ws_broadcast_duration_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("_created"));
        #[cfg(target_os = "linux")]
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(s.docs.contains_key(family), "missing {family}");
        }
    }

    /// Every family in the exposition has exactly one HELP and one TYPE line.
    #[test]
    fn one_help_and_type_per_family() {
        let text = Metrics::new().render();
        let mut helps = std::collections::BTreeMap::<String, usize>::new();
        let mut types = std::collections::BTreeMap::<String, usize>::new();
        for line in text.lines() {
            match LineInfo::parse(line) {
                LineInfo::Doc { metric_name, .. } => {
                    *helps.entry(metric_name.to_owned()).or_default() += 1
                }
                // A histogram's TYPE is reported under `<name>_bucket`, its family under alias.
                LineInfo::Type {
                    metric_name,
                    metric_alias,
                    ..
                } => {
                    *types
                        .entry(metric_alias.unwrap_or(metric_name))
                        .or_default() += 1
                }
                _ => {}
            }
        }
        assert!(!helps.is_empty());
        assert_eq!(
            helps.keys().collect::<Vec<_>>(),
            types.keys().collect::<Vec<_>>(),
            "{text}"
        );
        for (name, n) in helps.iter().chain(types.iter()) {
            assert_eq!(*n, 1, "{name} in\n{text}");
        }
    }

    #[cfg(target_os = "linux")]
    fn scrape_cpu_seconds(m: &Metrics) -> f64 {
        match value(&scrape(m), process_cpu::CPU_NAME, None) {
            Value::Counter(v) => *v,
            other => panic!("{} is {other:?}, not a counter", process_cpu::CPU_NAME),
        }
    }

    /// Busy-loops on this thread until it has used `cpu` of CPU time (bounded by 5 s of wall).
    #[cfg(target_os = "linux")]
    fn burn_cpu(cpu: std::time::Duration) {
        let start = process_cpu::cpu_seconds().unwrap();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        while process_cpu::cpu_seconds().unwrap() - start < cpu.as_secs_f64()
            && wall.elapsed() < std::time::Duration::from_secs(5)
        {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_seconds_is_a_fractional_counter() {
        let m = Metrics::new();
        let s = scrape(&m);
        assert_eq!(
            s.docs.get(process_cpu::CPU_NAME).map(String::as_str),
            Some("Total user and system CPU time spent in seconds.")
        );
        let before = scrape_cpu_seconds(&m);
        burn_cpu(std::time::Duration::from_millis(50));
        let after = scrape_cpu_seconds(&m);
        // Whole seconds would move by 0 or 1, never by a fraction.
        let delta = after - before;
        assert!(delta > 0.0 && delta < 1.0, "{before} -> {after}");
    }

    #[test]
    fn registries_are_independent() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.sent.inc();
        a.closed_abnormally(CloseReason::TooLarge);
        assert_eq!(b.sent.get(), 0);
        assert_eq!(a.closed_count(CloseReason::TooLarge), 1);
        assert_eq!(b.closed_count(CloseReason::TooLarge), 0);
    }
}
