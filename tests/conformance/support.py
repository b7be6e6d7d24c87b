"""Clients and helpers for the conformance suite: real sockets to 127.0.0.1, nothing mocked.

- `Client`: a `websockets` sync client with the welcome already read and JSON helpers; every
  receive has a timeout.
- `RawWS`: a hand-rolled WebSocket client on a plain socket, for what a well-behaved library
  client cannot do: stop reading, never answer pings, send bad frames, reset the TCP connection.
- `http_request`: plain HTTP over `http.client` (no proxies).
- `parse_metrics`, `scrape`, `sample`, `wait_for_sample`: a small Prometheus text-format parser
  and bounded polling of `/metrics`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

TIMEOUT = 5.0  # seconds; the bound on every receive, connect and close in the suite

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
}
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


# --- A raw WebSocket client -------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")

    def json(self) -> dict:
        assert self.opcode == OP_TEXT, self
        return json.loads(self.payload.decode("utf-8"))


class PeerClosed(Exception):
    """The TCP connection ended (EOF or reset) while reading."""


class RawWS:
    """A WebSocket client on a plain socket: handshake by hand, frames by hand, no auto-replies.

    `rcvbuf` shrinks SO_RCVBUF before connecting, so a client that stops reading backs up the
    server quickly. `status` is the HTTP status of the handshake response (101 on success).
    """

    def __init__(self, port: int, path: str = "/ws", rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise PeerClosed("EOF during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])

    # sending
    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        fin: bool = True,
        masked: bool = True,
        rsv: int = 0,
    ) -> None:
        header = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        n = len(payload)
        mask_bit = 0x80 if masked else 0
        if n < 126:
            header += bytes([mask_bit | n])
        elif n < 65536:
            header += bytes([mask_bit | 126]) + struct.pack("!H", n)
        else:
            header += bytes([mask_bit | 127]) + struct.pack("!Q", n)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            header += mask
        self.sock.sendall(header + payload)

    def send_json(self, obj: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(obj, ensure_ascii=False).encode())

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
        self.send_frame(OP_CLOSE, payload)

    # receiving
    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as err:
                raise TimeoutError("no complete frame in time") from err
            except ConnectionResetError as err:
                raise PeerClosed("connection reset") from err
            if not chunk:
                raise PeerClosed("EOF")
            self.buf += chunk

    def recv_frame(self, timeout: float = TIMEOUT) -> Frame:
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._fill(10, deadline)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        if b1 & 0x80:
            raise AssertionError("the server sent a masked frame")
        self._fill(pos + n, deadline)
        payload, self.buf = self.buf[pos : pos + n], self.buf[pos + n :]
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

    def recv_json(self, timeout: float = TIMEOUT) -> dict:
        """The next data message (a single text frame), skipping pings."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode != OP_PING:
                return frame.json()

    def wait_end(self, timeout: float = TIMEOUT) -> tuple[list[Frame], bool]:
        """Read until the TCP connection ends; return (frames read, True if it ended in time)."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.recv_frame(max(0.0, deadline - time.monotonic())))
            except PeerClosed:
                return frames, True
            except TimeoutError:
                return frames, False

    def reset(self) -> None:
        """End the TCP connection with a RST (SO_LINGER 0), no close handshake."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


# --- Prometheus text format -------------------------------------------------------------------


@dataclass
class Family:
    name: str
    type: str | None = None
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(s: str, quote: bool) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"' if quote else '\\"'}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _parse_labels(text: str) -> dict[str, str]:
    labels, i = {}, 0
    while i < len(text):
        eq = text.index("=", i)
        name = text[i:eq].strip().lstrip(",").strip()
        assert text[eq + 1] == '"', f"bad label syntax: {text!r}"
        j = eq + 2
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        labels[name] = _unescape(text[eq + 2 : j], quote=True)
        i = j + 1
        while i < len(text) and text[i] in ", ":
            i += 1
    return labels


def parse_metrics(text: str) -> dict[str, Family]:
    """Parse Prometheus text format 0.0.4 into families keyed by the name in HELP/TYPE.

    Samples belong to the family named by the closest HELP/TYPE line above them, as the format
    requires; a sample whose name is not that family's name (plus _bucket/_sum/_count/_created)
    fails the parse.
    """
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                rest = parts[3] if len(parts) > 3 else ""
                current = families.setdefault(name, Family(name))
                if parts[1] == "HELP":
                    assert current.help is None, f"two HELP lines for {name}"
                    current.help = _unescape(rest, quote=False)
                else:
                    assert current.type is None, f"two TYPE lines for {name}"
                    current.type = rest.strip()
            continue
        if "{" in line:
            sname, rest = line.split("{", 1)
            label_text, rest = rest.rsplit("}", 1)
            labels = _parse_labels(label_text)
        else:
            sname, rest = line.split(None, 1)
            labels = {}
        value = float(rest.split()[0])
        assert current is not None, f"sample before any HELP/TYPE: {line!r}"
        suffixes = ("", "_bucket", "_sum", "_count", "_created", "_total")
        assert any(sname == current.name + s for s in suffixes), (
            f"sample {sname!r} outside its family block (current family {current.name!r})"
        )
        current.samples.append((sname, labels, value))
    return families


def scrape(server) -> dict[str, Family]:
    status, _, body = http_request(server.port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return parse_metrics(body)


def sample(families: dict[str, Family], name: str, **labels: str) -> float:
    """The value of the one sample called name with exactly these labels (KeyError if none)."""
    for fam in families.values():
        for sname, slabels, value in fam.samples:
            if sname == name and slabels == labels:
                return value
    raise KeyError(f"no sample {name}{labels}")


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


def le_value(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)
