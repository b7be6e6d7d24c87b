"""python-ws as a real process, over real sockets: only what tests/conformance does not cover.

The shared protocol (routes, the session, errors, frames, metrics, capacity, slow consumers,
keepalive, shutdown) is asserted against both servers by tests/conformance; this file keeps what
only python-ws has: the Tornado workaround's two unmasked-fragment paths, HEAD on the GET routes,
Tornado's per-request access log moved to debug, and the health-check module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from pyws_support import Server, http_get, metric, run_server, wait_metric
from websockets.sync.client import connect
from wire import OP_CONT, OP_TEXT, RawWS


@pytest.mark.parametrize(
    "frames",
    [
        # Tornado's _receive_frame path: a non-final frame without a mask.
        [(OP_TEXT, b'{"type":', {"fin": False, "masked": False})],
        # Tornado's _handle_message path: a masked start, then an unmasked final continuation.
        [(OP_TEXT, b'{"type":', {"fin": False}), (OP_CONT, b'"echo"}', {"masked": False})],
    ],
    ids=["unmasked-first-fragment", "unmasked-continuation"],
)
def test_unmasked_fragments_close_1002(server: Server, frames) -> None:
    raw = RawWS(server.port)
    try:
        assert raw.recv_json()["type"] == "welcome"
        for opcode, payload, kwargs in frames:
            raw.send_frame(opcode, payload, **kwargs)
        seen, ended = raw.wait_end()
        assert ended and [f.close_code for f in seen if f.opcode == 0x8] == [1002], seen
    finally:
        raw.close()
    wait_metric(server, "ws_closed_conns_errors_total", 1, reason="protocol")
    wait_metric(server, "ws_connections", 0)
    assert metric(server, "ws_closed_conns_errors_total", reason="abnormal") == 0
    assert metric(server, "ws_messages_received_total", outcome="invalid") == 0


def test_head_answers_like_get(server: Server) -> None:
    for path in ("/healthz", "/metrics"):
        req = urllib.request.Request(server.http_url + path, method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b""


def test_startup_logs_one_info_line_and_nothing_per_request(server: Server) -> None:
    # Tornado logs every request at info; python-ws moves that to debug (app._log_request).
    with connect(server.ws_url, open_timeout=5) as ws:
        ws.recv(timeout=5)
        for _ in range(5):
            ws.send('{"type":"broadcast","user":"ann","text":"hi"}')
            ws.recv(timeout=5)
    http_get(server.http_url + "/metrics")
    http_get(server.http_url + "/nope")
    wait_metric(server, "ws_connections", 0)
    lines = server.log().splitlines()
    assert len(lines) == 1, lines
    assert "listening on 127.0.0.1" in lines[0] and "send_queue=1024" in lines[0]


def test_healthcheck_module(server: Server) -> None:
    def healthcheck() -> int:
        return subprocess.run(
            [sys.executable, "-m", "python_ws.healthcheck"],
            env={**os.environ, "WS_PORT": str(server.port)},
            timeout=20,
        ).returncode

    assert healthcheck() == 0
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=10)
    assert healthcheck() == 1


def test_a_wave_of_disconnects_is_collected_and_trimmed() -> None:
    # python_ws/reclaim.py: once MIN_ENDED connections have ended and QUIET_SECS passed with no
    # more, the hub runs gc.collect() and glibc's malloc_trim(0), once for the wave.
    n = 300
    with run_server({"LOG_LEVEL": "debug"}) as server:
        clients = []
        try:
            for _ in range(n):
                raw = RawWS(server.port)
                clients.append(raw)
                assert raw.recv_json()["type"] == "welcome"
        finally:
            for raw in clients:
                raw.close()
        wait_metric(server, "ws_connections", 0)
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [line for line in server.log().splitlines() if "reclaim after" in line]
            if lines:
                break
            time.sleep(0.1)
        assert len(lines) == 1, server.log()[-2000:]
        assert f"reclaim after {n} connections ended" in lines[0], lines
        assert "malloc_trim ran" in lines[0], lines
