"""The broker: this node's two Redis connections, when WS_BROKER_URL is set (PROTOCOL.md §5).

A broadcast the hub hands over (`publish`) waits in one bounded queue (`MAX_PENDING`, counted
with the publishes sent and unanswered) for the one publisher task, which sends everything
queued as one pipelined batch of EVALSHA calls on the publish connection and then reads the
answers: many broadcasts per round trip, in the order they were handled. Redis numbers each room's
broadcasts and publishes the text members receive; the receiver task reads the one pattern
subscription (`wslab:room:*`) on the other connection and hands each message, unparsed, to the
hub's local fan-out for the room the channel names. A broadcast the broker cannot take is answered
`broker_unavailable` (with its `ref`) through the sender's own outbound queue; nothing here ever
makes a connection wait.

The client is redis-py's asyncio `Connection`, used bare: not `Redis`, whose default `Retry`
retries a failed command three times with back-off and reconnects by itself, and not `PubSub`,
which reconnects and subscribes again inside `get_message`. Both would hide the down and up
transitions PROTOCOL needs (`ws_broker_up`, `/readyz`, failing what was waiting with `lost`), so
the connections run with no retries and no socket timeouts of their own, and `_run` owns the
cycle: connect, load the script, subscribe, be up; on the first failure of either connection, or a
command unanswered for `COMMAND_TIMEOUT` (a PING goes out every `PING_INTERVAL`, so a paused Redis
is noticed), close both, fail every waiting publish with `lost`, and reconnect with a back-off.

The broker imports neither the hub nor the connection: the hub gives it two callables.

Twin: rust-ws/src/broker.rs
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio.connection as redis_connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from . import protocol
from .config import BrokerUrl
from .metrics import Metrics

log = logging.getLogger("python_ws")

# PROTOCOL.md §5, byte for byte: both kinds of node load the same script, so its SHA1 is the same.
SCRIPT = (
    "local seq = redis.call('INCR', KEYS[1])\n"
    "redis.call('EXPIRE', KEYS[1], 3600)\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[1] .. seq .. ARGV[2])\n"
    "return seq\n"
)
SEQ_KEY_PREFIX = b"wslab:seq:"
CHANNEL_PREFIX = b"wslab:room:"
PATTERN = b"wslab:room:*"

# Publishes waiting for the broker, queued or sent and unanswered (PROTOCOL.md §5).
MAX_PENDING = 4096
# The most publishes one pipelined batch carries; the rest go in the next round trip.
BATCH = 512
PING_INTERVAL = 1.0
# A command (or a connection attempt) unanswered this long means the broker is down.
COMMAND_TIMEOUT = 2.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

# What one waiting publish holds: the sender (opaque here), its ref, the room (bytes), the
# broadcast split at its seq, and when it was handed over (perf_counter).
Pending = tuple[Any, "str | None", bytes, bytes, bytes, float]


class BrokerDown(Exception):
    """The broker went away; the message says how (never with the password)."""


class Broker:
    """This node's link to Redis. `deliver(room, payload)` is the hub's local fan-out;
    `reply(sender, payload)` queues an error for the sender of a broadcast."""

    def __init__(
        self,
        url: BrokerUrl,
        node_id: str,
        metrics: Metrics,
        deliver: Callable[[str, bytes], None],
        reply: Callable[[Any, bytes], None],
    ) -> None:
        self.url = url
        self.node_id = node_id
        self.metrics = metrics
        self._deliver = deliver
        self._reply = reply
        self.up = False
        # Handed over, not yet sent; and the batch sent and not yet answered.
        self._queue: collections.deque[Pending] = collections.deque()
        self._inflight: list[Pending] = []
        self._wake = asyncio.Event()
        self._sha = b""
        self._conns: list[redis_connection.AbstractConnection] = []
        self._task: asyncio.Task[None] | None = None

    # --- the hub's side ---------------------------------------------------------------------

    def publish(self, sender: Any, ref: str | None, room: str, payload: bytes) -> None:
        """Hand one serialised broadcast (seq 0) to the broker; never waits."""
        if not self.up:
            self._fail(sender, ref, "unavailable")
            return
        if len(self._queue) + len(self._inflight) >= MAX_PENDING:
            self._fail(sender, ref, "overloaded")
            return
        head, tail = protocol.split_at_seq(payload)
        self._queue.append((sender, ref, room.encode(), head, tail, time.perf_counter()))
        self._wake.set()

    def _fail(self, sender: Any, ref: str | None, reason: str) -> None:
        self.metrics.broker_failed[reason].inc()
        self._reply(sender, protocol.broker_unavailable(ref))

    # --- the cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop for good (at shutdown): close both connections, fail what waits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        warned = False
        try:
            while True:
                try:
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        pub, sub = await self._connect()
                except Exception as err:
                    await self._disconnect()
                    # One warning until the broker is back, then debug: a Redis that is not
                    # there yet must not fill the log.
                    (log.debug if warned else log.warning)(
                        "broker %s unavailable (%s); retrying", self.url, _describe(err)
                    )
                    warned = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                warned = False
                self._set_up(True)
                log.info(
                    "broker %s up: node %s subscribed to %s",
                    self.url,
                    self.node_id,
                    PATTERN.decode(),
                )
                tasks = [
                    asyncio.create_task(self._publish_loop(pub)),
                    asyncio.create_task(self._receive_loop(sub)),
                ]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                err = next(iter(done)).exception()
                self._down()
                await self._disconnect()
                log.warning("broker %s down (%s); reconnecting", self.url, _describe(err))
                warned = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self._down()
            await self._disconnect()

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.metrics.broker_up.set(1 if up else 0)

    def _down(self) -> None:
        """Down: every publish still waiting is answered broker_unavailable (`lost`)."""
        self._set_up(False)
        waiting = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        for sender, ref, *_ in waiting:
            self._fail(sender, ref, "lost")

    async def _connect(
        self,
    ) -> tuple[redis_connection.AbstractConnection, redis_connection.AbstractConnection]:
        pub, sub = self._new_connection(), self._new_connection()
        self._conns = [pub, sub]
        await pub.connect()
        await sub.connect()
        await pub.send_command("SCRIPT", "LOAD", SCRIPT)
        self._sha = await pub.read_response(timeout=math.inf)
        await sub.send_command("PSUBSCRIBE", PATTERN)
        reply = await sub.read_response(timeout=math.inf)
        if not (isinstance(reply, list) and reply[:2] == [b"psubscribe", PATTERN]):
            raise BrokerDown(f"unexpected answer to PSUBSCRIBE: {reply!r}")
        return pub, sub

    def _new_connection(self) -> redis_connection.AbstractConnection:
        url = self.url
        cls = redis_connection.SSLConnection if url.tls else redis_connection.Connection
        # No socket timeouts (the cycle times every command itself; with one, redis-py wraps
        # each write in a wait_for task) and no retries (see the module docstring).
        return cls(
            host=url.host,
            port=url.port,
            db=url.db,
            username=url.username,
            password=url.password,
            socket_timeout=None,
            socket_connect_timeout=None,
            retry=Retry(NoBackoff(), 0),
            client_name=f"wslab-{self.node_id}",
            # RESP2: redis-py 8 speaks RESP3 by default, where a subscription's messages are push
            # frames that read_response keeps for a push handler instead of returning them.
            protocol=2,
        )

    async def _disconnect(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    # --- publishing -------------------------------------------------------------------------

    async def _publish_loop(self, conn: redis_connection.AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + PING_INTERVAL
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_ping):
                        await self._wake.wait()
            batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
            self._inflight = batch
            ping = loop.time() >= next_ping
            if ping:
                next_ping = loop.time() + PING_INTERVAL
            commands: list[tuple[Any, ...]] = [
                ("EVALSHA", self._sha, 1, SEQ_KEY_PREFIX + room, head, tail, CHANNEL_PREFIX + room)
                for _, _, room, head, tail, _ in batch
            ]
            if ping:
                commands.append(("PING",))
            elif not commands:
                continue  # woken a hair before the ping was due: nothing to send yet
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    missing = await self._round_trip(conn, commands, batch, ping)
                    if missing:
                        # NOSCRIPT (Redis lost its script cache): the same broadcasts, in the
                        # same order, with the script's text.
                        self._inflight = missing
                        retry = [
                            ("EVAL", SCRIPT, 1, SEQ_KEY_PREFIX + r, h, t, CHANNEL_PREFIX + r)
                            for _, _, r, h, t, _ in missing
                        ]
                        await self._round_trip(conn, retry, missing, False)
            except TimeoutError:
                raise BrokerDown(f"no answer within {COMMAND_TIMEOUT:g} s") from None
            self._inflight = []

    async def _round_trip(
        self,
        conn: redis_connection.AbstractConnection,
        commands: list[tuple[Any, ...]],
        batch: list[Pending],
        ping: bool,
    ) -> list[Pending]:
        """Send `commands` at once and read their answers; the publishes that met NOSCRIPT."""
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        read = conn.read_response
        published = self.metrics.broker_published
        observe = self.metrics.broker_publish.observe
        missing: list[Pending] = []
        for item in batch:
            try:
                await read(timeout=math.inf)
            except NoScriptError:
                missing.append(item)
                continue
            except ResponseError as err:
                # The script itself failed (Redis out of memory, say): not delivered.
                log.warning("broker %s refused a publish: %s", self.url, err)
                self._fail(item[0], item[1], "lost")
                continue
            published.inc()
            observe(time.perf_counter() - item[5])
        if ping:
            await read(timeout=math.inf)
        return missing

    # --- receiving --------------------------------------------------------------------------

    async def _receive_loop(self, conn: redis_connection.AbstractConnection) -> None:
        read = conn.read_response
        deliver = self._deliver
        received = self.metrics.broker_received
        prefix = len(CHANNEL_PREFIX)
        while True:
            message = await read(timeout=math.inf)
            # [b"pmessage", pattern, channel, payload]: the payload goes out as it came.
            if type(message) is list and len(message) == 4 and message[0] == b"pmessage":
                received.inc()
                deliver(message[2][prefix:].decode("ascii"), message[3])


def _describe(err: BaseException | None) -> str:
    """What went wrong, for a log line: redis-py's messages name the host, never the password."""
    if err is None:
        return "connection closed"
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
