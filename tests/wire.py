"""The wire, as every Python test suite sees it: a raw-socket WebSocket client and a Prometheus
text-format parser. One of each for the conformance suite (tests/conformance, which re-exports
these from support.py) and python-ws's own tests (python-ws/tests).

- `RawWS`: a hand-rolled WebSocket client on a plain socket, for what a well-behaved library
  client cannot do: stop reading, never answer pings, send bad frames, reset the TCP connection.
- `upgrade_request`, `raw_http`: an upgrade request built byte by byte (any HTTP version, key,
  extra or missing header) and the server's answer to raw bytes, for requests no HTTP library
  will send.
- `parse_metrics`, `sample`, `le_value`: Prometheus text format 0.0.4 into families that keep
  what the conformance parity test compares: the family name as HELP/TYPE spell it, help, type,
  label sets and `le` values as the exact strings each server printed. prometheus_client's own
  parser (`text_string_to_metric_families`) renames counter families and their samples to the
  OpenMetrics `_total` convention and turns a sample outside its family block into a new family
  instead of an error, so it cannot tell what each server actually printed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = 5.0  # seconds; the bound on every receive, connect and close in the suites

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


# --- Raw HTTP ---------------------------------------------------------------------------------


def upgrade_request(
    port: int,
    path: str = "/ws",
    version: str = "HTTP/1.1",
    key: str | None = None,
    extra: str = "",
) -> bytes:
    """A WebSocket upgrade request as bytes: `key` defaults to a fresh valid one, `extra` is
    appended to the headers as is (each line ending in CRLF)."""
    key = base64.b64encode(os.urandom(16)).decode() if key is None else key
    return (
        f"GET {path} {version}\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


@dataclass
class HttpAnswer:
    """What the server answered to raw bytes: `status` is None when the connection ended (or the
    timeout passed) before a complete response head."""

    status: int | None
    head: bytes
    rest: bytes


def raw_http(port: int, request: bytes, timeout: float = TIMEOUT) -> HttpAnswer:
    """Send `request` on a fresh connection and read the response head (and what follows it in
    the same reads), then close. Never raises for a reset or EOF: those give status None."""
    buf = b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    if b"\r\n\r\n" not in buf:
        return HttpAnswer(None, buf, b"")
    head, rest = buf.split(b"\r\n\r\n", 1)
    return HttpAnswer(int(head.split(b" ", 2)[1]), head, rest)


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


def sample(families: dict[str, Family], name: str, **labels: str) -> float:
    """The value of the one sample called name with exactly these labels (KeyError if none)."""
    for fam in families.values():
        for sname, slabels, value in fam.samples:
            if sname == name and slabels == labels:
                return value
    raise KeyError(f"no sample {name}{labels}")


def le_value(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)
