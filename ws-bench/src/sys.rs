//! What the kernel can tell about a process: resident memory, CPU time, file-descriptor limits,
//! and which process owns the socket a server listens on.
//!
//! `/proc/PID/{stat,status,fd,net/tcp,net/tcp6}` are read and parsed by the `procfs` crate; the limit is read and
//! raised through `rustix`'s safe `getrlimit`/`setrlimit`. This file only picks the fields
//! ws-bench reports and puts them in its units (seconds, bytes, percent of a core).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use procfs::net::{TcpNetEntry, TcpState};
use procfs::process::{FDTarget, Process, Stat, Status};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

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
    // No maximum means unlimited.
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    let wanted: u64 = 1 << 20;
    if hard < wanted && set_nofile(wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    set_nofile(hard, hard)?;
    Ok(hard)
}

/// This process's current (soft) open-files limit; `None` if unlimited.
pub fn nofile_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let limit = |n: u64| (n != u64::MAX).then_some(n);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit(soft),
            maximum: limit(hard),
        },
    )
    .map_err(io::Error::from)
}

fn process(pid: Option<i32>) -> Option<Process> {
    match pid {
        Some(p) => Process::new(p).ok(),
        None => Process::myself().ok(),
    }
}

/// utime and stime of a parsed `/proc/PID/stat`, in seconds.
fn cpu_times(stat: &Stat, ticks_per_second: u64) -> CpuTimes {
    let ticks = ticks_per_second.max(1) as f64;
    CpuTimes {
        user: stat.utime as f64 / ticks,
        sys: stat.stime as f64 / ticks,
    }
}

/// `VmRSS` of a parsed `/proc/PID/status`, in bytes.
fn rss_bytes(status: &Status) -> Option<u64> {
    status.vmrss.map(|kib| kib * 1024)
}

/// `VmHWM` (peak RSS) of a parsed `/proc/PID/status`, in bytes.
fn peak_rss_bytes(status: &Status) -> Option<u64> {
    status.vmhwm.map(|kib| kib * 1024)
}

/// CPU time of process `pid` (this process if `None`) from `/proc/PID/stat`.
pub fn proc_cpu(pid: Option<i32>) -> Option<CpuTimes> {
    let stat = process(pid)?.stat().ok()?;
    Some(cpu_times(&stat, procfs::ticks_per_second()))
}

/// CPU time this process has used, user + system, in seconds, to the nanosecond
/// (`CLOCK_PROCESS_CPUTIME_ID`). `/proc/self/stat` counts in clock ticks (10 ms): a short run's
/// client CPU, a tick or two, read as 0 or 2 ticks depending on where the window fell.
pub fn self_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Resident memory of process `pid` (this process if `None`) from `/proc/PID/status`.
pub fn proc_rss(pid: Option<i32>) -> Option<u64> {
    rss_bytes(&process(pid)?.status().ok()?)
}

/// This process's peak resident memory.
pub fn self_peak_rss() -> Option<u64> {
    peak_rss_bytes(&process(None)?.status().ok()?)
}

/// Does a LISTEN entry accept connections to `to`? Bound to its port and to its address, to the
/// unspecified address (0.0.0.0, ::), or to its IPv4 address mapped into IPv6.
fn listens_for(e: &TcpNetEntry, to: SocketAddr) -> bool {
    let ip = e.local_address.ip();
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    e.state == TcpState::Listen
        && e.local_address.port() == to.port()
        && (ip.is_unspecified() || mapped(ip) == mapped(to.ip()))
}

/// Socket inodes listening for connections to `to`, in the network namespace of process `pid`
/// (this process's if `None`): a server in a container listens in its own.
pub fn listening_inodes(pid: Option<i32>, to: SocketAddr) -> Vec<u64> {
    let Some(p) = process(pid) else {
        return Vec::new();
    };
    let entries = p.tcp().into_iter().chain(p.tcp6()).flatten();
    entries
        .filter(|e| listens_for(e, to))
        .map(|e| e.inode)
        .collect()
}

/// The socket inodes among process `pid`'s open files; `None` if they can't be read.
fn socket_inodes(p: &Process) -> Option<HashSet<u64>> {
    let fds = p.fd().ok()?;
    Some(
        fds.flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) => Some(inode),
                _ => None,
            })
            .collect(),
    )
}

