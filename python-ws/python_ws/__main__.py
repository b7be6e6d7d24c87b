"""Run python-ws: `python -m python_ws` (or the `python-ws` console script).

Configuration comes from the environment (PROTOCOL.md §1); an invalid value prints one line to
stderr and exits with status 2. SIGTERM or SIGINT closes every client with 1001 and exits 0.
Logging is the stdlib's, configured here.

Twin: rust-ws/src/main.rs
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

import tornado.httpserver
import tornado.netutil

from . import SERVER_NAME, __version__
from .accept import Acceptor
from .app import make_app
from .config import LOG_LEVELS, Config, ConfigError, from_env
from .metrics import BUILD_PROFILE

log = logging.getLogger("python_ws")

# The same backlog as rust-ws (tokio's TcpListener::bind); Tornado's default is 128.
LISTEN_BACKLOG = 1024
# How long shutdown waits for clients to answer the 1001 close frame.
SHUTDOWN_GRACE_SECS = 3.0


async def main(config: Config, sockets: list[socket.socket]) -> None:
    """Serve on already bound `sockets` until SIGTERM or SIGINT."""
    app = make_app(config)
    if app.broker is not None:
        app.broker.start()
    # Tornado's header timeout is `idle_connection_timeout`: the time the request line and headers
    # have from the moment the connection is accepted (and between keep-alive requests); past it
    # the connection is closed without an answer. Its default is an hour.
    server = tornado.httpserver.HTTPServer(
        app, xheaders=False, idle_connection_timeout=config.header_timeout_secs
    )
    # Not server.add_sockets: Tornado's accept handler spins when out of file descriptors.
    acceptor = Acceptor(server, sockets)
    acceptor.start()
    port = sockets[0].getsockname()[1]
    log.info(
        "%s %s listening on %s:%d profile=%s backlog=%d pid=%d config: %s",
        SERVER_NAME,
        __version__,
        config.host,
        port,
        BUILD_PROFILE,
        LISTEN_BACKLOG,
        os.getpid(),
        config.describe(),
    )
    if config.ping_interval_secs and config.ping_timeout_secs > config.ping_interval_secs:
        log.warning(
            "WS_PING_TIMEOUT_SECS=%d is longer than WS_PING_INTERVAL_SECS=%d; Tornado uses %d",
            config.ping_timeout_secs,
            config.ping_interval_secs,
            config.ping_interval_secs,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: closing %d connections with 1001", len(app.hub.connections))
    acceptor.stop()  # stop accepting
    server.stop()
    app.hub.shutdown()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app.hub.wait_empty(), timeout=SHUTDOWN_GRACE_SECS)
    if app.broker is not None:
        await app.broker.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), timeout=1.0)
    log.info("stopped")


def run() -> None:
    try:
        config = from_env(os.environ)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=LOG_LEVELS[config.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        sockets = tornado.netutil.bind_sockets(config.port, config.host, backlog=LISTEN_BACKLOG)
    except OSError as err:  # address in use, not available, no permission
        # PROTOCOL.md §1: one line naming the address, the same as rust-ws prints, and status 1.
        reason = err.strerror or err
        print(f"python-ws: cannot listen on {config.host}:{config.port}: {reason}", file=sys.stderr)
        sys.exit(1)
    asyncio.run(main(config, sockets))


if __name__ == "__main__":
    run()
