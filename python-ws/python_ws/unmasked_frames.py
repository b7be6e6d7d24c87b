"""Workaround: Tornado accepts unmasked client frames; RFC 6455 §5.1 says a server must fail them.

Tornado reads a masking key only when a frame says it has one and takes the frame either way. This
layer clears the key before every frame and reports a frame that left none behind, whether it is a
whole message (`_handle_message`) or a non-final fragment (after `_receive_frame`). The connection
fails it with 1002 (`Connection.end`).

Twin: none. tungstenite fails an unmasked client frame with 1002 itself, so rust-ws has nothing to
work around.
"""

from __future__ import annotations

from typing import Protocol

from tornado.concurrent import Future
from tornado.websocket import WebSocketProtocol13


class UnmaskedReport(Protocol):
    def protocol_violated(self, detail: str) -> None:
        """An unmasked client frame."""


class UnmaskedFrames(WebSocketProtocol13):
    report: UnmaskedReport

    async def _receive_frame(self) -> None:
        self._frame_mask = None
        await super()._receive_frame()
        if self._frame_mask is None and not self.client_terminated:
            self._unmasked()  # a non-final fragment: no message was handled

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if self._frame_mask is None and not self.client_terminated:
            self._unmasked()
            return None
        return super()._handle_message(opcode, data)

    def _unmasked(self) -> None:
        self.report.protocol_violated("unmasked frame")
        if not self.server_terminated:
            WebSocketProtocol13._abort(self)  # already ended some other way: just drop it
