"""Hostile input, one request or frame at a time: PROTOCOL.md §2 (the 400s before an upgrade),
§3 (invalid close frames, `sent_at` literals, frames a careless client sends) and §4 (the exact
`le` strings).

Every request here is one no HTTP or WebSocket library would send, so it is written byte by byte
(`wire.upgrade_request`, `wire.raw_http`, `RawWS`). Each refused upgrade is also checked to move
no `ws_*` sample at all: a 101 that a server then drops would count an accepted connection and an
abnormal close, which is the defect these rules exist for.

The floods, deadlines and resource limits are in test_hostile_resources.py.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import time

import pytest
from wire import raw_http, upgrade_request

from .support import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Clients,
    snapshot,
    unique_room,
    value_of,
    wait_for,
    wait_for_sample,
)

ECHO = b'{"type":"echo","user":"u","text":"t"}'


def ws_samples(server) -> dict:
    """Every ws_* sample (process_* move by themselves)."""
    return {k: v for k, v in snapshot(server).items() if k[0].startswith(("ws_", "all_ws_"))}


def assert_refused_without_counting(server, request: bytes, expected: int = 400) -> None:
    """`request` is answered `expected` and, a moment later, no ws_* sample has moved."""
    assert wait_for(lambda: value_of(server, "ws_connections") == 0), "connections left open"
    before = ws_samples(server)
    answer = raw_http(server.port, request)
    assert answer.status == expected, (
        f"answered {answer.status}, expected {expected}: {answer.head[:200]!r}"
    )
    # A server that wrongly upgraded would count the session when it opens and the abnormal end
    # when the connection drops; give it time to do either.
    time.sleep(0.3)
    after = ws_samples(server)
    moved = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert moved == {}, f"a refused upgrade moved ws_* samples: {moved}"


# --- §2: refused upgrades ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["room=a&room=b", "room=a&room=", "room=&room=a", "room=a&room=a", "room=a&x=1&room=b"],
    ids=["two-rooms", "second-empty", "first-empty", "same-twice", "apart"],
)
def test_room_given_twice_is_400(server, query):
    assert_refused_without_counting(server, upgrade_request(server.port, f"/ws?{query}"))


def test_room_once_with_other_parameters_is_accepted(server):
    """The check counts `room` parameters, not parameters."""
    room = unique_room()
    answer = raw_http(server.port, upgrade_request(server.port, f"/ws?x=1&room={room}&y=2"))
    assert answer.status == 101, answer.head


def test_upgrade_over_http_1_0_is_400(server):
    assert_refused_without_counting(server, upgrade_request(server.port, version="HTTP/1.0"))


@pytest.mark.parametrize(
    "sec_key",
    [
        "not base64!!",
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        base64.b64encode(b"x" * 16).decode().rstrip("="),  # unpadded
        "AAAAAAAAAAAAAAAAAAAAA*==",  # right length, one character outside the alphabet
        "",
    ],
    ids=["not-base64", "15-bytes", "17-bytes", "unpadded", "bad-char", "empty"],
)
def test_malformed_sec_websocket_key_is_400(server, sec_key):
    assert_refused_without_counting(server, upgrade_request(server.port, key=sec_key))


def test_key_using_every_base64_symbol_is_accepted(server):
    """`+` and `/` are base64 too: the check must not refuse a valid key."""
    sec_key = "+/+/+/+/+/+/+/+/+/+/+w=="
    assert len(base64.b64decode(sec_key, validate=True)) == 16
    answer = raw_http(server.port, upgrade_request(server.port, key=sec_key))
    assert answer.status == 101, answer.head
    # The accept key is computed from the key as sent (RFC 6455 §4.2.2).
    digest = hashlib.sha1((sec_key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    expected = b"sec-websocket-accept: " + base64.b64encode(digest).lower()
    assert expected in answer.head.lower(), answer.head


@pytest.mark.parametrize(
    "extra,body",
    [
        ("Content-Length: 5\r\n", b"hello"),
        ("Content-Length: 6\r\n", b"\x81\x84\x00\x00\x00\x00"),  # a frame header as the body
        ("Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        # What rust-ws used to do: read the chunked body as HTTP, then the rest as frames.
        (
            "Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\n\r\n" + b"\x81\xa6\x00\x00\x00\x00" + ECHO[:38],
        ),
    ],
    ids=["content-length", "content-length-frame", "chunked-empty", "chunked-then-frame"],
)
def test_upgrade_with_a_body_is_400(server, extra, body):
    assert_refused_without_counting(server, upgrade_request(server.port, extra=extra) + body)


def test_upgrade_with_content_length_0_is_accepted(server):
    answer = raw_http(server.port, upgrade_request(server.port, extra="Content-Length: 0\r\n"))
    assert answer.status == 101, answer.head


def test_first_frame_in_the_same_packet_as_the_handshake_is_read(server):
    """A client may send its first frame right behind the request, before the 101 arrives;
    those bytes belong to the session and must not be lost."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        frame = bytes([0x81, 0x80 | len(ECHO)]) + b"\x00\x00\x00\x00" + ECHO
        sock.sendall(upgrade_request(server.port, f"/ws?room={unique_room()}") + frame)
        buf = b""
        deadline = time.monotonic() + 5
        while buf.count(b'"type":"') < 2 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    assert b'"type":"welcome"' in buf and b'"type":"echo"' in buf, buf


