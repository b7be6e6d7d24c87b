"""One WebSocket session: the read path, the writer, and how the connection ended.

Tornado's WebSocketHandler is the session, one instance per connection. The read path
(`on_message`) is synchronous on purpose: it is a plain `def`, so the two histograms time the work
itself with `with histogram.time():` blocks, never the creation of a coroutine
(prometheus/client_python#535). The writer (`write_queued`) empties the outbound queue the hub
fills (the connection is the hub's `Outbox`), handing the socket every queued frame in one write
(up to `BATCH_BYTES`): Tornado writes each `_write_frame` call to the socket at once, one `send`
per message. The queue holds finished frames (`hub.text_frame`), so a broadcast is framed once
for all its recipients. A connection's queue is written after each incoming message (see
`on_message`), so in a closed-loop broadcast it usually holds one frame then: the batching pays
when a reader falls behind.

Beneath the session, `WsProtocol` is Tornado's RFC 6455 implementation with one layer per Tornado
workaround (`unmasked_frames`, `ping_timeout`, `codeless_close`, `bad_frame_abort`,
`close_linger`). Each reports what it saw on the wire to this connection and sends nothing of its
own accord.

`Connection.end` is the one place that decides how a connection ended: which
`ws_closed_conns_errors_total{reason}` it counts and which close frame (if any) the server sends.
Every path records its ending there, the hub's `Kill` included; only the first one counts.

Twin: rust-ws/src/connection.rs
"""

from __future__ import annotations

import enum
from typing import Any

import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketHandler, WebSocketProtocol13, _WebSocketParams

from . import protocol
from .bad_frame_abort import BadFrameAbort
from .close_linger import CloseLinger
from .codeless_close import CodelessClose
from .hub import Hub, Kill, Outbox
from .ping_timeout import PingTimeout
from .unmasked_frames import UnmaskedFrames

# The most one socket write carries; a longer queue goes out in several. The same figure as
# rust-ws's write_batch.rs.
BATCH_BYTES = 64 * 1024


class Ending(enum.Enum):
    """How a connection ended. `reason` is its ws_closed_conns_errors_total label, or None when
    the ending is not abnormal and counts nothing."""

    CLIENT_CLOSE = enum.auto()  # the client started the close handshake
    SHUTDOWN = enum.auto()  # SIGTERM/SIGINT
    ABNORMAL = enum.auto()  # the TCP connection ended without a close handshake
    PROTOCOL = enum.auto()  # the client broke the WebSocket protocol
    INVALID_PAYLOAD = enum.auto()  # text (or a close reason) that is not UTF-8
    TOO_LARGE = enum.auto()  # a message over WS_MAX_MESSAGE_BYTES
    SLOW_CONSUMER = enum.auto()  # its outbound queue was full
    PING_TIMEOUT = enum.auto()  # no pong within WS_PING_TIMEOUT_SECS
    SEND_FAILED = enum.auto()  # a write to the open socket failed

    @property
    def reason(self) -> str | None:
        return _REASONS[self]


_REASONS: dict[Ending, str | None] = {
    Ending.CLIENT_CLOSE: None,
    Ending.SHUTDOWN: None,
    Ending.ABNORMAL: "abnormal",
    Ending.PROTOCOL: "protocol",
    Ending.INVALID_PAYLOAD: "protocol",
    Ending.TOO_LARGE: "too_large",
    Ending.SLOW_CONSUMER: "slow_consumer",
    Ending.PING_TIMEOUT: "ping_timeout",
    Ending.SEND_FAILED: "send_failed",
}
_KILLED = {Kill.SLOW_CONSUMER: Ending.SLOW_CONSUMER, Kill.SHUTDOWN: Ending.SHUTDOWN}


class WsProtocol(
    UnmaskedFrames, PingTimeout, CodelessClose, BadFrameAbort, CloseLinger, WebSocketProtocol13
):
    """Tornado's RFC 6455 implementation with the workarounds PROTOCOL.md §3 needs; it reports
    to `report` (the connection) and closes only when the connection tells it how."""

    def __init__(
        self, handler: WebSocketHandler, params: _WebSocketParams, report: Connection
    ) -> None:
        super().__init__(handler, False, params)
        self.report = report


class Connection(tornado.websocket.WebSocketHandler, Outbox):
    """One open WebSocket session; the hub keeps it in its room and fills its queue."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = hub.metrics
        self.room_name = ""  # the route sets it before the upgrade
        self.protocol: WsProtocol | None = None
        # How the connection ended, once something decided it.
        self.ending: Ending | None = None
        # The outbox (id, room, queue, inflight) was set up by Outbox.__init__, which
        # RequestHandler.__init__ reaches through super().

    def get_websocket_protocol(self) -> WsProtocol | None:
        if self.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        params = _WebSocketParams(
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_message_size=self.max_message_size,
            compression_options=self.get_compression_options(),
        )
        self.protocol = WsProtocol(self, params, report=self)
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

    def end(self, ending: Ending, detail: str = "") -> None:
        """Record how this connection ended, count it, and close the way that ending calls for;
        only the first ending recorded counts and closes. `detail` is the close frame's text for
        a protocol error."""
        if self.ending is not None:
            return
        self.ending = ending
        self.shut()
        reason = ending.reason
        if reason is not None:
            self.metrics.closed_by_reason[reason].inc()
        proto = self.protocol
        if proto is None:
            return
        # The close frame each ending calls for (PROTOCOL.md §3).
        if ending is Ending.CLIENT_CLOSE:
            # The client's code echoed, 1000 when its close frame had none.
            code = proto.close_code
            proto.answer_close(1000 if code is None else code)
        elif ending is Ending.SLOW_CONSUMER:
            self.close(1008, "slow consumer")
        elif ending is Ending.SHUTDOWN:
            self.close(1001, "server shutting down")
        elif ending is Ending.PROTOCOL:
            proto.fail(1002, detail)
        elif ending is Ending.INVALID_PAYLOAD:
            proto.fail(1007, detail)
        elif ending is Ending.TOO_LARGE:
            proto.fail(1009, "message too big")
        elif ending is Ending.PING_TIMEOUT:
            # No close frame: the peer is not reading, and a code would claim a reason it never
            # agreed to; the TCP connection just ends.
            proto.drop()
        # ABNORMAL, SEND_FAILED: the socket is gone already; nothing to send.

    def kill(self, why: Kill) -> None:
        self.end(_KILLED[why])

    def on_close(self) -> None:
        if self.room is None:
            return  # never joined: the upgrade did not complete
        self.hub.leave(self)
        # Nothing recorded an ending (no client close frame, no close the server started, no
        # reason): the TCP connection ended without a close handshake.
        self.end(Ending.ABNORMAL)

    # What the protocol layers report (each names them in its own Protocol class).

    def client_closed(self) -> None:
        self.end(Ending.CLIENT_CLOSE)

    def protocol_violated(self, detail: str) -> None:
        self.end(Ending.PROTOCOL, detail)

    def invalid_payload(self, detail: str) -> None:
        self.end(Ending.INVALID_PAYLOAD, detail)

    def too_large(self) -> None:
        self.end(Ending.TOO_LARGE)

    def ping_timed_out(self) -> None:
        self.end(Ending.PING_TIMEOUT)
