"""Accepting connections, with a back-off when the process is out of file descriptors.

Tornado's accept handler (`tornado.netutil.add_accept_handler`, used by `HTTPServer.add_sockets`)
lets `EMFILE`/`ENFILE` escape from `accept()`. The pending connection stays in the listen queue,
so the listening socket stays readable and the event loop calls the handler again at once: a busy
loop that logs a traceback per turn (measured: 83% CPU and 163,000 tracebacks in 90 s) while the
connections already open starve. PROTOCOL.md §2 (Out of file descriptors) asks for a back-off of
at most 1 s, one warning per 10 s naming the limit, and service as usual for open connections.

`Acceptor` is Tornado's accept loop with that added: on a resource error it stops watching the
socket for `BACKOFF_SECS`, then tries again. What it accepts goes to the server's own
`_handle_connection`, exactly where Tornado's handler sends it (tornado is pinned exactly in
pyproject.toml for this and for the WebSocket workarounds that connection.py composes).

Twin: rust-ws/src/accept.rs (Rocket's accept loop, rocket_http's `Incoming`, sleeps 250 ms after
such an error; rust-ws adds the rate-limited warning there).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Iterable

from tornado.ioloop import IOLoop
from tornado.tcpserver import TCPServer

log = logging.getLogger("python_ws")

# The same pause as Rocket's accept loop; well under the 1 s PROTOCOL.md allows.
BACKOFF_SECS = 0.25
# At most one warning per this many seconds.
WARN_EVERY_SECS = 10.0
# Connections accepted per readiness event before other work gets a turn (Tornado's value).
ACCEPT_BATCH = 128


def describe_limit(err: OSError) -> str:
    """The limit an accept error hit, in words, with its value."""
    if err.errno == errno.ENFILE:
        try:
            with open("/proc/sys/fs/file-max") as f:
                return f"the system-wide open-files limit (fs.file-max={f.read().strip()})"
        except OSError:  # at the limit, even this open can fail
            return "the system-wide open-files limit (fs.file-max)"
    if err.errno == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"the process open-files limit (RLIMIT_NOFILE soft={soft}, hard={hard})"
    return "a resource limit"


class Acceptor:
    """Accepts on `sockets` for `server` until `stop()`."""

    def __init__(self, server: TCPServer, sockets: Iterable[socket.socket]) -> None:
        self.server = server
        self.sockets = list(sockets)
        self.loop = IOLoop.current()
        self.stopped = False
        self._paused: set[socket.socket] = set()
        self._last_warning = -WARN_EVERY_SECS
        self._suppressed = 0

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_handler(sock, self._accept, IOLoop.READ)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets."""
        if self.stopped:
            return
        self.stopped = True
        for sock in self.sockets:
            if sock not in self._paused:
                self.loop.remove_handler(sock)
            sock.close()

    def _accept(self, sock: socket.socket, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.stopped:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return  # every pending connection is taken
            except ConnectionAbortedError:
                continue  # gone while in the queue; the next one may be fine
            except OSError as err:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: retrying now would fail the same way.
                self._back_off(sock, err)
                return
            self.server._handle_connection(connection, address)

    def _back_off(self, sock: socket.socket, err: OSError) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECS:
            more = f"; {self._suppressed} more since the last warning" if self._suppressed else ""
            log.warning(
                "accept failed: %s: at %s; not accepting for %.2f s, open connections are "
                "served as usual%s",
                err.strerror or err,
                describe_limit(err),
                BACKOFF_SECS,
                more,
            )
            self._last_warning = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        self.loop.remove_handler(sock)
        self._paused.add(sock)
        self.loop.call_later(BACKOFF_SECS, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock)
        if not self.stopped:
            self.loop.add_handler(sock, self._accept, IOLoop.READ)
