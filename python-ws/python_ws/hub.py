"""The hub: rooms, membership, fan-out, the bounded outbound queues, eviction and shutdown.

Every open connection and room lives here. `join` and `leave` are the only code that adds or
removes a connection (called from `Connection.open` and `Connection.on_close`), and that is where
the `ws_connections` gauge moves. The hub never writes to a socket and never closes one: it sees a
connection only as its `Outbox`, appends text frames to it, tells the outbox's owner to write its
queue out (`write_queued`), and tells it to end with a `Kill` reason when its queue is full or the
server shuts down. Which close frame and which count that means is the connection's
(`Connection.end`), as in rust-ws.

Queues hold whole WebSocket frames (`text_frame`), not payloads: a server's frames are unmasked,
so a broadcast's frame is the same bytes for every recipient and is built once.

Twin: rust-ws/src/hub.rs
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import struct
from typing import TYPE_CHECKING

from tornado.concurrent import Future

from . import SERVER_NAME, protocol
from .config import Config
from .metrics import Metrics
from .reclaim import Reclaimer

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("python_ws")


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 §5.2), as a server sends it: the same bytes for
    every recipient, so a broadcast is framed once."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Kill(enum.Enum):
    """Why the hub ends a connection from outside it."""

    SLOW_CONSUMER = "slow_consumer"  # its outbound queue was full when a message arrived
    SHUTDOWN = "shutdown"  # the server is shutting down


class Outbox:
    """A connection's bounded outbound queue, as the hub sees it.

    The hub appends frames to `queue` while `closed` is false and `pending()` is under
    WS_SEND_QUEUE, and calls the two methods the owner implements: `write_queued` (write the
    queue out) and `kill` (end the connection for a `Kill` reason; it calls `shut`). The owner's
    writer takes frames off `queue` and keeps the one batch the socket has not fully taken in
    `inflight`/`inflight_count`, which still count as pending.

    `Connection` is an `Outbox` (a base class, not a member object), so a fan-out touches one
    object per recipient, as it did before the hub had this contract.
    """

    def __init__(self) -> None:
        # Set by Hub.join.
        self.id = ""
        self.room: Room | None = None
        self.queue: collections.deque[bytes] = collections.deque()
        self.inflight: Future[None] | None = None
        self.inflight_count = 0
        # In the hub's list of outboxes to write out at the next flush.
        self.flush_scheduled = False
        # Nothing more is queued once the connection is ending.
        self.closed = False

    def pending(self) -> int:
        """Messages queued that are not yet written to the socket."""
        inflight = self.inflight
        busy = inflight is not None and not inflight.done()
        return len(self.queue) + (self.inflight_count if busy else 0)

    def shut(self) -> None:
        """Take nothing more and drop what is queued: the connection is ending."""
        self.closed = True
        self.queue.clear()

    def write_queued(self) -> None:
        """The owner writes the queued frames to its socket."""
        raise NotImplementedError

    def kill(self, why: Kill) -> None:
        """The owner ends its connection for `why` (and calls `shut`)."""
        raise NotImplementedError


class Room:
    __slots__ = ("members", "name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        # A dict keeps insertion order and removes in O(1).
        self.members: dict[Outbox, None] = {}
        self.seq = 0

    def next_seq(self) -> int:
        """The room's broadcast counter: 1 for the first broadcast since the room was created."""
        self.seq += 1
        return self.seq


