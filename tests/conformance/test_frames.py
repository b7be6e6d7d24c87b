"""PROTOCOL.md section 3, Frames and lifecycle: size limit, ping, close handshake, bad frames.

Runs against a default server (WS_MAX_MESSAGE_BYTES=65536)."""

from __future__ import annotations

import json

import pytest
from harness import running_server

from .support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Clients,
    unique_room,
    value_of,
    wait_for_sample,
)

LIMIT = 65536  # the default WS_MAX_MESSAGE_BYTES
SMALL = 1024


def message_of_size(n: int) -> str:
    """A valid echo request of exactly n UTF-8 bytes, padded with an ignored field."""
    base = {"type": "echo", "user": "u", "text": "big", "pad": ""}
    pad = n - len(json.dumps(base, separators=(",", ":")).encode())
    base["pad"] = "x" * pad
    text = json.dumps(base, separators=(",", ":"))
    assert len(text.encode()) == n
    return text


def fragments(text: str, size: int = 16384) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- size limit -------------------------------------------------------------------------------


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_message_exactly_at_limit_is_accepted(server, fragmented):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        text = message_of_size(LIMIT)
        a.ws.send(fragments(text) if fragmented else text)
        reply = a.recv_json()
        assert (reply["type"], reply["text"]) == ("echo", "big"), reply
        a.assert_alive()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_message_over_limit_closes_with_1009(server, fragmented):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        text = message_of_size(LIMIT + 1)
        a.send_refused(fragments(text) if fragmented else text)
        got = a.wait_closed_by_server()
        assert got == [], f"the server answered before closing: {got}"
        assert a.close_rcvd_code == 1009


@pytest.fixture(scope="module")
def small_server(kind):
    """WS_MAX_MESSAGE_BYTES=1024, to show the limit comes from the environment."""
    with running_server(kind, {"WS_MAX_MESSAGE_BYTES": str(SMALL)}) as srv:
        yield srv


def test_configured_limit_is_honoured(small_server):
    with Clients(small_server) as cs:
        a = cs.join(unique_room())
        a.ws.send(fragments(message_of_size(SMALL), 100))
        assert a.recv_json()["text"] == "big"
        a.ws.send(message_of_size(SMALL))
        assert a.recv_json()["text"] == "big"
        a.send_refused(message_of_size(SMALL + 1))
        a.wait_closed_by_server()
        assert a.close_rcvd_code == 1009
        b = cs.join(unique_room())
        b.send_refused(fragments(message_of_size(SMALL + 1), 100))
        b.wait_closed_by_server()
        assert b.close_rcvd_code == 1009
    wait_for_sample(small_server, "ws_closed_conns_errors_total", 2, reason="too_large")


def test_binary_message_over_limit_closes_with_1009(server):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        a.send_refused(b"x" * (LIMIT + 1))
        a.wait_closed_by_server()
        assert a.close_rcvd_code == 1009


# --- ping -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"", b"abc123", bytes(range(125))], ids=["empty", "short", "125"]
)
def test_ping_gets_pong_with_same_payload(server, payload):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.status == 101
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_PING, payload)
        frame = r.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, payload)
        r.send_json({"type": "echo", "user": "u", "text": "after ping"})
        assert r.recv_json()["text"] == "after ping"


def test_ping_via_library_client(server):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        assert a.ws.ping(b"lib-ping").wait(timeout=5), "no matching pong within 5s"
        a.assert_alive()


# --- close handshake --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 4000])
def test_client_close_is_answered_with_same_code(server, code):
    with Clients(server) as cs:
        a = cs.join(unique_room())
        a.assert_alive()
        a.close(code, "bye")
        assert a.close_rcvd_code == code, f"server answered {a.close_rcvd_code}, expected {code}"
        assert a.ws.close_code == code  # not 1006


def test_close_without_code_is_answered_with_1000_then_tcp_close(server):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_close(None)
        frames, ended = r.wait_end()
        closes = [f for f in frames if f.opcode == OP_CLOSE]
        assert closes, f"no close frame from the server: {frames}"
        assert closes[0].close_code == 1000
        assert ended, "the server did not close the TCP connection after the close handshake"


def test_raw_close_with_code_gets_same_code_then_tcp_close(server):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_close(1000, "done")
        frames, ended = r.wait_end()
        assert [f.opcode for f in frames] == [OP_CLOSE], frames
        assert frames[0].close_code == 1000
        assert ended


# --- invalid frames: the library's answer, a close with 1002 or 1007 --------------------------


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda r: r.send_frame(OP_TEXT, b'{"a":"\xff\xfe"}'), id="bad-utf8"),
        pytest.param(
            lambda r: r.send_frame(OP_TEXT, b'{"type":"echo"}', masked=False),
            id="unmasked",
        ),
        pytest.param(lambda r: r.send_frame(OP_TEXT, b"{}", rsv=4), id="rsv1-without-extension"),
        pytest.param(lambda r: r.send_frame(0x3, b"x"), id="reserved-opcode"),
        pytest.param(lambda r: r.send_frame(OP_CONT, b"x"), id="continuation-without-start"),
        pytest.param(lambda r: r.send_frame(OP_PING, b"x" * 126), id="control-frame-too-long"),
    ],
)
def test_invalid_frames_close_with_1002_or_1007(server, send):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        before = value_of(server, "ws_closed_conns_errors_total", reason="protocol")
        send(r)
        frames, ended = r.wait_end()
        closes = [f for f in frames if f.opcode == OP_CLOSE]
        assert closes, f"connection ended without a close frame (ended={ended}): {frames}"
        assert closes[0].close_code in (1002, 1007), closes[0]
        assert all(f.opcode in (OP_CLOSE, OP_PING) for f in frames), frames
    wait_for_sample(server, "ws_closed_conns_errors_total", before + 1, reason="protocol")


def test_binary_frame_on_raw_socket_keeps_the_connection(server):
    with Clients(server) as cs:
        r = cs.raw(f"/ws?room={unique_room()}")
        assert r.recv_json()["type"] == "welcome"
        r.send_frame(OP_BINARY, b"\x01\x02")
        assert r.recv_json()["code"] == "binary_unsupported"
        r.send_json({"type": "echo", "user": "u", "text": "still here"})
        assert r.recv_json()["text"] == "still here"
