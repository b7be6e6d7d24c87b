"""Clients and helpers for the conformance suite: real sockets to 127.0.0.1, nothing mocked.

- `Client`: a `websockets` sync client with the welcome already read and JSON helpers; every
  receive has a timeout.
- `RawWS`: a hand-rolled WebSocket client on a plain socket, for what a well-behaved library
  client cannot do: stop reading, never answer pings, send bad frames, reset the TCP connection.
- `http_request`: plain HTTP over `http.client` (no proxies).
- `parse_metrics`, `scrape`, `sample`, `wait_for_sample`: a small Prometheus text-format parser
  and bounded polling of `/metrics`.

`RawWS` (with `Frame`, `PeerClosed`, the opcodes) and the parser (`Family`, `parse_metrics`,
`sample`, `le_value`) live in tests/wire.py, shared with python-ws's own tests, and are
re-exported here under their old names.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Self

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from wire import OP_BINARY as OP_BINARY
from wire import OP_CLOSE as OP_CLOSE
from wire import OP_CONT as OP_CONT
from wire import OP_PING as OP_PING
from wire import OP_PONG as OP_PONG
from wire import OP_TEXT as OP_TEXT
from wire import TIMEOUT as TIMEOUT
from wire import Family as Family
from wire import Frame as Frame
from wire import PeerClosed as PeerClosed
from wire import RawWS as RawWS
from wire import le_value as le_value
from wire import parse_metrics as parse_metrics
from wire import sample as sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
]  # fmt: skip
REASONS = (
    "abnormal",
    "protocol",
    "too_large",
    "slow_consumer",
    "ping_timeout",
    "send_failed",
)
OUTCOMES = ("ok", "invalid")
# ws_broker_publish_failures_total{reason}: PROTOCOL.md section 4.
BROKER_FAILURE_REASONS = ("unavailable", "overloaded", "lost")
# name -> (type, help, label names of the plain samples); PROTOCOL.md section 4, verbatim.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ws_connections": ("gauge", "Open WebSocket connections.", ()),
    "all_ws_connections_total": (
        "counter",
        "WebSocket connections accepted since start.",
        (),
    ),
    "ws_closed_conns_errors_total": (
        "counter",
        "WebSocket connections that ended abnormally, by reason.",
        ("reason",),
    ),
    "ws_messages_received_total": (
        "counter",
        "Messages received from clients, by outcome.",
        ("outcome",),
    ),
    "ws_messages_sent_total": ("counter", "Messages written to clients.", ()),
    "ws_message_handling_duration_seconds": (
        "histogram",
        (
            "Time from a complete text message received until its reply payload is ready: "
            "parse, validate and serialise."
        ),
        (),
    ),
    "ws_broadcast_duration_seconds": (
        "histogram",
        (
            "Time to fan one broadcast out to every connection in its room: "
            "enqueueing the shared payload, not network delivery."
        ),
        (),
    ),
    "ws_build_info": (
        "gauge",
        "Build of this server: its name and build profile (constant 1).",
        ("profile", "server"),
    ),
    "ws_node_info": (
        "gauge",
        "This node: its id and its broker, redis or none (constant 1).",
        ("broker", "node_id"),
    ),
    "ws_broker_up": (
        "gauge",
        (
            "1 while this node is connected and subscribed to its broker, else 0 "
            "(always 0 without a broker)."
        ),
        (),
    ),
    "ws_broker_published_total": (
        "counter",
        "Broadcasts this node handed to the broker and the broker confirmed.",
        (),
    ),
    "ws_broker_received_total": (
        "counter",
        "Broadcasts this node received from the broker.",
        (),
    ),
    "ws_broker_publish_failures_total": (
        "counter",
        (
            "Broadcasts this node could not confirm to the broker, by reason; "
            "each was answered with broker_unavailable."
        ),
        ("reason",),
    ),
    "ws_broker_publish_duration_seconds": (
        "histogram",
        (
            "Time from a broadcast handed to the broker until the broker confirmed it: "
            "the publish round trip, waiting in the node's publish queue included."
        ),
        (),
    ),
}
# Families whose one sample is 1 from start-up, not 0 (the rest start at 0, section 4).
CONSTANT_ONE_FAMILIES = ("ws_node_info", "ws_build_info")
REQUIRED_PROCESS_FAMILIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
)
MAX_SAFE_INT = 2**53 - 1


def unique_room() -> str:
    """A fresh room name, so tests sharing one server never share a room (or its seq)."""
    return "t" + uuid.uuid4().hex[:16]


def default_node_id(pid: int) -> str:
    """PROTOCOL.md §1: the host name's first 20 characters, any character outside
    [A-Za-z0-9_.-] replaced by `-`, then `-` and the process id."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()[:20]) + f"-{pid}"


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.05):
    """Poll predicate until it returns something truthy or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- HTTP -------------------------------------------------------------------------------------


def http_request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request to 127.0.0.1:port; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# --- WebSocket clients ------------------------------------------------------------------------


def ws_url(server, room: str | None = None) -> str:
    return server.ws_url if room is None else f"{server.ws_url}?room={room}"


def open_ws(server, room: str | None = None, **kwargs) -> ClientConnection:
    """A websockets sync client: no proxy, no compression, no client pings, bounded timeouts."""
    kwargs.setdefault("max_size", 2**24)
    return ws_connect(
        ws_url(server, room),
        proxy=None,
        compression=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
        legacy=True,  # a plain connection, closed by `Clients`, not a context manager
        **kwargs,
    )


def upgrade_status(server, room: str | None = None) -> int:
    """Try an upgrade; return 101 if it succeeds (and close it), else the refused HTTP status."""
    try:
        ws = open_ws(server, room)
    except InvalidStatus as err:
        return err.response.status_code
    ws.close()
    return 101


class Client:
    """A connected client whose welcome has been read (`welcome`, `conn_id`)."""

    def __init__(self, server, room: str | None = None, **kwargs):
        self.ws = open_ws(server, room, **kwargs)
        self.welcome = self.recv_json()
        assert self.welcome.get("type") == "welcome", self.welcome
        self.conn_id = self.welcome["conn_id"]

    def send_json(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj, ensure_ascii=False))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def recv_raw(self, timeout: float = TIMEOUT) -> str | bytes:
        return self.ws.recv(timeout=timeout)

    def recv_json(self, timeout: float = TIMEOUT) -> dict:
        raw = self.ws.recv(timeout=timeout)
        assert isinstance(raw, str), f"server sent a binary frame: {raw!r}"
        return json.loads(raw)

    def request(self, obj: Any, timeout: float = TIMEOUT) -> dict:
        """Send obj (a dict, or a str sent as-is) and return the next message."""
        if isinstance(obj, str):
            self.send_text(obj)
        else:
            self.send_json(obj)
        return self.recv_json(timeout)

    def assert_alive(self) -> None:
        """An echo round-trips, so the connection is open and usable."""
        marker = uuid.uuid4().hex
        reply = self.request({"type": "echo", "user": "alive", "text": marker})
        assert reply.get("type") == "echo" and reply.get("text") == marker, reply

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.close(code, reason)

    @property
    def close_rcvd_code(self) -> int | None:
        """The code of the close frame the server sent us, or None if none arrived."""
        rcvd = self.ws.protocol.close_rcvd
        return None if rcvd is None else rcvd.code

    def send_refused(self, message) -> None:
        """Send a message the server is expected to refuse by closing. websockets ends a
        fragmented send with an empty final frame, which can cross the server's close: a close
        that arrives while the client is still sending ends the send, not the test."""
        with contextlib.suppress(ConnectionClosed):
            self.ws.send(message)

    def wait_closed_by_server(self, timeout: float = TIMEOUT) -> list:
        """Read until the server closes the connection; return the messages read meanwhile."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got.append(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            except ConnectionClosed:
                return got
            except TimeoutError:
                break
        raise AssertionError(f"server did not close the connection within {timeout}s")


