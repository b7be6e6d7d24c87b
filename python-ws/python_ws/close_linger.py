"""Workaround: after a close frame that fails a connection, Tornado closes a socket that still has
unread data, which sends a TCP reset that can destroy the close frame in flight.

Tornado ends a too-large message with `close(1009)` and `_abort()` at once; the client, still
sending, gets a reset and may never see the 1009. `fail(code, text)` sends the close frame, then
half-closes the socket and reads and discards what the client still sends (up to `LINGER_SECS`)
before closing it. Tornado's own `close(1009)` is reported as `too_large` instead, and the
connection fails it through `fail` (`Connection.end` chooses the code).

Twin: none as a file. rust-ws drains the same way in connection.rs (`close_after_read_error`),
since tokio-tungstenite leaves closing the socket to it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Protocol

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketProtocol13

# After failing a connection (1002, 1007, 1009) the server half-closes and reads and discards what
# the client still sends for this long, so the close frame is not lost to a TCP reset.
LINGER_SECS = 2.0
DRAIN_READ_BYTES = 65536
DRAIN_MAX_READS = 4096

OP_CLOSE = 0x8
# Tornado's code for a message over the size limit (`_receive_frame`).
TORNADO_TOO_BIG = 1009


class TooLargeReport(Protocol):
    def too_large(self) -> None:
        """A message over the size limit."""


class CloseLinger(WebSocketProtocol13):
    report: TooLargeReport
    _lingering = False

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code == TORNADO_TOO_BIG and not self.server_terminated and not self.client_terminated:
            self.report.too_large()
            if self.server_terminated:
                return
        super().close(code, reason)

    def _abort(self) -> None:
        if self._lingering:
            return  # the close frame is out; _linger closes the stream
        super()._abort()

    def fail(self, code: int, text: str) -> None:
        """Send a close frame with `code`, then linger (half-closed, draining) and close."""
        self._lingering = True
        self.client_terminated = True  # ends Tornado's receive loop
        self.server_terminated = True  # no frame after the close frame
        if self._waiting is not None:
            self.stream.io_loop.remove_timeout(self._waiting)
            self._waiting = None
        if self._ping_coroutine is not None:
            self._ping_coroutine.cancel()
            self._ping_coroutine = None
        stream = self.stream
        try:
            fut = self._write_frame(True, OP_CLOSE, struct.pack(">H", code) + text.encode())
        except StreamClosedError:
            stream.close()
            return
        stream.io_loop.call_later(LINGER_SECS, stream.close)
        fut.add_done_callback(lambda f: _spawn(_linger(stream)))


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    # The loop keeps only weak references to tasks; hold this one until it is done.
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _linger(stream: IOStream) -> None:
    """Half-close after the close frame, discard what the client still sends, then close.

    Closing a socket with unread data sends a TCP reset, which can destroy the close frame in
    flight. Bounded by DRAIN_MAX_READS reads and by the LINGER_SECS timer that closes the stream.
    """
    if stream.closed():
        return
    try:
        stream.socket.shutdown(socket.SHUT_WR)
    except OSError:
        stream.close()
        return
    if stream.reading():
        return  # a read is already pending and drains it; the timer closes the stream
    try:
        for _ in range(DRAIN_MAX_READS):
            await stream.read_bytes(DRAIN_READ_BYTES, partial=True)
    except StreamClosedError:
        pass
    finally:
        stream.close()