/// Does process `pid` hold one of these sockets? `None` if its open files can't be read.
pub fn holds_any(pid: i32, inodes: &[u64]) -> Option<bool> {
    let mine = socket_inodes(&Process::new(pid).ok()?)?;
    Some(inodes.iter().any(|i| mine.contains(i)))
}

/// Every process that holds one of these sockets (a forked server's parent and children all do).
pub fn holders(inodes: &[u64]) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| socket_inodes(p).is_some_and(|s| inodes.iter().any(|i| s.contains(i))))
        .map(|p| p.pid)
        .collect()
}

/// A process's command name (`/proc/PID/comm`), for messages.
pub fn comm(pid: i32) -> String {
    Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| s.comm)
        .unwrap_or_else(|_| "?".into())
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
    use procfs::FromRead;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        // A real /proc/PID/stat line with the command name replaced: fields after it are counted
        // from the last `)`, so utime (250) and stime (75) must still be found.
        let line = "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 \
                    100 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 \
                    0 0 0 0 0 0 0 0";
        let stat = Stat::from_read(line.as_bytes()).unwrap();
        assert_eq!(stat.comm, "tokio (rt) w");
        assert_eq!(
            cpu_times(&stat, 100),
            CpuTimes {
                user: 2.5,
                sys: 0.75
            }
        );
    }

    #[test]
    fn status_rss() {
        let status = "Name:\trust-ws\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\nNgid:\t0\n\
             Pid:\t7\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\n\
             Groups:\t \nVmPeak:\t   30000 kB\nVmSize:\t   30000 kB\nVmHWM:\t   20480 kB\n\
             VmRSS:\t    8192 kB\nThreads:\t3\nSigQ:\t0/96364\nSigPnd:\t0000000000000000\n\
             ShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\n\
             SigCgt:\t0000000000000440\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
             CapEff:\t000001fffeffffff\n";
        let s = Status::from_read(status.as_bytes()).unwrap();
        assert_eq!(rss_bytes(&s), Some(8192 * 1024));
        assert_eq!(peak_rss_bytes(&s), Some(20480 * 1024));
        // A kernel thread has no memory lines at all.
        let kthread = status.replace("VmRSS:\t    8192 kB\n", "");
        let s = Status::from_read(kthread.as_bytes()).unwrap();
        assert_eq!(rss_bytes(&s), None);
    }

    #[test]
    fn own_process_is_readable() {
        let rss = proc_rss(None).unwrap();
        assert!(rss > 0);
        // The peak, read after, is at least what was resident before.
        assert!(self_peak_rss().unwrap() >= rss);
        assert!(proc_cpu(None).is_some());
        let c0 = self_cpu_seconds();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(3) {}
        assert!(self_cpu_seconds() > c0, "a busy 3 ms shows");
        assert!(usable_cores() >= 1);
        assert!(proc_rss(Some(i32::MAX)).is_none(), "no such process");
    }

    #[test]
    fn nofile_can_be_raised() {
        let n = raise_nofile().unwrap();
        assert!(n >= 1024, "soft limit {n}");
        assert_eq!(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX), n);
    }

    #[test]
    fn finds_the_process_that_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inodes = listening_inodes(None, addr);
        assert_eq!(inodes.len(), 1, "{addr}");
        let me = std::process::id() as i32;
        assert_eq!(holds_any(me, &inodes), Some(true));
        assert_eq!(holders(&inodes), vec![me]);
        // Another port, or the same port at another loopback address: not this listener.
        let other = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        assert!(!listening_inodes(None, other).contains(&inodes[0]));
        let elsewhere = SocketAddr::new("127.0.0.9".parse().unwrap(), addr.port());
        assert!(listening_inodes(None, elsewhere).is_empty());
        // A listener on every address serves 127.0.0.1 and 127.0.0.9 alike.
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        let to = SocketAddr::new("127.0.0.9".parse().unwrap(), port);
        assert_eq!(listening_inodes(None, to).len(), 1);
        assert!(comm(me).starts_with("ws_bench") || comm(me).starts_with("ws-bench"));
    }

    #[test]
    fn percent_of_a_core() {
        assert_eq!(pct(0.5, Duration::from_secs(1)), 50.0);
        assert_eq!(pct(1.0, Duration::ZERO), 0.0);
    }
}
