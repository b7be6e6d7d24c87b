"""The Tornado application: routes, the WebSocket session and the connection hub.

`make_app(config)` builds the application for `__main__` and for the tests alike. All connection
state lives in `Hub`; `WsHandler.open` and `WsHandler.on_close` are the only code that adds or
removes a connection, and that is where the `ws_connections` gauge moves.

Everything on the message path is synchronous: `on_message` is a plain `def`, so the two
histograms time the work itself with context managers, never the creation of a coroutine
(prometheus/client_python#535).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import struct
from typing import Any

import tornado.web
import tornado.websocket
from tornado.concurrent import Future
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketProtocol13, _WebSocketParams

from . import SERVER_NAME, messages
from .config import Config
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("python_ws")

ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
DEFAULT_ROOM = "lobby"

# After failing a connection (1002, 1007, 1009) the server half-closes and reads and discards what
# the client still sends for this long, so the close frame is not lost to a TCP reset.
LINGER_SECS = 2.0
DRAIN_READ_BYTES = 65536
DRAIN_MAX_READS = 4096


class Connection:
    """One open WebSocket session, as the hub sees it."""

    __slots__ = (
        "closing",
        "end_reason",
        "flush_scheduled",
        "handler",
        "id",
        "inflight",
        "queue",
        "room",
    )

    def __init__(self, conn_id: str, room: Room, handler: WsHandler) -> None:
        self.id = conn_id
        self.room = room
        self.handler = handler
        # The outbound queue: payloads not yet handed to the socket, plus at most one frame that
        # the socket has not fully taken yet (`inflight`).
        self.queue: collections.deque[bytes] = collections.deque()
        self.inflight: Future[None] | None = None
        self.flush_scheduled = False
        # The first reason this connection ended abnormally (a ws_closed_conns_errors_total label).
        self.end_reason: str | None = None
        # The server has sent (or is sending) a close frame: nothing more is queued.
        self.closing = False

    def pending(self) -> int:
        """Messages queued for this connection that are not yet written to its socket."""
        inflight = self.inflight
        return len(self.queue) + (inflight is not None and not inflight.done())


class Room:
    __slots__ = ("members", "name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        # A dict keeps insertion order and removes in O(1).
        self.members: dict[Connection, None] = {}
        self.seq = 0


class Hub:
    """Every open connection and room, the outbound queues and the metrics that follow them."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.rooms: dict[str, Room] = {}
        self.connections: dict[Connection, None] = {}
        self._next_id = 0
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self.shutting_down = False
        self._empty: asyncio.Event | None = None

    # --- membership: called only from WsHandler.open and WsHandler.on_close -----------------

    def is_full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and len(self.connections) >= limit

    def join(self, handler: WsHandler, room_name: str) -> Connection:
        self._next_id += 1
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = Room(room_name)
        conn = Connection(str(self._next_id), room, handler)
        room.members[conn] = None
        self.connections[conn] = None
        self.metrics.connections.inc()
        self.metrics.accepted.inc()
        self.enqueue(conn, messages.welcome(conn.id, room.name, SERVER_NAME, len(room.members)))
        return conn

    def leave(self, conn: Connection, peer_closed: bool) -> None:
        if conn not in self.connections:
            return
        del self.connections[conn]
        room = conn.room
        room.members.pop(conn, None)
        if not room.members:
            # A room exists while it has a connection; the next one starts again at seq 1.
            del self.rooms[room.name]
        conn.queue.clear()
        self.metrics.connections.dec()
        if self._empty is not None and not self.connections:
            self._empty.set()
        # A close handshake started by the client, or a close the server started on purpose
        # (shutdown, or an eviction already counted), is not counted here; anything else is a
        # TCP connection that ended without one.
        if not peer_closed and not conn.closing:
            self.end(conn, "abnormal")

    def end(self, conn: Connection, reason: str) -> None:
        """Record why `conn` ended abnormally; only the first reason counts."""
        if conn.end_reason is None:
            conn.end_reason = reason
            self.metrics.closed_by_reason[reason].inc()

    # --- messages ---------------------------------------------------------------------------

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        self._handle(conn, message)
        # Write the queues out now, after (and outside) both timers. Tornado handles a burst of
        # frames from one socket without yielding to the loop; writing only from a later loop
        # callback would let an idle reader's queue fill up with the whole burst.
        if self._dirty:
            self.flush()

    def _handle(self, conn: Connection, message: str | bytes) -> None:
        m = self.metrics
        if type(message) is not str:
            m.received_invalid.inc()
            self.enqueue(conn, messages.error("binary_unsupported", messages.BINARY_DETAIL))
            return
        with m.handling.time():
            try:
                req = messages.parse(message)
            except messages.ProtocolError as err:
                req = None
                payload = messages.error(err.code, err.detail)
            else:
                if req.type == "broadcast":
                    room = conn.room
                    room.seq += 1
                    seq = room.seq
                else:
                    seq = 0
                payload = messages.reply(req, conn.id, seq, messages.now_ms())
        if req is None:
            m.received_invalid.inc()
            self.enqueue(conn, payload)
            return
        m.received_ok.inc()
        if req.type == "echo":
            self.enqueue(conn, payload)
            return
        with m.broadcast.time():
            self.fan_out(conn.room, payload)

    def fan_out(self, room: Room, payload: bytes) -> None:
        """Queue one serialised payload for every member of `room`; writes nothing."""
        # A snapshot: nothing below removes members synchronously, but a broadcast must never
        # fail half-way because the room changed under it.
        for member in tuple(room.members):
            try:
                self.enqueue(member, payload)
            except Exception:
                # One member's failure must not cost the others their message.
                log.exception("fan-out to connection %s failed", member.id)

    # --- the outbound queues ----------------------------------------------------------------

    def enqueue(self, conn: Connection, payload: bytes) -> None:
        """Queue `payload` for `conn` without waiting; evict it if its queue is full."""
        if conn.closing or conn.end_reason is not None:
            return  # dropped: this connection is going away
        if conn.pending() >= self.config.send_queue:
            self.evict_slow_consumer(conn)
            return
        conn.queue.append(payload)
        if not conn.flush_scheduled:
            conn.flush_scheduled = True
            self._dirty.append(conn)
            if not self._flush_scheduled:
                # For messages queued outside on_message (the welcome): one callback per loop
                # iteration writes every connection that has new messages.
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write out the queues of every connection that has new messages."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush_scheduled = False
            try:
                self._flush(conn)
            except Exception:
                log.exception("writing to connection %s failed", conn.id)

    def _flush(self, conn: Connection) -> None:
        """Write queued messages to the socket until the socket stops taking them."""
        proto = conn.handler.protocol
        sent = self.metrics.sent
        # Bounded: every pass takes one message off the queue.
        for _ in range(len(conn.queue)):
            if conn.inflight is not None:
                return  # the socket is full; _written() resumes when it drains
            if proto is None or proto.is_closing():
                conn.queue.clear()
                return
            payload = conn.queue.popleft()
            try:
                fut = proto.write_text(payload)
            except StreamClosedError:
                conn.queue.clear()
                return
            if not fut.done():
                conn.inflight = fut
                fut.add_done_callback(lambda f, conn=conn: self._written(conn, f))
                return
            if fut.exception() is not None:
                # The stream was open a moment ago, so it was this write that failed.
                conn.queue.clear()
                self.end(conn, "send_failed")
                return
            sent.inc()

    def _written(self, conn: Connection, fut: Future[None]) -> None:
        conn.inflight = None
        if fut.cancelled() or fut.exception() is not None:
            conn.queue.clear()  # closed while waiting; whoever closed it counts the reason
            return
        self.metrics.sent.inc()
        self._flush(conn)

    def evict_slow_consumer(self, conn: Connection) -> None:
        self.end(conn, "slow_consumer")
        conn.closing = True
        conn.queue.clear()
        conn.handler.close(1008, "slow consumer")

    def shutdown(self) -> None:
        """Send every client a 1001 close frame."""
        self.shutting_down = True
        for conn in tuple(self.connections):
            conn.closing = True
            conn.queue.clear()
            conn.handler.close(1001, "server shutting down")

    async def wait_empty(self) -> None:
        """Wait until every connection has ended."""
        if self.connections:
            self._empty = asyncio.Event()
            await self._empty.wait()


