//! The metrics contract of PROTOCOL.md §4, in a registry owned by one server instance.
//!
//! Twin: python-ws/python_ws/metrics.py.
//!
//! Each `Metrics` has its own `Registry` (no globals), so in-process tests that run servers in
//! parallel never see each other's counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Bucket upper bounds (seconds) shared by both histograms and both servers.
pub const BUCKETS: [f64; 18] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The exposition content type Prometheus expects for text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        // process_* families (Linux only: they read /proc).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(process::ProcessMetrics::for_self()))
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

    /// The text exposition of every family, with the `le` strings of PROTOCOL.md §4.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding well-formed families into memory does not fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics");
        let mut text = String::from_utf8(out).expect("metrics text is UTF-8");
        for (theirs, ours) in LE_SPELLINGS.get_or_init(le_spellings) {
            text = text.replace(theirs.as_str(), ours);
        }
        text
    }
}

/// `le="…"` as the prometheus crate prints each bound (Rust's `Display`: `0.000005`, `1`), and as
/// PROTOCOL.md §4 and python-ws print it, for the bounds where the two differ.
static LE_SPELLINGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

fn le_spellings() -> Vec<(String, String)> {
    BUCKETS
        .iter()
        .map(|&b| (format!("le=\"{b}\""), format!("le=\"{}\"", canonical_le(b))))
        .filter(|(theirs, ours)| theirs != ours)
        .collect()
}

/// A bucket bound in the OpenMetrics canonical form Prometheus 3 normalises `le` to (and Python's
/// `repr` prints): the shortest round-trip digits, exponent form below 1e-4 or from 1e16 with a
/// signed exponent of at least two digits, and `.0` on whole numbers. Rust's `Debug` already picks
/// the same digits and the same switch to exponent form (`5e-6`, `0.0001`, `1.0`); only the
/// exponent is spelled differently.
pub fn canonical_le(bound: f64) -> String {
    if bound.is_infinite() {
        return if bound > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let debug = format!("{bound:?}");
    match debug.split_once('e') {
        None => debug,
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

/// The crate's process collector with `process_cpu_seconds_total` as a float counter.
///
/// prometheus 0.13's `ProcessCollector` exports CPU time as an `IntCounter` of whole seconds
/// (tikv/rust-prometheus#451), so at light load the dashboard's CPU panel is a staircase. This
/// keeps every other family it exports and replaces that one with utime+stime from
/// /proc/self/stat divided by the clock tick rate, a float (10 ms resolution at 100 Hz).
#[cfg(target_os = "linux")]
mod process {
    use prometheus::core::{Collector, Desc};
    use prometheus::process_collector::ProcessCollector;
    use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};

    pub const CPU_NAME: &str = "process_cpu_seconds_total";
    pub const CPU_HELP: &str = "Total user and system CPU time spent in seconds.";

    pub struct ProcessMetrics {
        inner: ProcessCollector,
        cpu_desc: Desc,
    }

    impl ProcessMetrics {
        pub fn for_self() -> ProcessMetrics {
            ProcessMetrics {
                inner: ProcessCollector::for_self(),
                cpu_desc: Desc::new(CPU_NAME.into(), CPU_HELP.into(), vec![], Default::default())
                    .expect("valid descriptor"),
            }
        }
    }

    /// CPU seconds (user + system) this process has used, from /proc/self/stat.
    pub fn cpu_seconds() -> Option<f64> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        let ticks = procfs::ticks_per_second();
        (ticks > 0).then(|| (stat.utime + stat.stime) as f64 / ticks as f64)
    }

    impl Collector for ProcessMetrics {
        fn desc(&self) -> Vec<&Desc> {
            let mut descs: Vec<&Desc> = self
                .inner
                .desc()
                .into_iter()
                .filter(|d| d.fq_name != CPU_NAME)
                .collect();
            descs.push(&self.cpu_desc);
            descs
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let mut families: Vec<MetricFamily> = self
                .inner
                .collect()
                .into_iter()
                .filter(|f| f.get_name() != CPU_NAME)
                .collect();
            if let Some(secs) = cpu_seconds() {
                let mut counter = Counter::default();
                counter.set_value(secs);
                let mut metric = Metric::default();
                metric.set_counter(counter);
                let mut family = MetricFamily::default();
                family.set_name(CPU_NAME.into());
                family.set_help(CPU_HELP.into());
                family.set_field_type(MetricType::COUNTER);
                family.mut_metric().push(metric);
                families.insert(0, family);
            }
            families
        }
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

    #[test]
    fn le_strings_are_the_canonical_ones() {
        let got: Vec<String> = BUCKETS.iter().map(|&b| canonical_le(b)).collect();
        let want = [
            "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5",
        ];
        assert_eq!(got, want);
        assert_eq!(canonical_le(f64::INFINITY), "+Inf");
        assert_eq!(canonical_le(1e16), "1e+16");
        assert_eq!(canonical_le(1.5e300), "1.5e+300");
        assert_eq!(canonical_le(1e-100), "1e-100");
    }

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
        match value(&scrape(m), process::CPU_NAME, None) {
            Value::Counter(v) => *v,
            other => panic!("{} is {other:?}, not a counter", process::CPU_NAME),
        }
    }

    /// Busy-loops on this thread until it has used `cpu` of CPU time (bounded by 5 s of wall).
    #[cfg(target_os = "linux")]
    fn burn_cpu(cpu: std::time::Duration) {
        let start = process::cpu_seconds().unwrap();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        while process::cpu_seconds().unwrap() - start < cpu.as_secs_f64()
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
            s.docs.get(process::CPU_NAME).map(String::as_str),
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