class Hub:
    """Every open connection and room, the outbound queues and the metrics that follow them."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.rooms: dict[str, Room] = {}
        self.connections: dict[Outbox, None] = {}
        self._next_id = 0
        # With WS_BROKER_URL (PROTOCOL.md §5): the broker every broadcast goes through, and the
        # `NODE_ID:` that makes conn_ids unique across the cluster. Set by app.make_app.
        self.broker: Broker | None = None
        self.id_prefix = ""
        self._dirty: list[Outbox] = []
        self._flush_scheduled = False
        self.shutting_down = False
        self._empty: asyncio.Event | None = None
        self.reclaimer = Reclaimer(lambda delay, f: asyncio.get_running_loop().call_later(delay, f))

    # --- membership: called only from Connection.open and Connection.on_close ---------------

    def is_full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and len(self.connections) >= limit

    def join(self, conn: Outbox, room_name: str) -> None:
        """Give `conn` its id and room, count it, and queue its welcome."""
        self._next_id += 1
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = Room(room_name)
        conn.id = f"{self.id_prefix}{self._next_id}"
        conn.room = room
        room.members[conn] = None
        self.connections[conn] = None
        self.metrics.connections.inc()
        self.metrics.accepted.inc()
        self.enqueue(conn, protocol.welcome(conn.id, room.name, SERVER_NAME, len(room.members)))

    def leave(self, conn: Outbox) -> None:
        if conn not in self.connections:
            return
        del self.connections[conn]
        room = conn.room
        room.members.pop(conn, None)
        if not room.members:
            # A room exists while it has a connection; the next one starts again at seq 1.
            del self.rooms[room.name]
        conn.shut()
        self.metrics.connections.dec()
        self.reclaimer.connection_ended()
        if self._empty is not None and not self.connections:
            self._empty.set()

    # --- fan-out ----------------------------------------------------------------------------

    def broadcast(self, sender: Outbox, ref: str | None, room: Room, payload: bytes) -> None:
        """A member's serialised broadcast: fanned out here, or, with a broker, handed to it (it
        comes back through `deliver`, numbered by Redis, like every other node's)."""
        broker = self.broker
        if broker is None:
            with self.metrics.broadcast.time():
                self.fan_out(room, payload)
        else:
            broker.publish(sender, ref, room.name, payload)

    def deliver(self, room_name: str, payload: bytes) -> None:
        """A broadcast read from the broker: the local fan-out, if the room has members here."""
        room = self.rooms.get(room_name)
        if room is not None:
            with self.metrics.broadcast.time():
                self.fan_out(room, payload)

    def fan_out(self, room: Room, payload: bytes) -> None:
        """Queue one serialised payload for every member of `room`; writes nothing. It is framed
        once: every member's queue gets the same frame bytes."""
        frame = text_frame(payload)
        # A snapshot: nothing below removes members synchronously, but a broadcast must never
        # fail half-way because the room changed under it.
        for member in tuple(room.members):
            try:
                self.enqueue_frame(member, frame)
            except Exception:
                # One member's failure must not cost the others their message.
                log.exception("fan-out to connection %s failed", member.id)

    # --- the outbound queues ----------------------------------------------------------------

    def enqueue(self, conn: Outbox, payload: bytes) -> None:
        """Queue `payload` for `conn` without waiting; evict it if its queue is full."""
        self.enqueue_frame(conn, text_frame(payload))

    def enqueue_frame(self, conn: Outbox, frame: bytes) -> None:
        """Queue a finished text frame for `conn`; see `enqueue`."""
        if conn.closed:
            return  # dropped: this connection is going away
        if conn.pending() >= self.config.send_queue:
            conn.kill(Kill.SLOW_CONSUMER)
            return
        conn.queue.append(frame)
        if not conn.flush_scheduled:
            conn.flush_scheduled = True
            self._dirty.append(conn)
            if not self._flush_scheduled:
                # For messages queued outside on_message (the welcome): one callback per loop
                # iteration writes every connection that has new messages.
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)

    def flush_if_dirty(self) -> None:
        if self._dirty:
            self.flush()

    def flush(self) -> None:
        """Write out the queues of every connection that has new messages."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush_scheduled = False
            try:
                conn.write_queued()
            except Exception:
                log.exception("writing to connection %s failed", conn.id)

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop taking connections and tell every connection to end (with 1001)."""
        self.shutting_down = True
        for conn in tuple(self.connections):
            conn.kill(Kill.SHUTDOWN)

    async def wait_empty(self) -> None:
        """Wait until every connection has ended."""
        if self.connections:
            self._empty = asyncio.Event()
            await self._empty.wait()
