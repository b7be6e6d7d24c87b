//! What the kernel can tell about a process: resident memory, CPU time, file-descriptor limits.

use std::io;
use std::time::Duration;

/// CPU time a process has used so far, user and system, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub sys: f64,
}

impl CpuTimes {
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: (self.user - earlier.user).max(0.0),
            sys: (self.sys - earlier.sys).max(0.0),
        }
    }
}

/// Raises this process's `RLIMIT_NOFILE` as far as it will go and returns the new soft limit.
///
/// Root may raise the hard limit too (up to `fs.nr_open`, 1,048,576 by default); anyone else gets
/// the soft limit lifted to the hard one.
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct we hand them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        let wanted: libc::rlim_t = 1 << 20;
        if lim.rlim_max < wanted {
            let both = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &both) == 0 {
                return Ok(wanted);
            }
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_max)
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses utime and stime (fields 14 and 15) out of a `/proc/PID/stat` line.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str, ticks: f64) -> Option<CpuTimes> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the `)`: f[0] is field 3 (state), so field N is f[N - 3].
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(CpuTimes {
        user: utime / ticks,
        sys: stime / ticks,
    })
}

/// Parses `VmRSS` (bytes) out of `/proc/PID/status`.
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Parses `VmHWM` (peak RSS, bytes) out of `/proc/PID/status`.
pub fn parse_status_hwm(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn proc_cpu(pid: Option<i32>) -> Option<CpuTimes> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?, clock_ticks())
}

pub fn proc_rss(pid: Option<i32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    parse_status_rss(&std::fs::read_to_string(path).ok()?)
}

pub fn self_peak_rss() -> Option<u64> {
    parse_status_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Cores this process may run on (honours `taskset`).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU use over a wall-clock window, in percent of one core.
pub fn pct(cpu_seconds: f64, wall: Duration) -> f64 {
    let w = wall.as_secs_f64();
    if w <= 0.0 {
        0.0
    } else {
        100.0 * cpu_seconds / w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let line = "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000 200";
        let t = parse_stat(line, 100.0).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                user: 2.5,
                sys: 0.75
            }
        );
    }

    #[test]
    fn status_rss() {
        let s = "Name:\trust-ws\nVmHWM:\t   20480 kB\nVmRSS:\t    8192 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(s), Some(8192 * 1024));
        assert_eq!(parse_status_hwm(s), Some(20480 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(proc_rss(None).unwrap() > 0);
        assert!(proc_cpu(None).is_some());
        assert!(usable_cores() >= 1);
    }

    #[test]
    fn nofile_can_be_raised() {
        let n = raise_nofile().unwrap();
        assert!(n >= 1024, "soft limit {n}");
    }

    #[test]
    fn percent_of_a_core() {
        assert_eq!(pct(0.5, Duration::from_secs(1)), 50.0);
        assert_eq!(pct(1.0, Duration::ZERO), 0.0);
    }
}
