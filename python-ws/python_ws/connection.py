"""One WebSocket session: the read path, the writer, keepalive, and how the connection ended.

Tornado's WebSocketHandler is the session, one instance per connection. The read path
(`on_message`) is synchronous on purpose: it is a plain `def`, so the two histograms time the work
itself with `with histogram.time():` blocks, never the creation of a coroutine
(prometheus/client_python#535). The writer (`write_queued`) empties the outbound queue the hub
fills. Keepalive runs in `tornado_close_codes.CloseCodesProtocol`, which reports a silent peer
here.

`Ending` is the one place that decides how a connection ended and which
`ws_closed_conns_errors_total{reason}` that counts: every path records its ending through
`Connection.end`, and only the first one recorded counts.

Twin: rust-ws/src/connection.rs
"""

from __future__ import annotations

import collections
import enum
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.websocket import _WebSocketParams

from . import protocol
from .tornado_close_codes import CloseCodesProtocol

if TYPE_CHECKING:
    from .hub import Hub, Room


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
        # The outbound queue: payloads not yet handed to the socket, plus at most one frame that
        # the socket has not fully taken yet (`inflight`).
        self.queue: collections.deque[bytes] = collections.deque()
        self.inflight: Future[None] | None = None
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
        with m.broadcast.time():
            hub.fan_out(room, payload)

    # --- the writer -------------------------------------------------------------------------

    def pending(self) -> int:
        """Messages queued for this connection that are not yet written to its socket."""
        inflight = self.inflight
        return len(self.queue) + (inflight is not None and not inflight.done())

    def write_queued(self) -> None:
        """Write queued messages to the socket until the socket stops taking them."""
        proto = self.protocol
        sent = self.metrics.sent
        queue = self.queue
        # Bounded: every pass takes one message off the queue.
        for _ in range(len(queue)):
            if self.inflight is not None:
                return  # the socket is full; _written() resumes when it drains
            if proto is None or proto.is_closing():
                queue.clear()
                return
            payload = queue.popleft()
            try:
                fut = proto.write_text(payload)
            except StreamClosedError:
                queue.clear()
                return
            if not fut.done():
                self.inflight = fut
                fut.add_done_callback(self._written)
                return
            if fut.exception() is not None:
                # The stream was open a moment ago, so it was this write that failed.
                queue.clear()
                self.end(Ending.SEND_FAILED)
                return
            sent.inc()

    def _written(self, fut: Future[None]) -> None:
        self.inflight = None
        if fut.cancelled() or fut.exception() is not None:
            # Closed while waiting. Tornado fails pending writes the same way whichever side
            # closed the stream, so whoever closed it records the ending.
            self.queue.clear()
            return
        self.metrics.sent.inc()
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
