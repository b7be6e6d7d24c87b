"""PROTOCOL.md section 4, What moves when: exact deltas of every family for known traffic.

All tests share one server per kind and run one after another; each starts by waiting for
`ws_connections` to be 0 (the previous test's closes are handled asynchronously) and compares
before/after snapshots, polling with a bound where a counter moves after a close.
"""

from __future__ import annotations

import time

import pytest

from .support import (
    OP_CLOSE,
    REASONS,
    Clients,
    key,
    snapshot,
    unique_room,
    upgrade_status,
    value_of,
    wait_for,
    wait_for_sample,
)

CONNS = key("ws_connections")
ACCEPTED = key("all_ws_connections_total")
SENT = key("ws_messages_sent_total")
OK = key("ws_messages_received_total", outcome="ok")
INVALID = key("ws_messages_received_total", outcome="invalid")
HANDLING = key("ws_message_handling_duration_seconds_count")
FANOUT = key("ws_broadcast_duration_seconds_count")


def closed(reason: str):
    return key("ws_closed_conns_errors_total", reason=reason)


@pytest.fixture
def quiet(server):
    """The server with no connection open, and a snapshot of its metrics."""
    assert wait_for(lambda: value_of(server, "ws_connections") == 0), "connections left open"
    return server, snapshot(server)


def deltas(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def settle(server, expected_key, expected_value, timeout=5.0) -> dict:
    """Poll until snapshot[expected_key] == expected_value, then return the snapshot."""
    snap = wait_for(lambda: (s := snapshot(server))[expected_key] == expected_value and s, timeout)
    return snap or snapshot(server)


def test_traffic_moves_exactly_the_specified_counters(quiet):
    server, before = quiet
    room = unique_room()
    with Clients(server) as cs:
        a, b = cs.join(room), cs.join(room)
        mid = snapshot(server)
        assert mid[CONNS] == 2
        assert mid[ACCEPTED] - before[ACCEPTED] == 2
        for i in range(3):  # 3 broadcasts x 2 recipients
            a.send_json({"type": "broadcast", "user": "u", "text": str(i)})
            a.recv_json(), b.recv_json()
        a.request({"type": "echo", "user": "u", "text": "e"})  # 1 echo
        a.request({"type": "echo", "user": ""})  # invalid_message
        a.request("{")  # invalid_json
        a.request({"type": "nope"})  # unknown_type
        # binary_unsupported; not a text message, so no handling observation
        a.ws.send(b"bin")
        a.recv_json()
        assert a.ws.ping(b"p").wait(5)  # pings count nowhere
        # Sent: 2 welcomes + 6 broadcast copies + 1 echo + 4 errors = 13.
        after = settle(server, SENT, before[SENT] + 13)
    d = deltas(before, after)
    expected = {
        ACCEPTED: 2,
        CONNS: 2,
        SENT: 13,
        OK: 4,
        INVALID: 4,
        HANDLING: 7,  # every text message: 3 broadcasts, 1 echo, 3 invalid texts
        FANOUT: 3,  # every broadcast
    }
    for k, v in expected.items():
        assert d.get(k, 0) == v, f"{k}: moved by {d.get(k, 0)}, expected {v}"
    assert (
        after[key("ws_message_handling_duration_seconds_sum")]
        >= before[key("ws_message_handling_duration_seconds_sum")]
    )
    # Histogram buckets stay cumulative and end at _count.
    for h in ("ws_message_handling_duration_seconds", "ws_broadcast_duration_seconds"):
        buckets = sorted(
            (float(dict(k[1])["le"]), v) for k, v in after.items() if k[0] == h + "_bucket"
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (h, counts)
        assert counts[-1] == after[key(h + "_count")], h
    # Nothing ended abnormally.
    for reason in REASONS:
        assert d.get(closed(reason), 0) == 0, reason


def test_gauge_returns_to_0_and_clean_closes_count_nothing(quiet):
    server, before = quiet
    with Clients(server) as cs:
        clients = [cs.join(unique_room()) for _ in range(4)]
        raw = cs.raw()
        assert raw.recv_json()["type"] == "welcome"
        wait_for_sample(server, "ws_connections", 5)
        clients[0].close(1000)
        clients[1].close(4000, "custom")
        clients[2].close(1001)
        raw.send_close(None)
        raw.wait_end()
        wait_for_sample(server, "ws_connections", 1)
    wait_for_sample(server, "ws_connections", 0)
    after = snapshot(server)
    assert after[ACCEPTED] - before[ACCEPTED] == 5
    for reason in REASONS:
        assert after[closed(reason)] == before[closed(reason)], reason


@pytest.mark.parametrize("how", ["reset", "eof"])
def test_tcp_end_without_close_handshake_counts_abnormal(quiet, how):
    server, before = quiet
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        wait_for_sample(server, "ws_connections", 1)
        if how == "reset":
            r.reset()  # SO_LINGER 0 then close: RST
        else:
            r.sock.close()  # FIN, no close frame
        wait_for_sample(
            server,
            "ws_closed_conns_errors_total",
            before[closed("abnormal")] + 1,
            reason="abnormal",
        )
        wait_for_sample(server, "ws_connections", 0)
    after = snapshot(server)
    for reason in REASONS:
        if reason != "abnormal":
            assert after[closed(reason)] == before[closed(reason)], reason
    assert after[OK] == before[OK] and after[INVALID] == before[INVALID]


def test_too_large_is_counted_and_not_received(quiet):
    server, before = quiet
    with Clients(server) as cs:
        a = cs.join(unique_room())
        a.ws.send('{"type":"echo","user":"u","text":"t","pad":"' + "x" * 70000 + '"}')
        a.wait_closed_by_server()
        assert a.close_rcvd_code == 1009
    wait_for_sample(
        server,
        "ws_closed_conns_errors_total",
        before[closed("too_large")] + 1,
        reason="too_large",
    )
    wait_for_sample(server, "ws_connections", 0)
    after = snapshot(server)
    assert after[OK] == before[OK] and after[INVALID] == before[INVALID]
    assert after[HANDLING] == before[HANDLING]
    assert after[closed("abnormal")] == before[closed("abnormal")]
    assert after[SENT] - before[SENT] == 1  # the welcome only


def test_protocol_violation_is_counted_protocol(quiet):
    server, before = quiet
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(0x1, b"\xff\xfe\xfd")  # a text frame that is not UTF-8
        frames, _ = r.wait_end()
        assert any(f.opcode == OP_CLOSE for f in frames), frames
    wait_for_sample(
        server,
        "ws_closed_conns_errors_total",
        before[closed("protocol")] + 1,
        reason="protocol",
    )
    wait_for_sample(server, "ws_connections", 0)
    after = snapshot(server)
    assert after[closed("abnormal")] == before[closed("abnormal")]
    assert after[OK] == before[OK] and after[INVALID] == before[INVALID]


def test_refused_upgrades_are_not_accepted_connections(quiet):
    server, before = quiet
    assert upgrade_status(server, "bad%20room") == 400
    assert upgrade_status(server, "") == 400
    time.sleep(0.1)
    after = snapshot(server)
    assert after[ACCEPTED] == before[ACCEPTED]
    assert after[CONNS] == 0
    assert after[SENT] == before[SENT]
