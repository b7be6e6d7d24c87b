"""The hub: rooms, membership, fan-out, the bounded outbound queues, eviction and shutdown.

Every open connection and room lives here. `join` and `leave` are the only code that adds or
removes a connection (called from `Connection.open` and `Connection.on_close`), and that is where
the `ws_connections` gauge moves. The hub never writes to a socket: it appends text frames to each
connection's queue, evicts a connection whose queue is full, and asks the connections it marked
dirty to write their queues out (`Connection.write_queued`).

Twin: rust-ws/src/hub.rs
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import SERVER_NAME, protocol
from .config import Config
from .connection import Ending, text_frame
from .metrics import Metrics
from .reclaim import Reclaimer

if TYPE_CHECKING:
    from .broker import Broker
    from .connection import Connection

log = logging.getLogger("python_ws")


class Room:
    __slots__ = ("members", "name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        # A dict keeps insertion order and removes in O(1).
        self.members: dict[Connection, None] = {}
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
        self.connections: dict[Connection, None] = {}
        self._next_id = 0
        # With WS_BROKER_URL (PROTOCOL.md §5): the broker every broadcast goes through, and the
        # `NODE_ID:` that makes conn_ids unique across the cluster. Set by app.make_app.
        self.broker: Broker | None = None
        self.id_prefix = ""
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self.shutting_down = False
        self._empty: asyncio.Event | None = None
        self.reclaimer = Reclaimer(lambda delay, f: asyncio.get_running_loop().call_later(delay, f))

    # --- membership: called only from Connection.open and Connection.on_close ---------------

    def is_full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and len(self.connections) >= limit

    def join(self, conn: Connection, room_name: str) -> None:
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

    def leave(self, conn: Connection) -> None:
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
        self.reclaimer.connection_ended()
        if self._empty is not None and not self.connections:
            self._empty.set()

    # --- fan-out ----------------------------------------------------------------------------

    def broadcast(self, sender: Connection, ref: str | None, room: Room, payload: bytes) -> None:
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

    def enqueue(self, conn: Connection, payload: bytes) -> None:
        """Queue `payload` for `conn` without waiting; evict it if its queue is full."""
        self.enqueue_frame(conn, text_frame(payload))

    def enqueue_frame(self, conn: Connection, frame: bytes) -> None:
        """Queue a finished text frame for `conn`; see `enqueue`."""
        if conn.ending is not None:
            return  # dropped: this connection is going away
        if conn.pending() >= self.config.send_queue:
            self.evict_slow_consumer(conn)
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

    def evict_slow_consumer(self, conn: Connection) -> None:
        conn.end(Ending.SLOW_CONSUMER)
        conn.queue.clear()
        conn.close(1008, "slow consumer")

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Send every client a 1001 close frame."""
        self.shutting_down = True
        for conn in tuple(self.connections):
            conn.end(Ending.SHUTDOWN)
            conn.queue.clear()
            conn.close(1001, "server shutting down")

    async def wait_empty(self) -> None:
        """Wait until every connection has ended."""
        if self.connections:
            self._empty = asyncio.Event()
            await self._empty.wait()
