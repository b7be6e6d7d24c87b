"""The Tornado workaround: a WebSocketProtocol13 subclass that ends connections the way
PROTOCOL.md §3 says, and tells its connection how they ended.

Tornado 6.6 drops the TCP connection on a bad frame without a close code, accepts unmasked client
frames, answers a close frame without a code with an empty close frame, echoes any close code
(0, 1005, 5000...), answers a 1-byte close payload with an empty close and drops the connection on
a close reason that is not UTF-8, after a 1009 resets the connection so the client may never see
the code, and ends a keepalive timeout with a codeless `close(reason="ping timed out")` that waits
5 s for a peer that is gone. This subclass sends 1002 or 1007, rejects unmasked frames and invalid
close frames, answers 1000, half-closes and drains before closing, and drops a silent peer at
once. (Pongs need nothing here: Tornado 6.6 keeps at most one pending, `_send_pong`.)

It knows nothing of rooms, queues or metrics: it reports what happened on the wire to its
connection through `EndReport`, and `connection.Ending` decides what that counts as. It relies on
Tornado internals (`_write_frame`, `_receive_frame`, `_handle_message`, `_abort`, `_waiting`,
`_ping_coroutine`), which is why `tornado` is pinned exactly in pyproject.toml.

Twin: rust-ws/src/codeless_close.rs, the rust-ws workaround for tungstenite's code-less close
echo (tungstenite rejects bad frames with 1002/1007 itself, so rust-ws needs no more than that).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Protocol

from tornado.concurrent import Future
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketHandler, WebSocketProtocol13, _WebSocketParams

# After failing a connection (1002, 1007, 1009) the server half-closes and reads and discards what
# the client still sends for this long, so the close frame is not lost to a TCP reset.
LINGER_SECS = 2.0
DRAIN_READ_BYTES = 65536
DRAIN_MAX_READS = 4096

OP_TEXT, OP_CLOSE, OP_PONG = 0x1, 0x8, 0xA


def close_frame_problem(payload: bytes) -> tuple[int, str] | None:
    """The close code and text to fail a client's close frame with, or None if it is valid.

    PROTOCOL.md §3 (RFC 6455 §5.5.1, §7.4): no payload, or a code that may be sent (1000-1003,
    1007-1014, 3000-4999) followed by a UTF-8 reason.
    """
    if not payload:
        return None
    if len(payload) == 1:
        return 1002, "close frame with a 1-byte payload"
    code = struct.unpack(">H", payload[:2])[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return 1002, "invalid close code"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return 1007, "close reason is not UTF-8"
    return None


class EndReport(Protocol):
    """What this layer tells its connection; each is called when the layer decides it."""

    def client_closed(self) -> None:
        """The client started the close handshake; it is being answered with its code."""

    def protocol_violated(self) -> None:
        """An invalid frame; the connection is being failed with 1002 or 1007."""

    def too_large(self) -> None:
        """A message over the size limit; the connection is being failed with 1009."""

    def ping_timed_out(self) -> None:
        """No pong within the ping timeout; the connection is being dropped."""


class CloseCodesProtocol(WebSocketProtocol13):
    """Tornado's RFC 6455 implementation with the close answers PROTOCOL.md asks for."""

    def __init__(
        self, handler: WebSocketHandler, params: _WebSocketParams, report: EndReport
    ) -> None:
        super().__init__(handler, False, params)
        self.report = report
        self._handling_opcode: int | None = None
        self._lingering = False
        self._in_frame = False  # inside Tornado's reading of one frame
        self._pong_received = False

    def write_text(self, payload: bytes) -> Future[None]:
        """Write one text frame; the Future is done as soon as the socket has taken it all.

        `write_message` would wrap every write in an asyncio Task, which finishes only loop
        iterations later; the stream's own Future tells exactly when a message left the queue.
        """
        return self._write_frame(True, OP_TEXT, payload)

    # --- frame checks Tornado leaves out ----------------------------------------------------

    async def _receive_frame(self) -> None:
        # Tornado reads a mask only when the frame says it has one; no mask left behind means an
        # unmasked client frame, which RFC 6455 §5.1 says a server must fail.
        self._frame_mask = None
        self._in_frame = True
        try:
            await super()._receive_frame()
        finally:
            self._in_frame = False
        if self._frame_mask is None and not self.client_terminated:
            self._fail_protocol(1002, "unmasked frame")  # a non-final fragment

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if self._frame_mask is None and not self.client_terminated:
            self._fail_protocol(1002, "unmasked frame")
            return None
        if opcode == OP_PONG:
            self._pong_received = True
        elif opcode == OP_CLOSE and not self.client_terminated:
            problem = close_frame_problem(data)
            if problem is not None:
                # Tornado would echo the code, or fail on the reason and drop the connection.
                self._fail_protocol(*problem)
                return None
        self._handling_opcode = opcode
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._handling_opcode = None

    # --- keepalive --------------------------------------------------------------------------

    async def periodic_ping(self) -> None:
        """Tornado's keepalive schedule, with the timeout reported to the connection.

        Tornado's own loop ends a silent peer with `self.close(reason="ping timed out")`, which is
        indistinguishable from any other codeless close except by that text. Replacing the loop
        (Tornado starts it as `periodic_ping` from `start_pinging`) says it directly: same
        schedule, a ping every interval, dropped when no pong came within the timeout.
        """
        interval = self.ping_interval
        timeout = self.ping_timeout
        await asyncio.sleep(interval)
        # Ends when the connection closes: close() cancels this task, and a closing
        # connection stops the loop.
        while not self.is_closing():
            self._pong_received = False
            ping_time = IOLoop.current().time()
            self.write_ping(b"")
            await asyncio.sleep(timeout)
            if timeout > 0 and not self._pong_received:
                self._drop_silent_peer()
                return
            now = IOLoop.current().time()
            await asyncio.sleep(
                self.ping_sleep_time(last_ping_time=ping_time, interval=interval, now=now)
            )

    def _drop_silent_peer(self) -> None:
        self.report.ping_timed_out()
        super().close(1000, "ping timed out")
        super()._abort()  # the peer is gone; don't wait 5 s for its close frame

    # --- how connections end ----------------------------------------------------------------

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if not self.server_terminated:
            if self.client_terminated:
                # Answering the client's close frame, with its code or 1000 when it had none.
                self.report.client_closed()
                if code is None:
                    code = 1000
            elif code == 1009:
                self.report.too_large()
                self._fail(1009, reason or "message too big")
                return
        super().close(code, reason)

    def _abort(self) -> None:
        if self._lingering:
            return  # the close frame is out; _linger closes the stream
        stream = self.stream
        if (
            self._in_frame
            and not self.server_terminated
            and not self.client_terminated
            and stream is not None
            and not stream.closed()
        ):
            # Tornado gave up on a frame it cannot accept (reserved bits, bad opcode, bad
            # fragmentation, unmasked, invalid UTF-8): fail the connection with a close code.
            if self._handling_opcode == OP_TEXT:
                self._fail_protocol(1007, "invalid UTF-8")
            else:
                self._fail_protocol(1002, "protocol error")
            return
        super()._abort()

    def _fail_protocol(self, code: int, text: str) -> None:
        self.report.protocol_violated()
        self._fail(code, text)

    def _fail(self, code: int, text: str) -> None:
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