class Protocol(WebSocketProtocol13):
    """Tornado's RFC 6455 implementation with the answers PROTOCOL.md asks for.

    Tornado 6.6 drops the TCP connection on a bad frame without a close code, accepts unmasked
    client frames, answers a close frame without a code with an empty close frame, and after a
    1009 resets the connection so the client may never see the code. This subclass sends 1002 or
    1007, rejects unmasked frames, answers 1000, and half-closes and drains before closing.
    It also records why a connection ended so the hub can count it.
    """

    def __init__(self, handler: WsHandler, params: _WebSocketParams) -> None:
        super().__init__(handler, False, params)
        self.ws_handler = handler
        self.peer_closed = False  # the client sent a close frame
        self._handling_opcode: int | None = None
        self._lingering = False
        self._in_frame = False  # inside Tornado's reading of one frame

    def write_text(self, payload: bytes) -> Future[None]:
        """Write one text frame; the Future is done as soon as the socket has taken it all.

        `write_message` would wrap every write in an asyncio Task, which finishes only loop
        iterations later; the stream's own Future tells exactly when a message left the queue.
        """
        return self._write_frame(True, 0x1, payload)

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
            self._fail("protocol", 1002, "unmasked frame")  # a non-final fragment

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if self._frame_mask is None and not self.client_terminated:
            self._fail("protocol", 1002, "unmasked frame")
            return None
        self._handling_opcode = opcode
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._handling_opcode = None

    # --- how connections end ----------------------------------------------------------------

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if not self.server_terminated:
            if self.client_terminated:
                # Answering the client's close frame, with its code or 1000 when it had none.
                self.peer_closed = True
                if code is None:
                    code = 1000
            elif code == 1009:
                self._fail("too_large", 1009, reason or "message too big")
                return
            elif code is None and reason == "ping timed out":
                self._note("ping_timeout")
                super().close(1000, "ping timed out")
                super()._abort()  # the peer is gone; don't wait 5 s for its close frame
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
            if self._handling_opcode == 0x1:
                self._fail("protocol", 1007, "invalid UTF-8")
            else:
                self._fail("protocol", 1002, "protocol error")
            return
        super()._abort()

    def _note(self, reason: str) -> None:
        conn = self.ws_handler.conn
        if conn is not None:
            self.ws_handler.hub.end(conn, reason)

    def _fail(self, reason: str, code: int, text: str) -> None:
        self._note(reason)
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
            fut = self._write_frame(True, 0x8, struct.pack(">H", code) + text.encode())
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