class Clients:
    """Opens clients and closes every one of them at exit, whatever happened in between."""

    def __init__(self, server):
        self.server = server
        self.opened: list = []

    def join(self, room: str | None = None, **kwargs) -> Client:
        c = Client(self.server, room, **kwargs)
        self.opened.append(c)
        return c

    def raw(self, path: str = "/ws", **kwargs) -> RawWS:
        r = RawWS(self.server.port, path, **kwargs)
        self.opened.append(r)
        return r

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for c in self.opened:
            with contextlib.suppress(Exception):  # best effort: some are closed already
                c.close()


# --- Prometheus text format: the parser is in tests/wire.py; polling /metrics here -------


def scrape(server) -> dict[str, Family]:
    status, _, body = http_request(server.port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return parse_metrics(body)


def value_of(server, name: str, **labels: str) -> float:
    return sample(scrape(server), name, **labels)


def wait_for_sample(
    server, name: str, expected: float, timeout: float = TIMEOUT, **labels: str
) -> None:
    """Poll /metrics until name{labels} == expected; fail with the last value seen."""
    last = wait_for(lambda: value_of(server, name, **labels) == expected, timeout)
    if not last:
        got = value_of(server, name, **labels)
        raise AssertionError(f"{name}{labels} is {got}, expected {expected} (waited {timeout}s)")


def snapshot(server) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, for before/after deltas."""
    out = {}
    for fam in scrape(server).values():
        for sname, labels, value in fam.samples:
            out[(sname, tuple(sorted(labels.items())))] = value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple]:
    return (name, tuple(sorted(labels.items())))
