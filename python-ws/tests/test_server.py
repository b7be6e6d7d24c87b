"""python-ws as a real process, over real sockets: routes, the session, and metric movements."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time

import pytest
from pyws_support import RawClient, Server, http_get, parse_samples
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from python_ws.metrics import BUCKETS

MSG = {"type": "broadcast", "user": "ann", "text": "hi"}


def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def join(server: Server, room: str | None = None):
    url = server.ws_url + (f"?room={room}" if room is not None else "")
    ws = connect(url, open_timeout=5).__enter__()  # tests close it themselves
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome"
    return ws, welcome


# --- HTTP routes ------------------------------------------------------------------------------


def test_healthz_metrics_and_404(server: Server) -> None:
    assert http_get(server.url + "/healthz")[0::2] == (200, "ok")
    status, headers, _ = http_get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    for path in ("/", "/nope", "/ws/", "/metrics/x", "/healthz2"):
        assert http_get(server.url + path)[0] == 404, path


@pytest.mark.parametrize("room", ["", "a" * 65, "bad room", "sl/ash", "%C3%A9", "a%00"])
def test_invalid_room_is_400_before_upgrade(server: Server, room: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"{server.ws_url}?room={room}", open_timeout=5)
    assert info.value.response.status_code == 400
    assert server.metric("all_ws_connections_total") == 0


def test_metrics_families_help_buckets(server: Server) -> None:
    _, _, text = http_get(server.url + "/metrics")
    helps = dict(
        line[len("# HELP ") :].split(" ", 1)
        for line in text.splitlines()
        if line.startswith("# HELP")
    )
    types = dict(
        line[len("# TYPE ") :].split(" ", 1)
        for line in text.splitlines()
        if line.startswith("# TYPE")
    )
    ws = {k: v for k, v in helps.items() if not k.startswith("process_")}
    assert ws == {
        "ws_connections": "Open WebSocket connections.",
        "all_ws_connections_total": "WebSocket connections accepted since start.",
        "ws_closed_conns_errors_total": "WebSocket connections that ended abnormally, by reason.",
        "ws_messages_received_total": "Messages received from clients, by outcome.",
        "ws_messages_sent_total": "Messages written to clients.",
        "ws_message_handling_duration_seconds": "Time from a complete text message received until "
        "its reply payload is ready: parse, validate and serialise.",
        "ws_broadcast_duration_seconds": "Time to fan one broadcast out to every connection in "
        "its room: enqueueing the shared payload, not network delivery.",
    }
    assert types["ws_connections"] == "gauge"
    assert types["ws_broadcast_duration_seconds"] == "histogram"
    assert types["ws_messages_sent_total"] == "counter"
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert name in helps
    assert "_created" not in text
    assert "python_" not in text and "gc_" not in text
    samples = parse_samples(text)
    for reason in ("abnormal", "protocol", "too_large", "slow_consumer", "ping_timeout"):
        assert samples[f'ws_closed_conns_errors_total{{reason="{reason}"}}'] == 0
    assert samples['ws_closed_conns_errors_total{reason="send_failed"}'] == 0
    assert samples['ws_messages_received_total{outcome="ok"}'] == 0
    assert samples['ws_messages_received_total{outcome="invalid"}'] == 0
    for hist in ("ws_message_handling_duration_seconds", "ws_broadcast_duration_seconds"):
        les = [
            float(k.split('le="')[1].rstrip('"}'))
            for k in samples
            if k.startswith(hist + "_bucket")
        ]
        assert les == [*BUCKETS, float("inf")]


# --- the session ------------------------------------------------------------------------------


def test_welcome_counts_room_members_and_ids_are_unique(server: Server) -> None:
    a, wa = join(server)
    b, wb = join(server, "other")
    c, wc = join(server, "lobby")
    assert wa == {
        "type": "welcome",
        "conn_id": wa["conn_id"],
        "room": "lobby",
        "server": "python-ws",
        "connections": 1,
    }
    assert (wb["room"], wb["connections"]) == ("other", 1)
    assert (wc["room"], wc["connections"]) == ("lobby", 2)
    assert len({wa["conn_id"], wb["conn_id"], wc["conn_id"]}) == 3
    assert server.metric("ws_connections") == 3
    assert server.metric("all_ws_connections_total") == 3
    for ws in (a, b, c):
        ws.close()
    server.wait_metric("ws_connections", 0)
    assert server.metric('ws_closed_conns_errors_total{reason="abnormal"}') == 0


def test_broadcast_reaches_room_only_in_seq_order(server: Server) -> None:
    a, wa = join(server, "r.1")
    b, _ = join(server, "r.1")
    other, _ = join(server, "r-2")
    for i in range(20):
        a.send(json.dumps({**MSG, "text": f"m{i}", "ref": f"r{i}", "sent_at": i}))
    for ws in (a, b):
        got = [recv_json(ws) for _ in range(20)]
        assert [m["seq"] for m in got] == list(range(1, 21))
        assert [m["text"] for m in got] == [f"m{i}" for i in range(20)]
        first = got[0]
        assert list(first) == [
            "type",
            "from",
            "user",
            "text",
            "ref",
            "sent_at",
            "seq",
            "server_ts",
        ]
        assert (first["type"], first["from"], first["ref"], first["sent_at"]) == (
            "broadcast",
            wa["conn_id"],
            "r0",
            0,
        )
        assert abs(first["server_ts"] - time.time() * 1000) < 10_000
    other.send(json.dumps({**MSG, "type": "echo"}))
    assert recv_json(other)["type"] == "echo"  # nothing from r.1 arrived first
    samples = server.metrics()
    assert samples['ws_messages_received_total{outcome="ok"}'] == 21
    # 3 welcomes + 20 broadcasts x 2 members + 1 echo
    assert samples["ws_messages_sent_total"] == 3 + 40 + 1
    assert samples["ws_broadcast_duration_seconds_count"] == 20
    assert samples["ws_message_handling_duration_seconds_count"] == 21
    for ws in (a, b, other):
        ws.close()


def test_seq_restarts_when_room_is_recreated(server: Server) -> None:
    a, _ = join(server, "tmp")
    a.send(json.dumps(MSG))
    a.send(json.dumps(MSG))
    assert [recv_json(a)["seq"] for _ in range(2)] == [1, 2]
    a.close()
    server.wait_metric("ws_connections", 0)
    b, welcome = join(server, "tmp")
    assert welcome["connections"] == 1
    b.send(json.dumps(MSG))
    assert recv_json(b)["seq"] == 1
    b.close()


def test_echo_goes_to_sender_only_with_seq_0(server: Server) -> None:
    a, wa = join(server)
    b, _ = join(server)
    a.send(json.dumps({"type": "echo", "user": "é", "text": "x", "sent_at": None, "z": 1}))
    echo = recv_json(a)
    assert {k: echo[k] for k in ("type", "from", "user", "text", "ref", "sent_at", "seq")} == {
        "type": "echo",
        "from": wa["conn_id"],
        "user": "é",
        "text": "x",
        "ref": None,
        "sent_at": None,
        "seq": 0,
    }
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.3)
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\x01", "binary_unsupported"),
        ("{nope", "invalid_json"),
        ("[1]", "invalid_message"),
        ('{"user":"a"}', "invalid_message"),
        ('{"type":"yell","user":"a","text":"b"}', "unknown_type"),
        ('{"type":"echo","user":"","text":"b"}', "invalid_message"),
        ('{"type":"echo","user":"a","text":"b","sent_at":true}', "invalid_message"),
    ],
)
def test_errors_keep_the_connection_open(server: Server, frame, code: str) -> None:
    a, _ = join(server)
    a.send(frame)
    err = recv_json(a)
    assert err["type"] == "error" and err["code"] == code and err["detail"]
    assert list(err) == ["type", "code", "detail"]
    a.send(json.dumps({**MSG, "type": "echo"}))
    assert recv_json(a)["type"] == "echo"
    samples = server.metrics()
    assert samples['ws_messages_received_total{outcome="invalid"}'] == 1
    assert samples['ws_messages_received_total{outcome="ok"}'] == 1
    assert samples["ws_messages_sent_total"] == 3
    a.close()


def test_ping_gets_pong_with_payload_and_is_not_counted(server: Server) -> None:
    raw = RawClient(server.port)
    assert raw.status == 101
    assert raw.recv_frame()[0] == 0x1  # welcome
    raw.send_frame(0x9, b"hello")
    assert raw.recv_frame() == (0xA, b"hello")
    raw.send_frame(0x8, struct.pack("!H", 1000))
    assert raw.recv_close() == 1000
    assert server.metrics()['ws_messages_received_total{outcome="ok"}'] == 0
    raw.close()


# --- how connections end ----------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "expected"), [(b"", 1000), (struct.pack("!H", 4000), 4000)])
def test_client_close_is_answered_with_its_code(server: Server, sent: bytes, expected) -> None:
    raw = RawClient(server.port)
    raw.recv_frame()
    raw.send_frame(0x8, sent)
    assert raw.recv_close() == expected
    raw.sock.settimeout(5)
    assert raw.sock.recv(10) == b""  # then the server closes TCP
    raw.close()
    server.wait_metric("ws_connections", 0)
    samples = server.metrics()
    assert sum(v for k, v in samples.items() if k.startswith("ws_closed_conns_errors")) == 0


def test_websockets_client_sees_clean_close(server: Server) -> None:
    a, _ = join(server)
    a.close(code=1000)
    assert a.close_code == 1000 and a.protocol.close_rcvd is not None
    server.wait_metric("ws_connections", 0)


def test_abrupt_disconnect_counts_abnormal(server: Server) -> None:
    raw = RawClient(server.port)
    raw.recv_frame()
    # RST instead of FIN, and no close frame.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    eof = RawClient(server.port)
    eof.recv_frame()
    eof.close()
    server.wait_metric('ws_closed_conns_errors_total{reason="abnormal"}', 2)
    server.wait_metric("ws_connections", 0)


def test_too_large_closes_1009_and_is_not_a_message(server_with) -> None:
    server = server_with({"WS_MAX_MESSAGE_BYTES": "100"})
    a, _ = join(server)
    a.send("x" * 100)  # exactly the limit: accepted (and invalid JSON)
    assert recv_json(a)["code"] == "invalid_json"
    a.send("x" * 101)
    with pytest.raises(ConnectionClosed) as info:
        recv_json(a)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    server.wait_metric('ws_closed_conns_errors_total{reason="too_large"}', 1)
    server.wait_metric("ws_connections", 0)
    samples = server.metrics()
    assert samples['ws_messages_received_total{outcome="invalid"}'] == 1
    assert samples['ws_closed_conns_errors_total{reason="abnormal"}'] == 0


def test_too_large_fragmented_message_closes_1009(server_with) -> None:
    server = server_with({"WS_MAX_MESSAGE_BYTES": "100"})
    raw = RawClient(server.port)
    raw.recv_frame()
    raw.send_frame(0x1, b"x" * 60, fin=False)
    raw.send_frame(0x0, b"x" * 60, fin=True)
    assert raw.recv_close() == 1009
    raw.close()
    server.wait_metric('ws_closed_conns_errors_total{reason="too_large"}', 1)


@pytest.mark.parametrize(
    ("kwargs", "payload", "expected"),
    [
        ({"masked": False}, b'{"type":"echo"}', 1002),
        ({"masked": False, "fin": False}, b'{"type":', 1002),
        ({"rsv": 0x40}, b"{}", 1002),
        ({}, b"\xff\xfe", 1007),
    ],
    ids=["unmasked", "unmasked-fragment", "reserved-bits", "bad-utf8"],
)
def test_invalid_frames_close_with_protocol_code(server: Server, kwargs, payload, expected) -> None:
    raw = RawClient(server.port)
    raw.recv_frame()
    raw.send_frame(0x1, payload, **kwargs)
    assert raw.recv_close() == expected
    raw.close()
    server.wait_metric('ws_closed_conns_errors_total{reason="protocol"}', 1)
    server.wait_metric("ws_connections", 0)
    samples = server.metrics()
    assert samples['ws_closed_conns_errors_total{reason="abnormal"}'] == 0
    assert samples['ws_messages_received_total{outcome="invalid"}'] == 0


def test_unmasked_continuation_closes_1002(server: Server) -> None:
    raw = RawClient(server.port)
    raw.recv_frame()
    raw.send_frame(0x1, b'{"type":', fin=False)
    raw.send_frame(0x0, b'"echo"}', masked=False)
    assert raw.recv_close() == 1002
    raw.close()
    server.wait_metric('ws_closed_conns_errors_total{reason="protocol"}', 1)


def test_head_answers_like_get(server: Server) -> None:
    import urllib.request

    for path in ("/healthz", "/metrics"):
        req = urllib.request.Request(server.url + path, method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200 and resp.read() == b""


def test_unknown_opcode_closes_1002(server: Server) -> None:
    raw = RawClient(server.port)
    raw.recv_frame()
    raw.send_frame(0x3, b"")
    assert raw.recv_close() == 1002
    raw.close()
    server.wait_metric('ws_closed_conns_errors_total{reason="protocol"}', 1)


def test_capacity_is_503_before_upgrade(server_with) -> None:
    server = server_with({"WS_MAX_CONNECTIONS": "2"})
    a, _ = join(server)
    b, _ = join(server)
    with pytest.raises(InvalidStatus) as info:
        connect(server.ws_url, open_timeout=5)
    assert info.value.response.status_code == 503
    assert server.metric("all_ws_connections_total") == 2
    a.close()
    server.wait_metric("ws_connections", 1)
    c, _ = join(server)  # room again
    for ws in (b, c):
        ws.close()


def test_slow_consumer_is_closed_1008_and_others_keep_going(server_with) -> None:
    server = server_with({"WS_SEND_QUEUE": "8"})
    slow = RawClient(server.port, path="/ws?room=s", rcvbuf=4096)
    assert slow.recv_frame()[0] == 0x1
    fast, _ = join(server, "s")
    text = "y" * 4000
    got = 0
    # Enough data to fill the slow reader's socket buffers many times over; bounded.
    for i in range(3000):
        fast.send(json.dumps({**MSG, "text": text, "ref": str(i)}))
        msg = recv_json(fast)
        assert msg["seq"] == i + 1
        got += 1
        if i % 50 == 0 and server.metric('ws_closed_conns_errors_total{reason="slow_consumer"}'):
            break
    assert server.metric('ws_closed_conns_errors_total{reason="slow_consumer"}') == 1
    # The fast client is unaffected and keeps getting broadcasts.
    fast.send(json.dumps({**MSG, "text": "after"}))
    assert recv_json(fast)["text"] == "after"
    # The slow one, once it reads, finds its messages in order and then a 1008.
    slow.sock.settimeout(10)
    seqs = []
    for _ in range(got + 10):
        opcode, payload = slow.recv_frame()
        if opcode == 0x8:
            assert struct.unpack("!H", payload[:2])[0] == 1008
            assert payload[2:] == b"slow consumer"
            break
        seqs.append(json.loads(payload)["seq"])
    else:
        raise AssertionError("no close frame")
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) < got
    slow.close()
    fast.close()
    server.wait_metric("ws_connections", 0)
    assert server.metric('ws_closed_conns_errors_total{reason="abnormal"}') == 0


def test_ping_timeout_drops_silent_peer(server_with) -> None:
    server = server_with({"WS_PING_INTERVAL_SECS": "1", "WS_PING_TIMEOUT_SECS": "1"})
    silent = RawClient(server.port)  # reads nothing, answers no ping
    lively, _ = join(server)  # the websockets client answers pings itself
    server.wait_metric('ws_closed_conns_errors_total{reason="ping_timeout"}', 1, timeout=6)
    server.wait_metric("ws_connections", 1)
    lively.send(json.dumps({**MSG, "type": "echo"}))
    assert recv_json(lively)["type"] == "echo"
    lively.close()
    silent.close()
    assert server.metric('ws_closed_conns_errors_total{reason="abnormal"}') == 0


def test_sigterm_closes_1001_and_exits_0(server: Server) -> None:
    a, _ = join(server)
    b, _ = join(server, "x")
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for ws in (a, b):
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1001
        assert info.value.rcvd.reason == "server shutting down"
    assert server.proc.wait(timeout=6) == 0
    assert time.monotonic() - start < 5.5
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_sigterm_with_unresponsive_client_still_exits_in_time(server: Server) -> None:
    raw = RawClient(server.port)  # never answers the close frame
    start = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=8) == 0
    assert time.monotonic() - start < 5.5
    raw.close()


def test_startup_logs_one_info_line_and_nothing_per_message(server: Server) -> None:
    a, _ = join(server)
    for _ in range(5):
        a.send(json.dumps(MSG))
        recv_json(a)
    http_get(server.url + "/metrics")
    a.close()
    server.wait_metric("ws_connections", 0)
    lines = server.log().splitlines()
    assert len(lines) == 1, lines
    assert "listening on 127.0.0.1" in lines[0] and "send_queue=1024" in lines[0]


def test_healthcheck_module(server: Server) -> None:
    import os
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "python_ws.healthcheck"],
        env={**os.environ, "WS_PORT": str(server.port)},
        timeout=20,
    )
    assert ok.returncode == 0
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=10)
    down = subprocess.run(
        [sys.executable, "-m", "python_ws.healthcheck"],
        env={**os.environ, "WS_PORT": str(server.port)},
        timeout=20,
    )
    assert down.returncode == 1
