//! Logging: the level from `LOG_LEVEL` and the `log_debug!`/`log_info!`/`log_warn!` macros.
//!
//! Twin: python-ws configures the stdlib `logging` module in python-ws/python_ws/__main__.py.
//!
//! Rocket's logger filters by Rocket's own level, which is kept "off" unless LOG_LEVEL=debug
//! (Rocket at "normal" logs every request, see `figment` in lib.rs). Our few lines go straight to
//! stderr instead, one line each, so a level check is one relaxed atomic load.
//!
//! [`install_log_bridge`] takes the `log` crate's logger slot before Rocket can (Rocket then
//! leaves it alone) for one record: Rocket's accept loop (rocket_http's `Incoming`) backs off
//! 250 ms after an accept error such as EMFILE and says so with a `log` warning per attempt,
//! four a second, which with Rocket's logger off reached nobody. PROTOCOL.md §2 (Out of file
//! descriptors) wants one warning per 10 s naming the limit; the bridge writes exactly that.
//! Every other record is printed only at LOG_LEVEL=debug, as Rocket's own logger did then
//! (plainly, one line each). Twin: python-ws/python_ws/accept.py.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::LogLevel;

/// The active level as `LogLevel as u8`; `Info` until [`set_level`] runs.
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the process-wide level. [`crate::rocket`] calls it with the configured `LOG_LEVEL`.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    // Records below Warn are built only when they will be printed.
    ::log::set_max_level(if level == LogLevel::Debug {
        ::log::LevelFilter::Info
    } else {
        ::log::LevelFilter::Warn
    });
}

/// At most one accept-error warning per this long.
pub const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Installs the `log` logger described in the module docs; later calls (tests build several
/// servers in one process) keep the first one.
pub fn install_log_bridge() {
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

/// Whether a line at `level` is written.
pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::LogLevel::Debug) {
            eprintln!("DEBUG rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::LogLevel::Info) {
            eprintln!("INFO rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::LogLevel::Warning) {
            eprintln!("WARNING rust-ws: {}", format_args!($($arg)*));
        }
    };
}
