//! Workaround: Rocket's accept loop reports an accept error (EMFILE, ENFILE) with a `log` warning
//! per retry that nobody sees; PROTOCOL.md §2 (Out of file descriptors) wants one warning per 10 s
//! naming the limit.
//!
//! Twin: python-ws/python_ws/accept.py, which adds the back-off itself (Tornado has none) and the
//! same rate-limited warning.
//!
//! Rocket's accept loop (rocket_http's `Incoming`) already backs off: it sleeps 250 ms after an
//! accept error, within PROTOCOL.md's bound of 1 s, and open connections are served meanwhile. But
//! it says so with a `log` warning per attempt, four a second, and with Rocket's logger off (log.rs
//! says why) those reached nobody. Rocket has no hook for accept errors, so [`install`] takes the
//! `log` crate's logger slot before Rocket can (Rocket then leaves it alone) and turns those
//! records into one warning per [`ACCEPT_WARN_EVERY`] naming the limit, counting the rest. Taking
//! the slot takes every other record too: those are printed only at LOG_LEVEL=debug, as Rocket's
//! own logger did then (plainly, one line each).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::LogLevel;
use crate::log::enabled;

/// At most one accept-error warning per this long.
pub const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Installs the `log` logger described in the module docs; later calls (tests build several
/// servers in one process) keep the first one.
pub fn install() {
    static BRIDGE: Bridge = Bridge;
    let _ = ::log::set_logger(&BRIDGE);
}

struct Bridge;

impl ::log::Log for Bridge {
    fn enabled(&self, _: &::log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &::log::Record<'_>) {
        if record.target().starts_with("rocket_http::listener")
            && record.level() == ::log::Level::Warn
        {
            let text = record.args().to_string();
            if text.starts_with("accept error") {
                accept_error(&text);
                return;
            }
        }
        if enabled(LogLevel::Debug) {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// One warning per [`ACCEPT_WARN_EVERY`], naming the limit; the rest are counted.
fn accept_error(text: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    // Milliseconds since START of the last warning, +1 (0: none yet).
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    let due = last == 0 || now - last >= ACCEPT_WARN_EVERY.as_millis() as u64;
    if !due
        || LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let more = match SUPPRESSED.swap(0, Ordering::Relaxed) {
        0 => String::new(),
        n => format!("; {n} more since the last warning"),
    };
    // Rocket's text is "accept error {error}; recovery attempt in {n}ms".
    let rest = text.strip_prefix("accept error ").unwrap_or(text);
    let (error, pause) = rest
        .split_once("; recovery attempt in ")
        .unwrap_or((rest, "a moment"));
    crate::log_warn!(
        "accept failed: {error}: at {}; not accepting for {pause}, open connections are served \
         as usual{more}",
        describe_limit(text)
    );
}

/// The limit an accept error hit, with its value. Only the error's text reaches the logger.
fn describe_limit(text: &str) -> String {
    if text.contains("os error 23") {
        // Reading fs.file-max needs a descriptor, which is what is missing.
        return "the system-wide open-files limit (fs.file-max)".to_string();
    }
    if text.contains("os error 24") {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return format!(
                "the process open-files limit (RLIMIT_NOFILE soft={}, hard={})",
                limit.rlim_cur, limit.rlim_max
            );
        }
        return "the process open-files limit (RLIMIT_NOFILE)".to_string();
    }
    "a resource limit".to_string()
}
