"""PROTOCOL.md section 3, Keepalive: the server pings every WS_PING_INTERVAL_SECS and drops a peer
that has not answered within WS_PING_TIMEOUT_SECS, counting it as `ping_timeout`, by closing the
TCP connection without a close frame; interval 0 turns keepalive off.

The silent peer is a raw socket, which never answers pings; the library client answers them.
"""

from __future__ import annotations

import time

import pytest
from harness import running_server

from .support import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Clients,
    key,
    snapshot,
    unique_room,
    value_of,
    wait_for_sample,
)


@pytest.fixture(scope="module")
def pinging_server(kind):
    env = {"WS_PING_INTERVAL_SECS": "1", "WS_PING_TIMEOUT_SECS": "1"}
    with running_server(kind, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def quiet_server(kind):
    env = {"WS_PING_INTERVAL_SECS": "0", "WS_PING_TIMEOUT_SECS": "1"}
    with running_server(kind, env) as srv:
        yield srv


def test_silent_peer_is_dropped_and_counted_ping_timeout(pinging_server):
    server = pinging_server
    room = unique_room()
    with Clients(server) as cs:
        answering = cs.join(room)  # the library answers pings for us
        silent = cs.raw(f"/ws?room={room}")
        assert silent.recv_json()["connections"] == 2
        t0 = time.monotonic()
        # interval 1 + timeout 1, plus scheduling slack: gone within 6 s.
        frames, ended = silent.wait_end(timeout=6)
        elapsed = time.monotonic() - t0
        assert ended, f"a peer that never answers pings was still connected after {elapsed:.1f}s"
        # Not before a ping has gone unanswered for WS_PING_TIMEOUT_SECS (1 s, less some slack).
        assert elapsed > 0.8, f"dropped after {elapsed:.2f}s, before the ping timeout"
        assert any(f.opcode == OP_PING for f in frames), f"no ping seen before the drop: {frames}"
        assert not any(f.opcode == OP_TEXT for f in frames), frames
        # Dropped means no close frame: every frame up to EOF or reset was read above.
        assert not any(f.opcode == OP_CLOSE for f in frames), (
            f"a close frame before the drop: {frames}"
        )
        wait_for_sample(server, "ws_closed_conns_errors_total", 1, reason="ping_timeout")
        assert value_of(server, "ws_closed_conns_errors_total", reason="abnormal") == 0
        # The peer that answers survived the same pings and still works.
        answering.assert_alive()
        assert value_of(server, "ws_connections") == 1


def test_answering_peer_stays_through_several_pings(pinging_server):
    server = pinging_server
    before = snapshot(server)
    echoes = 0
    with Clients(server) as cs:
        a = cs.join(unique_room())
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:  # bounded: ~3.5 s of echoes, 0.5 s apart
            a.assert_alive()
            echoes += 1
            time.sleep(0.5)
        a.assert_alive()
        echoes += 1
        after = snapshot(server)
    ping_timeouts = key("ws_closed_conns_errors_total", reason="ping_timeout")
    assert after[ping_timeouts] == before[ping_timeouts]
    # The pongs answering ~3 server pings are not messages: only the echoes count.
    ok = key("ws_messages_received_total", outcome="ok")
    invalid = key("ws_messages_received_total", outcome="invalid")
    assert after[ok] - before[ok] == echoes
    assert after[invalid] == before[invalid]


def test_interval_0_disables_keepalive(quiet_server):
    server = quiet_server
    with Clients(server) as cs:
        silent = cs.raw(f"/ws?room={unique_room()}")
        assert silent.recv_json()["type"] == "welcome"
        frames, ended = silent.wait_end(timeout=3)  # nothing arrives, nothing ends
        assert not ended, "keepalive disabled, yet a silent peer was dropped"
        assert frames == [], f"keepalive disabled, yet the server sent {frames}"
        silent.send_json({"type": "echo", "user": "u", "text": "still here"})
        assert silent.recv_json()["text"] == "still here"
    assert value_of(server, "ws_closed_conns_errors_total", reason="ping_timeout") == 0
