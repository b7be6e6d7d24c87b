"""Workaround: Tornado drops the TCP connection on a frame it cannot accept, without a close frame;
PROTOCOL.md §3 wants the connection failed with 1002 (1007 for text that is not UTF-8).

Tornado gives up on reserved bits, an unknown opcode, bad fragmentation or invalid UTF-8 by calling
`_abort()` while it reads or handles a frame. This layer notes when Tornado is inside a frame
(`_receive_frame`) and which message it is handling (`_handle_message`), and turns such an
`_abort()` into a report: `invalid_payload` for a text message, `protocol_violated` otherwise. The
connection then fails it with the close code (`Connection.end`). An `_abort()` for any other
reason (the stream closed under it) stays Tornado's.

Twin: none. tungstenite returns these as errors and rust-ws's connection.rs (`classify`,
`close_after_read_error`) sends the close frame; there is nothing to work around.
"""

from __future__ import annotations

from typing import Protocol

from tornado.concurrent import Future
from tornado.websocket import WebSocketProtocol13

OP_TEXT = 0x1


class BadFrameReport(Protocol):
    def protocol_violated(self, detail: str) -> None:
        """A frame that breaks RFC 6455."""

    def invalid_payload(self, detail: str) -> None:
        """A text message that is not UTF-8."""


class BadFrameAbort(WebSocketProtocol13):
    report: BadFrameReport
    _in_frame = False  # inside Tornado's reading of one frame
    _handling_opcode: int | None = None

    async def _receive_frame(self) -> None:
        self._in_frame = True
        try:
            await super()._receive_frame()
        finally:
            self._in_frame = False

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        self._handling_opcode = opcode
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._handling_opcode = None

    def _abort(self) -> None:
        stream = self.stream
        if (
            self._in_frame
            and not self.server_terminated
            and not self.client_terminated
            and stream is not None
            and not stream.closed()
        ):
            if self._handling_opcode == OP_TEXT:
                self.report.invalid_payload("invalid UTF-8")
            else:
                self.report.protocol_violated("protocol error")
            if self.server_terminated:
                return
        super()._abort()
