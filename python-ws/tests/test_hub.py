"""In-process on make_app(), white-box: the hub's bounded outbound queues and eviction, `Ending`
(the one place deciding which close reason a connection counts), and the Tornado workaround
reporting a silent peer to its connection. Real sockets on loopback; the tests reach into the hub
and its connections to see what no client can.
"""

from __future__ import annotations

import asyncio
import json
import struct

from pyws_support import upgrade_request
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.websocket import websocket_connect

from python_ws.app import make_app
from python_ws.config import Config
from python_ws.connection import Connection, Ending
from python_ws.metrics import CLOSE_REASONS, Metrics


def opcodes(data: bytes) -> list[int]:
    """The opcodes of the server's (unmasked) frames in `data`, in order."""
    found, pos = [], 0
    while pos < len(data):
        found.append(data[pos] & 0x0F)
        n, pos = data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, pos = struct.unpack("!H", data[pos : pos + 2])[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack("!Q", data[pos : pos + 8])[0], pos + 8
        pos += n
    assert pos == len(data), f"a partial frame at the end: {data!r}"
    return found


def closed_counts(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for m in metrics.closed_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def only(reason: str | None) -> dict[str, float]:
    return {r: float(r == reason) for r in CLOSE_REASONS}


async def until(predicate, polls: int = 500) -> None:
    """Yield to the loop until predicate() holds; bounded by `polls` x 10 ms."""
    for _ in range(polls):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_every_abnormal_ending_is_a_close_reason_and_clean_ones_count_nothing() -> None:
    assert {e.reason for e in Ending} - {None} == set(CLOSE_REASONS)
    assert [e for e in Ending if e.reason is None] == [Ending.CLIENT_CLOSE, Ending.SHUTDOWN]


class HubTest(AsyncHTTPTestCase):
    def get_app(self):
        config = Config(host="127.0.0.1", port=0, ping_interval_secs=0, send_queue=3)
        self.app = make_app(config)
        return self.app

    async def _join(self, room: str):
        url = f"ws://127.0.0.1:{self.get_http_port()}/ws?room={room}"
        ws = await websocket_connect(url)
        assert json.loads(await ws.read_message())["type"] == "welcome"
        (conn,) = self.app.hub.rooms[room].members
        return ws, conn

    @gen_test(timeout=30)
    async def test_a_full_queue_evicts_that_connection_and_drops_what_follows(self) -> None:
        hub = self.app.hub
        ws, conn = await self._join("q")
        other, _ = await self._join("other")
        assert conn.pending() == 0
        # No await from here on: nothing is written, so every message stays pending.
        for i in range(3):
            hub.enqueue(conn, b'{"n":%d}' % i)
        assert conn.pending() == 3 and conn.ending is None
        hub.enqueue(conn, b'{"n":3}')  # the queue holds WS_SEND_QUEUE=3: evicted
        assert conn.ending is Ending.SLOW_CONSUMER and not conn.queue
        hub.enqueue(conn, b'{"n":4}')  # going away: dropped, not queued, not counted again
        assert not conn.queue
        assert closed_counts(hub.metrics) == only("slow_consumer")
        # The client gets the 1008 and none of the messages that were still queued.
        assert await ws.read_message() is None
        assert (ws.close_code, ws.close_reason) == (1008, "slow consumer")
        await until(lambda: conn not in hub.connections)
        assert closed_counts(hub.metrics) == only("slow_consumer")
        assert "q" not in hub.rooms and list(hub.connections) != []
        # The other connection is untouched.
        other.write_message('{"type":"echo","user":"a","text":"still here"}')
        assert json.loads(await other.read_message())["text"] == "still here"
        other.close()

    @gen_test(timeout=30)
    async def test_the_first_ending_wins_and_a_client_close_counts_nothing(self) -> None:
        hub = self.app.hub
        ws, conn = await self._join("clean")
        ws.close(4000)
        await until(lambda: conn not in hub.connections)
        assert conn.ending is Ending.CLIENT_CLOSE
        assert closed_counts(hub.metrics) == only(None)

        ws, conn = await self._join("first")
        conn.end(Ending.PROTOCOL, "test")
        conn.end(Ending.SEND_FAILED)
        ws.close()
        await until(lambda: conn not in hub.connections)
        # on_close's ABNORMAL came last too: only the first ending counted.
        assert conn.ending is Ending.PROTOCOL
        assert closed_counts(hub.metrics) == only("protocol")

    @gen_test(timeout=30)
    async def test_shutdown_closes_everyone_with_1001_and_counts_nothing(self) -> None:
        hub = self.app.hub
        clients = [await self._join(f"s{i}") for i in range(3)]
        hub.shutdown()
        for ws, conn in clients:
            assert conn.ending is Ending.SHUTDOWN
            assert await ws.read_message() is None
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
        await asyncio.wait_for(hub.wait_empty(), timeout=5)
        assert closed_counts(hub.metrics) == only(None)
        assert hub.metrics.connections._value.get() == 0


class KeepaliveTest(AsyncHTTPTestCase):
    def get_app(self):
        config = Config(host="127.0.0.1", port=0, ping_interval_secs=1, ping_timeout_secs=1)
        self.app = make_app(config)
        return self.app

    @gen_test(timeout=30)
    async def test_a_silent_peer_is_reported_as_ping_timeout_and_dropped_at_once(self) -> None:
        hub = self.app.hub
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
        try:
            writer.write(upgrade_request(self.get_http_port()))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101")
            start = loop.time()
            await until(lambda: len(hub.connections) == 1)
            (conn,) = hub.connections
            assert isinstance(conn, Connection)
            # Reads nothing, answers no ping: one ping after 1 s, no pong within 1 s.
            await until(lambda: conn not in hub.connections, polls=1000)
            elapsed = loop.time() - start
            data = await asyncio.wait_for(reader.read(), 5)  # everything, up to the server's FIN
        finally:
            writer.close()
        assert conn.ending is Ending.PING_TIMEOUT
        assert closed_counts(hub.metrics) == only("ping_timeout")
        # Dropped at once, not after Tornado's 5 s wait for the dead peer's close frame.
        assert elapsed < 4.5, elapsed
        # The welcome, the ping, and no close frame (PROTOCOL.md §3: the TCP connection just ends).
        assert opcodes(data) == [0x1, 0x9], data
