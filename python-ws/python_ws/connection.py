"""One WebSocket session: the read path, the writer, keepalive, and how the connection ended.

Tornado's WebSocketHandler is the session, one instance per connection. The read path
(`on_message`) is synchronous on purpose: it is a plain `def`, so the two histograms time the work
itself with `with histogram.time():` blocks, never the creation of a coroutine
(prometheus/client_python#535). The writer (`write_queued`) empties the outbound queue the hub
fills, handing the socket every queued frame in one write (up to `BATCH_BYTES`): Tornado writes
each `_write_frame` call to the socket at once, one `send` per message. The queue holds finished
frames (`text_frame`), so a broadcast is framed once for all its recipients. A connection's
queue is written after each incoming message (see `on_message`), so in a closed-loop broadcast it
usually holds one frame then: the batching pays when a reader falls behind. Keepalive runs in
`tornado_close_codes.CloseCodesProtocol`, which reports a silent peer here.

`Ending` is the one place that decides how a connection ended and which
`ws_closed_conns_errors_total{reason}` that counts: every path records its ending through
`Connection.end`, and only the first one recorded counts.

Twin: rust-ws/src/connection.rs
"""

from __future__ import annotations

import collections
import enum
import struct
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.websocket import _WebSocketParams

from . import protocol
from .tornado_close_codes import CloseCodesProtocol

if TYPE_CHECKING:
    from .hub import Hub, Room

# The most one socket write carries; a longer queue goes out in several. The same figure as
# rust-ws's write_batch.rs.
BATCH_BYTES = 64 * 1024


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 §5.2), as a server sends it: the same bytes for
    every recipient, so a broadcast is framed once."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Ending(enum.Enum):
    """How a connection ended. `reason` is its ws_closed_conns_errors_total label, or None when
    the ending is not abnormal and counts nothing."""

    CLIENT_CLOSE = "client_close"  # the client started the close handshake
    SHUTDOWN = "shutdown"  # the server's 1001 at SIGTERM/SIGINT
    ABNORMAL = "abnormal"  # the TCP connection ended without a close handshake
    PROTOCOL = "protocol"  # the client broke the WebSocket protocol: 1002 or 1007
    TOO_LARGE = "too_large"  # a message over WS_MAX_MESSAGE_BYTES: 1009
    SLOW_CONSUMER = "slow_consumer"  # its outbound queue was full: 1008
    PING_TIMEOUT = "ping_timeout"  # no pong within WS_PING_TIMEOUT_SECS
    SEND_FAILED = "send_failed"  # a write to the open socket failed

    @property
    def reason(self) -> str | None:
        return None if self in (Ending.CLIENT_CLOSE, Ending.SHUTDOWN) else self.value