class WsHandler(tornado.websocket.WebSocketHandler):
    """GET /ws: refuse bad rooms (400) and a full server (503) before the upgrade."""

    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self.conn: Connection | None = None
        self.protocol: Protocol | None = None
        self.room_name = DEFAULT_ROOM

    async def get(self, *args: Any, **kwargs: Any) -> None:
        room = self.get_query_argument("room", DEFAULT_ROOM, strip=False)
        if not ROOM_RE.fullmatch(room):
            self.set_status(400)
            self.finish("invalid room: must be 1-64 characters of A-Z a-z 0-9 _ . -\n")
            return
        if self.hub.is_full() or self.hub.shutting_down:
            self.set_status(503)
            self.finish("too many connections\n")
            return
        self.room_name = room
        # From here to open() nothing yields to the event loop, so the capacity check holds.
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        # Load generators and the conformance suite are not browsers, and no cookie is involved;
        # rust-ws does not check Origin either.
        return True

    def get_websocket_protocol(self) -> Protocol | None:
        if self.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        params = _WebSocketParams(
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_message_size=self.max_message_size,
            compression_options=self.get_compression_options(),
        )
        self.protocol = Protocol(self, params)
        return self.protocol

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self.conn = self.hub.join(self, self.room_name)

    def on_message(self, message: str | bytes) -> None:
        self.hub.on_message(self.conn, message)

    def on_close(self) -> None:
        if self.conn is not None:
            proto = self.protocol
            self.hub.leave(self.conn, peer_closed=proto is not None and proto.peer_closed)

    def _not_found(self, *args: Any, **kwargs: Any) -> None:
        raise tornado.web.HTTPError(404)

    head = post = put = patch = delete = options = _not_found


class GetOnlyHandler(tornado.web.RequestHandler):
    """Rocket answers 404 when no route matches the method, so other methods get 404 here too."""

    def _not_found(self, *args: Any, **kwargs: Any) -> None:
        raise tornado.web.HTTPError(404)

    post = put = patch = delete = options = _not_found


class MetricsHandler(GetOnlyHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.exposition())

    head = get  # Rocket answers HEAD on every GET route; Tornado drops the body


class HealthHandler(GetOnlyHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok")

    head = get


class NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Tornado logs every request at info; that would be one line per scrape and per connection.
    log.debug(
        "%d %s %.2fms",
        handler.get_status(),
        handler._request_summary(),
        1000.0 * handler.request.request_time(),
    )


class App(tornado.web.Application):
    hub: Hub
    metrics: Metrics


def make_app(config: Config, metrics: Metrics | None = None) -> App:
    """The application, for __main__ and the tests alike."""
    metrics = metrics or Metrics()
    hub = Hub(config, metrics)
    # Tornado refuses a ping timeout longer than the interval (it warns and uses the interval).
    ping_timeout = min(config.ping_timeout_secs, config.ping_interval_secs)
    app = App(
        [
            (r"/ws", WsHandler, {"hub": hub}),
            (r"/metrics", MetricsHandler, {"metrics": metrics}),
            (r"/healthz", HealthHandler),
        ],
        default_handler_class=NotFoundHandler,
        websocket_max_message_size=config.max_message_bytes,
        websocket_ping_interval=config.ping_interval_secs,
        websocket_ping_timeout=ping_timeout,
        log_function=_log_request,
    )
    app.hub = hub
    app.metrics = metrics
    return app
