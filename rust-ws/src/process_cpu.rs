//! Workaround: prometheus 0.13's process collector exports `process_cpu_seconds_total` in whole
//! seconds (tikv/rust-prometheus#451); this collector exports it as a float.
//!
//! Twin: none. python-ws's client (prometheus_client's `ProcessCollector`) already exports CPU
//! seconds as a float, so python_ws/metrics.py registers it as it is.
//!
//! The crate's `ProcessCollector` keeps CPU time in an `IntCounter`, so at light load the
//! dashboard's CPU panel is a staircase and a rate over a short window reads 0 or 1 core.
//! [`ProcessMetrics`] keeps every other family the crate's collector exports and replaces that one
//! with utime+stime from /proc/self/stat divided by the clock tick rate, a float (10 ms resolution
//! at 100 Hz). Linux only, as the crate's collector is (it reads /proc).
#![cfg(target_os = "linux")]

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
