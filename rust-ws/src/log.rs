//! Logging: the level from `LOG_LEVEL` and the `log_debug!`/`log_info!`/`log_warn!` macros.
//!
//! Twin: python-ws configures the stdlib `logging` module in python-ws/python_ws/__main__.py.
//!
//! Rocket's logger filters by Rocket's own level, which is kept "off" unless LOG_LEVEL=debug
//! (Rocket at "normal" logs every request, see `figment` in lib.rs). Our few lines go straight to
//! stderr instead, one line each, so a level check is one relaxed atomic load. The `log` crate's
//! records (Rocket's, hyper's) go through accept.rs's logger, which is there for Rocket's accept
//! errors and prints the rest at LOG_LEVEL=debug.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

/// The active level as `LogLevel as u8`; `Info` until [`set_level`] runs.
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the process-wide level. [`crate::rocket`] calls it with the configured `LOG_LEVEL`.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    // `log` records below Warn (accept.rs prints them) are built only when they will be printed.
    ::log::set_max_level(if level == LogLevel::Debug {
        ::log::LevelFilter::Info
    } else {
        ::log::LevelFilter::Warn
    });
}

/// Whether a line at `level` is written.
pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::Debug) {
            eprintln!("DEBUG rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::Info) {
            eprintln!("INFO rust-ws: {}", format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::Warning) {
            eprintln!("WARNING rust-ws: {}", format_args!($($arg)*));
        }
    };
}