# --- §3: invalid close frames -----------------------------------------------------------------

INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535]
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]


def close_exchange(server, payload: bytes) -> tuple[list, bool, dict]:
    """Send a close frame with `payload` after the welcome; return (frames the server sent,
    whether it ended TCP, deltas of the close reasons once the connection is gone)."""
    assert wait_for(lambda: value_of(server, "ws_connections") == 0), "connections left open"
    before = snapshot(server)
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_CLOSE, payload)
        frames, ended = r.wait_end()
    assert wait_for(lambda: value_of(server, "ws_connections") == 0), "connection still open"
    after = snapshot(server)
    reasons = {
        k[1][0][1]: after[k] - before[k]
        for k in after
        if k[0] == "ws_closed_conns_errors_total" and after[k] != before[k]
    }
    return frames, ended, reasons


@pytest.mark.parametrize("code", INVALID_CODES)
def test_close_with_a_code_that_must_not_be_sent_gets_1002(server, code):
    frames, ended, reasons = close_exchange(server, struct.pack("!H", code) + b"bye")
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert closes, f"no close frame (TCP ended: {ended})"
    assert closes[0].close_code == 1002, f"answered {closes[0].close_code} to code {code}"
    assert ended, "TCP not closed after the close frame"
    assert reasons == {"protocol": 1}, reasons


@pytest.mark.parametrize("code", VALID_CODES)
def test_close_with_a_valid_code_is_echoed_and_not_counted(server, code):
    frames, ended, reasons = close_exchange(server, struct.pack("!H", code) + b"bye")
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert closes and closes[0].close_code == code, [(f.opcode, f.payload) for f in frames]
    assert ended
    assert reasons == {}, reasons


def test_close_with_a_one_byte_payload_gets_1002_and_counts_protocol(server):
    frames, ended, reasons = close_exchange(server, b"\x03")
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert closes and closes[0].close_code == 1002, [(f.opcode, f.payload) for f in frames]
    assert ended
    assert reasons == {"protocol": 1}, reasons


@pytest.mark.parametrize(
    "reason",
    [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"],
    ids=["ff", "truncated", "surrogate", "overlong"],
)
def test_close_reason_that_is_not_utf8_gets_1007_and_counts_protocol(server, reason):
    frames, ended, reasons = close_exchange(server, struct.pack("!H", 1000) + reason)
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert closes, f"no close frame (TCP ended: {ended})"
    assert closes[0].close_code == 1007, closes[0]
    assert ended
    assert reasons == {"protocol": 1}, reasons


def test_close_with_the_longest_reason_is_echoed(server):
    """123 bytes of reason (a 125-byte control frame), multi-byte UTF-8 included."""
    reason = ("é" * 61 + "x").encode()
    assert len(reason) == 123
    frames, _, reasons = close_exchange(server, struct.pack("!H", 4001) + reason)
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert closes and closes[0].close_code == 4001, closes
    assert reasons == {}, reasons


def test_data_after_the_close_frame_is_not_answered(server):
    """RFC 6455 §5.5.1: nothing after a close frame is data; the server must not echo it."""
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        masked_echo = bytes([0x81, 0x80 | len(ECHO)]) + b"\x00\x00\x00\x00" + ECHO
        close = bytes([0x88, 0x82]) + b"\x00\x00\x00\x00" + struct.pack("!H", 1000)
        r.sock.sendall(close + masked_echo)
        frames, ended = r.wait_end()
        assert [f.opcode for f in frames] == [OP_CLOSE], frames
        assert frames[0].close_code == 1000
        assert ended


# --- §3: frames a careless client sends -------------------------------------------------------


def test_ping_between_fragments_is_answered_and_the_message_reassembled(server):
    """Control frames may come between the fragments of a message (RFC 6455 §5.4)."""
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_TEXT, ECHO[:10], fin=False)
        r.send_frame(OP_PING, b"mid")
        r.send_frame(OP_CONT, ECHO[10:20], fin=False)
        r.send_frame(OP_CONT, ECHO[20:])
        first = r.recv_frame()
        assert (first.opcode, first.payload) == (OP_PONG, b"mid"), first
        assert r.recv_json()["type"] == "echo"


