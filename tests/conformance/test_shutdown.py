"""PROTOCOL.md section 3, Shutdown: on SIGTERM (and SIGINT) every client gets a close frame with
1001 and the process exits 0 within about 5 s. Each test starts its own server."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from harness import running_server
from websockets.exceptions import WebSocketException

from .support import OP_CLOSE, Clients, unique_room, upgrade_status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_clients_with_1001_and_exits_0(kind, sig):
    with running_server(kind) as server, Clients(server) as cs:
        room = unique_room()
        clients = [cs.join(room), cs.join(room), cs.join(unique_room())]
        for c in clients:
            c.assert_alive()
        t0 = time.monotonic()
        server.proc.send_signal(sig)
        for c in clients:
            c.wait_closed_by_server(timeout=6)
            assert c.close_rcvd_code == 1001, f"close code {c.close_rcvd_code}, expected 1001"
        try:
            status = server.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{server.name} still running 8 s after {sig.name}") from None
        elapsed = time.monotonic() - t0
        assert status == 0, f"exit status {status}\n{server.log()}"
        assert elapsed < 6.5, f"took {elapsed:.1f}s to exit"


def test_shutdown_does_not_wait_forever_for_a_silent_peer(kind):
    """A raw peer reads the 1001 but never answers it: the server still exits 0 in time, and
    accepts no new WebSocket once it has begun shutting down."""
    with running_server(kind) as server, Clients(server) as cs:
        silent = cs.raw(f"/ws?room={unique_room()}")
        assert silent.recv_json()["type"] == "welcome"
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        frame = silent.recv_frame(timeout=6)
        assert frame.opcode == OP_CLOSE and frame.close_code == 1001, frame
        # Stopped accepting: a new upgrade is refused or fails, never a 101.
        try:
            status = upgrade_status(server)
        except (OSError, WebSocketException):
            # Refused, reset, or closed before any answer: the kernel may still complete a TCP
            # handshake into the listen queue, which the exiting server then drops. Not a 101.
            status = None
        assert status != 101, "a new WebSocket was accepted after SIGTERM"
        try:
            code = server.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running 8 s after SIGTERM with a silent peer") from None
        elapsed = time.monotonic() - t0
        assert code == 0, f"exit status {code}\n{server.log()}"
        assert elapsed < 6.5, f"took {elapsed:.1f}s to exit"
