//! What a run's handshakes have done so far, live: how many succeeded, how many failed and the
//! first failure, and how many connections are open now. Two things read it while the mode runs:
//! the watch that ends a run in which nothing works ([`Tally::hopeless`]), and the progress line
//! (`progress.rs`).
//!
//! A run in which every handshake is refused, or answered 404, used to print a normal-looking
//! row with 0 req/s and exit 0, after holding or retrying for its whole duration (885 refused
//! connects in one `sessions` run). A run in which *some* handshakes fail is a measurement (the
//! failures are in its row); one in which *none* succeeds is not, and says so at once.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Fail;

/// Failed handshakes, with none succeeding, after which a run is given up.
pub const GIVE_UP_AFTER_FAILURES: u64 = 32;
/// Time since the first failure, with none succeeding, after which a run is given up (the whole
/// first second's handshakes failed).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connections open now (each successful connect holds an [`Open`] while it lives).
    open: Arc<AtomicI64>,
    /// What the run is doing now, since when, and for how long it expects to (progress line).
    phase: Mutex<Option<(&'static str, Instant, Option<Duration>)>>,
    /// When the first handshake failed, and why (as [`reason`] says it).
    first_failure: Mutex<Option<(Instant, String)>>,
}

/// Counts one connection as open while it lives.
pub struct Open(Arc<AtomicI64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tally {
    /// A handshake succeeded; the returned guard counts the connection open until dropped.
    pub fn succeeded(&self) -> Open {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(self.open.clone())
    }

    pub fn failed(&self, f: &Fail) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some((Instant::now(), reason(f)));
        }
    }

    /// Handshakes done elsewhere (a hold's helper processes), as they reported them.
    pub fn add(&self, ok: u64, failed: u64, first: Option<String>) {
        self.ok.fetch_add(ok, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        let mut slot = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = first.map(|f| (Instant::now(), f));
        }
    }

    /// The run enters a phase (`"connecting"`, `"holding"`...), expected to last `expect` if known.
    pub fn phase(&self, name: &'static str, expect: Option<Duration>) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((name, Instant::now(), expect));
    }

    /// The phase now: its name, time in it, and its expected length.
    pub fn current_phase(&self) -> Option<(&'static str, Duration, Option<Duration>)> {
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        phase.map(|(name, from, expect)| (name, from.elapsed(), expect))
    }

    pub fn open_now(&self) -> u64 {
        self.open.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn failed_so_far(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Why the first failed handshake failed.
    pub fn first_reason(&self) -> Option<String> {
        let first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        first.as_ref().map(|(_, why)| why.clone())
    }

    pub fn succeeded_so_far(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Some handshakes were tried and not one succeeded: why, in one line. `None` otherwise.
    pub fn nothing_worked(&self, url: &str) -> Option<String> {
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        if ok > 0 || failed == 0 {
            return None;
        }
        let first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        let why = first.as_ref().map_or("?", |(_, why)| why.as_str());
        Some(format!(
            "no handshake succeeded: {failed} of {failed} to {url} failed ({why})"
        ))
    }

    /// The run should be given up: no handshake has succeeded, and either
    /// [`GIVE_UP_AFTER_FAILURES`] have failed or the first failure is [`GIVE_UP_AFTER`] old.
    pub fn hopeless(&self, url: &str) -> Option<String> {
        let failed = self.failed.load(Ordering::Relaxed);
        let since_first = self
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(t, _)| t.elapsed());
        let give_up =
            failed >= GIVE_UP_AFTER_FAILURES || since_first.is_some_and(|d| d >= GIVE_UP_AFTER);
        if give_up {
            self.nothing_worked(url)
        } else {
            None
        }
    }

    /// Resolves, with the line to print, once the run is [`hopeless`](Tally::hopeless); never if
    /// any handshake succeeds first. Polls: a few atomics every 50 ms.
    pub async fn given_up(&self, url: &str) -> String {
        let t0 = Instant::now();
        loop {
            if self.succeeded_so_far() > 0 {
                return std::future::pending().await;
            }
            if let Some(why) = self.hopeless(url) {
                return format!("{why}; stopped after {:.1} s", t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What failed, as a person would say it: "connection refused", "HTTP 404 Not Found".
pub fn reason(f: &Fail) -> String {
    match f.kind {
        "refused" => "connection refused".into(),
        k if k.starts_with("http_") => f.detail.clone(),
        k => format!("{k}: {}", f.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "ws://127.0.0.1:9/ws";

    #[test]
    fn one_success_means_the_run_measures() {
        let t = Tally::default();
        assert_eq!(t.nothing_worked(URL), None, "nothing tried yet");
        for _ in 0..GIVE_UP_AFTER_FAILURES {
            t.failed(&Fail::new("http_503", "HTTP 503 Service Unavailable"));
        }
        let _open = t.succeeded();
        assert_eq!(t.open.load(Ordering::Relaxed), 1);
        assert_eq!((t.nothing_worked(URL), t.hopeless(URL)), (None, None));
        drop(_open);
        assert_eq!(t.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn gives_up_after_enough_failures_and_says_why() {
        let t = Tally::default();
        t.failed(&Fail::new("http_404", "HTTP 404 Not Found"));
        assert_eq!(t.hopeless(URL), None, "one failure, a moment ago");
        assert_eq!(
            t.nothing_worked(URL).as_deref(),
            Some(
                "no handshake succeeded: 1 of 1 to ws://127.0.0.1:9/ws failed (HTTP 404 Not Found)"
            )
        );
        for _ in 1..GIVE_UP_AFTER_FAILURES {
            t.failed(&Fail::new("refused", "Connection refused (os error 111)"));
        }
        let why = t.hopeless(URL).unwrap();
        assert!(
            why.contains("32 of 32") && why.ends_with("(HTTP 404 Not Found)"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn gives_up_a_second_after_the_first_failure() {
        let t = Tally::default();
        t.failed(&Fail::new("refused", "Connection refused (os error 111)"));
        let t0 = Instant::now();
        let line = t.given_up(URL).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert!(
            line.contains("(connection refused); stopped after"),
            "{line}"
        );
        // Helpers' reports count as handshakes too.
        let t = Tally::default();
        t.add(0, 5, Some("timeout: no welcome within 5s".into()));
        assert!(t.nothing_worked(URL).unwrap().contains("5 of 5"));
        t.add(1, 0, None);
        assert_eq!(t.nothing_worked(URL), None);
    }
}