def test_half_closed_client_is_ended_and_counted_abnormal(server):
    """A client that shuts down its sending side (FIN) without a close frame has ended the
    connection without a close handshake."""
    before = value_of(server, "ws_closed_conns_errors_total", reason="abnormal")
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.sock.shutdown(socket.SHUT_WR)
        _, ended = r.wait_end()
        assert ended, "the server kept a half-closed connection open"
    wait_for_sample(server, "ws_closed_conns_errors_total", before + 1, reason="abnormal")


# --- §3: sent_at literals ---------------------------------------------------------------------


def sent_at_message(literal: str) -> bytes:
    return b'{"type":"echo","user":"u","text":"t","sent_at":%s}' % literal.encode()


@pytest.mark.parametrize("literal", ["-0", " -0 "], ids=["minus-zero", "spaced"])
def test_sent_at_minus_zero_is_zero(server, literal):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_TEXT, sent_at_message(literal))
        frame = r.recv_frame()
        reply = frame.json()
        assert reply.get("type") == "echo", reply
        # 0 on the wire too, not -0, -0.0 or 0.0.
        assert b'"sent_at":0,' in frame.payload, frame.payload


@pytest.mark.parametrize(
    "literal",
    ["-0.0", "0.0", "-0e0", "0e0", "1e3", "1E3", "10e-1", "-1"],
)
def test_sent_at_with_fraction_or_exponent_is_invalid(server, literal):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_TEXT, sent_at_message(literal))
        reply = r.recv_json()
        assert reply.get("code") == "invalid_message", reply
        assert reply["detail"].startswith("sent_at: "), reply


def nested(depth: int) -> bytes:
    """A valid echo whose ignored field `x` nests arrays so that the message is `depth` deep."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return ('{"type":"echo","user":"u","text":"t","x":' + inner + "}").encode()


def test_json_nested_127_levels_is_answered(server):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_TEXT, nested(127))
        reply = r.recv_json()
        assert reply.get("type") == "echo", reply


@pytest.mark.parametrize(
    "payload",
    [nested(128), nested(1000), b"[" * 128 + b"]" * 128],
    ids=["object-128", "object-1000", "bare-arrays-128"],
)
def test_json_nested_deeper_than_127_levels_is_invalid_json(server, payload):
    """PROTOCOL.md §3: the nesting limit is the same on both servers (found by the fuzzers:
    serde_json stops at 128 levels, orjson at 1024)."""
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_TEXT, payload)
        reply = r.recv_json()
        assert reply.get("code") == "invalid_json", reply
        # The connection stays open and answers.
        r.send_frame(OP_TEXT, nested(2))
        assert r.recv_json().get("type") == "echo"


# --- §4: the exact le strings -----------------------------------------------------------------

LE_STRINGS = [
    "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf",
]  # fmt: skip


@pytest.mark.parametrize(
    "family",
    [
        "ws_message_handling_duration_seconds",
        "ws_broadcast_duration_seconds",
        "ws_broker_publish_duration_seconds",
    ],
)
def test_le_labels_are_the_canonical_strings(server, family):
    text = server.metrics_text()
    prefix = family + '_bucket{le="'
    les = [
        line[len(prefix) :].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith(prefix)
    ]
    assert les == LE_STRINGS, les
