"""Workaround: Tornado's keepalive ends a silent peer with a code-less close frame and then waits
5 s for the peer's reply; PROTOCOL.md §3 wants it dropped at once without a close frame.

Tornado's loop (`periodic_ping`, started by `start_pinging`) calls `close(reason="ping timed
out")`, which sends close 1000 and is told apart from other closes only by that text. This layer
replaces the loop with the same schedule (a ping every interval, the peer timed out when no pong
came within the timeout) and reports the timeout (`ping_timed_out`); the connection then drops the
socket with `drop()` (`Connection.end`). (Pongs need nothing here: Tornado 6.6 keeps at most one
pending, `_send_pong`.)

Twin: none as a file. tungstenite has no keepalive, so rust-ws's is its own, in connection.rs
(`keepalive_tick`), and drops the peer the same way.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tornado.concurrent import Future
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketProtocol13

OP_PONG = 0xA


class PingReport(Protocol):
    def ping_timed_out(self) -> None:
        """No pong within the ping timeout."""


class PingTimeout(WebSocketProtocol13):
    report: PingReport
    _pong_received = False

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if opcode == OP_PONG:
            self._pong_received = True
        return super()._handle_message(opcode, data)

    async def periodic_ping(self) -> None:
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
                self.report.ping_timed_out()
                if not self.server_terminated:
                    self.drop()  # already ended some other way: drop it all the same
                return
            now = IOLoop.current().time()
            await asyncio.sleep(
                self.ping_sleep_time(last_ping_time=ping_time, interval=interval, now=now)
            )

    def drop(self) -> None:
        """Close the TCP connection at once, without a close frame."""
        WebSocketProtocol13._abort(self)
