"""Helpers for python-ws's tests: the server as a real process on a free loopback port (through
the repository's shared tests/harness.py), and a bare-socket WebSocket client. (Not named
conftest, so it can't clash with tests/conftest.py when both suites run in one pytest session.)"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The repository's shared harness starts every server the suites use (tests/harness.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import harness
from harness import free_port, http_get

__all__ = ["RawClient", "Server", "free_port", "http_get", "parse_samples", "run_server"]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of a text exposition."""
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def metrics(self) -> dict[str, float]:
        status, _, body = http_get(self.url + "/metrics")
        assert status == 200
        return parse_samples(body)

    def metric(self, name: str) -> float:
        return self.metrics()[name]

    def wait_metric(self, name: str, value: float, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.metric(name)
            if seen == value:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} is {seen}, expected {value} within {timeout}s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_server(env: dict[str, str] | None = None) -> Iterator[Server]:
    """python-ws as a real process on a free loopback port (tests/harness.py starts it)."""
    with harness.running_server("python", env) as s:
        yield Server(s.port, s.proc, s.log_path)


class RawClient:
    """A WebSocket client over a bare socket, for frames a real client library won't send."""

    def __init__(self, port: int, path: str = "/ws", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5.0)
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
            assert chunk, "server closed during the handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split()[1])

    def send_frame(
        self, opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True, rsv: int = 0
    ) -> None:
        header = bytes([(0x80 if fin else 0) | rsv | opcode])
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

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(n)

    def recv_close(self, max_frames: int = 100_000) -> int | None:
        """Read frames until a close frame; return its code (None if it had none)."""
        for _ in range(max_frames):
            opcode, payload = self.recv_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        raise AssertionError("no close frame")

    def close(self) -> None:
        self.sock.close()
