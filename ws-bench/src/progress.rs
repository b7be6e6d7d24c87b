//! A progress line on stderr while a run goes on: its phase, time in it out of what is expected,
//! connections open (and handshakes failed, if any). Long runs used to print nothing until their
//! row, and `hold` added an unannounced settle.
//!
//! Only when stderr is a terminal (`std::io::IsTerminal`): scripts that capture stderr (bench/,
//! the tests) get nothing new. One line, rewritten in place with `\r` at most four times a
//! second, and erased before the report or the last line is printed.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::modes::Tally;

/// How often the line is rewritten.
const EVERY: Duration = Duration::from_millis(250);

/// Rewrites the line until the task is aborted; call [`clear`] after.
pub async fn show(tally: Arc<Tally>) {
    // Bounded: a day of updates at most.
    for _ in 0..(86_400_000 / EVERY.as_millis() as u64) {
        tokio::time::sleep(EVERY).await;
        let text = line(
            tally.current_phase(),
            tally.open_now(),
            tally.failed_so_far(),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{text}");
        let _ = err.flush();
    }
}

/// Erases the progress line.
pub fn clear() {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

/// The line: `ws-bench: holding 3.2/10 s, 10000 open`.
pub fn line(phase: Option<(&str, Duration, Option<Duration>)>, open: u64, failed: u64) -> String {
    let mut s = String::from("ws-bench: ");
    match phase {
        Some((name, t, Some(expect))) => s.push_str(&format!(
            "{name} {:.1}/{:.0} s",
            t.as_secs_f64(),
            expect.as_secs_f64()
        )),
        Some((name, t, None)) => s.push_str(&format!("{name} {:.1} s", t.as_secs_f64())),
        None => s.push_str("starting"),
    }
    s.push_str(&format!(", {open} open"));
    if failed > 0 {
        s.push_str(&format!(", {failed} handshakes failed"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_phase_time_and_connections() {
        let secs = Duration::from_secs_f64;
        assert_eq!(
            line(Some(("holding", secs(3.24), Some(secs(10.0)))), 10_000, 0),
            "ws-bench: holding 3.2/10 s, 10000 open"
        );
        assert_eq!(
            line(Some(("connecting", secs(1.0), None)), 12, 3),
            "ws-bench: connecting 1.0 s, 12 open, 3 handshakes failed"
        );
        assert_eq!(line(None, 0, 0), "ws-bench: starting, 0 open");
        assert!(
            !line(None, 0, 0).contains('\r'),
            "one line, no control characters"
        );
    }
}