class Connection(tornado.websocket.WebSocketHandler):
    """One open WebSocket session; the hub keeps it in its room and fills its queue."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = hub.metrics
        self.room_name = ""  # the route sets it before the upgrade
        self.protocol: CloseCodesProtocol | None = None
        # Set by Hub.join when the upgrade completes.
        self.id = ""
        self.room: Room | None = None
        # The outbound queue: text frames not yet handed to the socket, plus at most one batch
        # of `inflight_count` frames that the socket has not fully taken yet (`inflight`).
        self.queue: collections.deque[bytes] = collections.deque()
        self.inflight: Future[None] | None = None
        self.inflight_count = 0
        self.flush_scheduled = False
        # How the connection ended, once something decided it; nothing more is queued after.
        self.ending: Ending | None = None

    def get_websocket_protocol(self) -> CloseCodesProtocol | None:
        if self.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        params = _WebSocketParams(
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_message_size=self.max_message_size,
            compression_options=self.get_compression_options(),
        )
        self.protocol = CloseCodesProtocol(self, params, report=self)
        return self.protocol

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self.hub.join(self, self.room_name)

    # --- the read path ----------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        self._handle(message)
        # Write the queues out now, after (and outside) both timers. Tornado handles a burst of
        # frames from one socket without yielding to the loop; writing only from a later loop
        # callback would let an idle reader's queue fill up with the whole burst.
        self.hub.flush_if_dirty()

    def _handle(self, message: str | bytes) -> None:
        m = self.metrics
        hub = self.hub
        if type(message) is not str:
            m.received_invalid.inc()
            hub.enqueue(self, protocol.error("binary_unsupported", protocol.BINARY_DETAIL))
            return
        room = self.room
        with m.handling.time():
            try:
                req = protocol.parse(message)
            except protocol.ProtocolError as err:
                req = None
                payload = protocol.error(err.code, err.detail)
            else:
                seq = room.next_seq() if req.type == "broadcast" else 0
                payload = protocol.reply(req, self.id, seq, protocol.now_ms())
        if req is None:
            m.received_invalid.inc()
            hub.enqueue(self, payload)
            return
        m.received_ok.inc()
        if req.type == "echo":
            hub.enqueue(self, payload)
            return
        hub.broadcast(self, req.ref, room, payload)

    # --- the writer -------------------------------------------------------------------------

    def pending(self) -> int:
        """Messages queued for this connection that are not yet written to its socket."""
        inflight = self.inflight
        busy = inflight is not None and not inflight.done()
        return len(self.queue) + (self.inflight_count if busy else 0)

    def write_queued(self) -> None:
        """Write queued frames to the socket, many per write, until the socket stops taking
        them. Each message counts as sent when the write carrying it has been taken whole."""
        proto = self.protocol
        sent = self.metrics.sent
        queue = self.queue
        # Bounded: every pass takes at least one frame off the queue.
        for _ in range(len(queue)):
            if self.inflight is not None or not queue:
                return  # the socket is full (_written() resumes when it drains), or all written
            if proto is None or proto.is_closing():
                queue.clear()
                return
            frames = [queue.popleft()]
            size = len(frames[0])
            while queue and size < BATCH_BYTES:
                size += len(queue[0])
                frames.append(queue.popleft())
            try:
                # The stream's own write: `write_message` would wrap it in an asyncio Task, and
                # `_write_frame` frames one message per write. Server frames are unmasked, so the
                # queued frames are the bytes on the wire.
                fut = proto.stream.write(frames[0] if len(frames) == 1 else b"".join(frames))
            except StreamClosedError:
                queue.clear()
                return
            if not fut.done():
                self.inflight = fut
                self.inflight_count = len(frames)
                fut.add_done_callback(self._written)
                return
            if fut.exception() is not None:
                # The stream was open a moment ago, so it was this write that failed.
                queue.clear()
                self.end(Ending.SEND_FAILED)
                return
            sent.inc(len(frames))

    def _written(self, fut: Future[None]) -> None:
        count, self.inflight, self.inflight_count = self.inflight_count, None, 0
        if fut.cancelled() or fut.exception() is not None:
            # Closed while waiting. Tornado fails pending writes the same way whichever side
            # closed the stream, so whoever closed it records the ending.
            self.queue.clear()
            return
        self.metrics.sent.inc(count)
        self.write_queued()

    # --- how the connection ended -----------------------------------------------------------

    def end(self, ending: Ending) -> None:
        """Record how this connection ended; only the first ending recorded counts."""
        if self.ending is None:
            self.ending = ending
            reason = ending.reason
            if reason is not None:
                self.metrics.closed_by_reason[reason].inc()

    def on_close(self) -> None:
        if self.room is None:
            return  # never joined: the upgrade did not complete
        self.hub.leave(self)
        # Nothing recorded an ending (no client close frame, no close the server started, no
        # reason): the TCP connection ended without a close handshake.
        self.end(Ending.ABNORMAL)

    # EndReport: what CloseCodesProtocol tells this connection.

    def client_closed(self) -> None:
        self.end(Ending.CLIENT_CLOSE)

    def protocol_violated(self) -> None:
        self.end(Ending.PROTOCOL)

    def too_large(self) -> None:
        self.end(Ending.TOO_LARGE)

    def ping_timed_out(self) -> None:
        self.end(Ending.PING_TIMEOUT)
