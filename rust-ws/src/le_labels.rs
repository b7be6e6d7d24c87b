//! Workaround: the prometheus crate spells histogram `le` labels its own way; PROTOCOL.md §4 and
//! Prometheus 3 want the canonical spelling.
//!
//! Twin: none. python-ws's client (prometheus_client) prints bounds with Python's `repr`, which is
//! already the canonical form, so python_ws/metrics.py has nothing to fix.
//!
//! prometheus 0.13 prints a bound with Rust's `Display` (`le="0.000005"`, `le="1"`). Prometheus 3
//! normalises `le` to the OpenMetrics canonical form (`5e-06`, `1.0`), and PROTOCOL.md §4 asks both
//! servers to expose exactly those strings, so that series match across the twins and across
//! Prometheus versions. The encoder has no option for it: metrics.rs renders the text as the crate
//! does and [`LeLabels::respell`] replaces the `le` strings that differ.

/// `le="…"` as the prometheus crate prints each bound and as PROTOCOL.md §4 spells it, for the
/// bounds where the two differ.
pub struct LeLabels(Vec<(String, String)>);

impl LeLabels {
    pub fn for_buckets(buckets: &[f64]) -> LeLabels {
        LeLabels(
            buckets
                .iter()
                .map(|&b| (format!("le=\"{b}\""), format!("le=\"{}\"", canonical_le(b))))
                .filter(|(theirs, ours)| theirs != ours)
                .collect(),
        )
    }

    /// The exposition `text` with every `le` string in the canonical spelling.
    pub fn respell(&self, mut text: String) -> String {
        for (theirs, ours) in &self.0 {
            text = text.replace(theirs.as_str(), ours);
        }
        text
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_strings_are_the_canonical_ones() {
        let got: Vec<String> = crate::metrics::BUCKETS
            .iter()
            .map(|&b| canonical_le(b))
            .collect();
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

    #[test]
    fn respells_only_the_le_strings_that_differ() {
        let le = LeLabels::for_buckets(&[0.000005, 0.5, 1.0]);
        let text = "x_bucket{le=\"0.000005\"} 0\nx_bucket{le=\"0.5\"} 0\nx_bucket{le=\"1\"} 0\n";
        assert_eq!(
            le.respell(text.to_string()),
            "x_bucket{le=\"5e-06\"} 0\nx_bucket{le=\"0.5\"} 0\nx_bucket{le=\"1.0\"} 0\n"
        );
    }
}
