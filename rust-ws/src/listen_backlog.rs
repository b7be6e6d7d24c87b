//! Workaround: raise the listen backlog Rocket leaves at 128 to the 1024 PROTOCOL.md §1 asks for.
//!
//! Twin: python-ws passes `backlog=1024` to `tornado.netutil.bind_sockets` in
//! python-ws/python_ws/__main__.py; Tornado has the setting, Rocket does not.
//!
//! Rocket 0.5 binds with `tokio::net::TcpListener::bind` and offers no backlog setting. tokio used
//! to pass 1024, but since mio 1.1 (tokio >= 1.48 needs mio >= 1.2) it passes std's 128, which
//! overflows under connection bursts. On Linux, `listen()` on a socket that is already listening
//! just updates its backlog, so once Rocket has bound (at liftoff) [`fairing`] finds Rocket's
//! socket among our own file descriptors by its local address and calls `listen(1024)` again.
//! The effect is visible with `ss -ltn`: the listening socket's `Send-Q` is the backlog (the
//! rust-ws binary test checks exactly that).

use std::net::SocketAddr;

use rocket::fairing::AdHoc;

use crate::log_warn;

/// The listen backlog PROTOCOL.md §1 asks of both servers.
pub const LISTEN_BACKLOG: i32 = 1024;

/// The liftoff fairing that applies [`raise_listen_backlog`] to the address Rocket bound, and
/// warns if no socket was changed. Attach it before the start-up line, which reports the backlog.
pub fn fairing() -> AdHoc {
    AdHoc::on_liftoff("listen backlog 1024", |rocket| {
        Box::pin(async move {
            let rc = rocket.config();
            if raise_listen_backlog(SocketAddr::new(rc.address, rc.port)) == 0 {
                log_warn!("could not raise the listen backlog to {LISTEN_BACKLOG}");
            }
        })
    })
}

/// Raises the backlog of the listening socket bound to `addr` to [`LISTEN_BACKLOG`]; returns how
/// many sockets were changed (1 when it worked).
///
/// An accepted connection shares the listener's local address, but `listen()` fails on it
/// harmlessly (EINVAL), so it is not counted.
#[cfg(target_os = "linux")]
pub fn raise_listen_backlog(addr: SocketAddr) -> usize {
    use std::os::fd::{BorrowedFd, RawFd};

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut raised = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is open (listed in /proc/self/fd) and only borrowed for the
        // getsockname/listen calls below; nothing here closes it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let bound_here = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a == addr);
        if bound_here
            && sock.r#type().ok() == Some(socket2::Type::STREAM)
            && sock.listen(LISTEN_BACKLOG).is_ok()
        {
            raised += 1;
        }
    }
    raised
}

/// Elsewhere a repeated `listen()` is not known to update a live socket: report nothing raised.
#[cfg(not(target_os = "linux"))]
pub fn raise_listen_backlog(_addr: SocketAddr) -> usize {
    0
}
