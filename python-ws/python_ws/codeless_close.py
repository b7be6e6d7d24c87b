"""Workaround: Tornado answers a close frame without a code with an empty close frame, and echoes
any close code; PROTOCOL.md §3 wants 1000 for the first and a failed connection for the second.

Tornado 6.6 echoes the client's close frame as it is: a code-less close gets a code-less reply,
which clients report as 1005, and a code that may not be sent (0, 1005, 5000...) comes back as
it came. A 1-byte close payload gets an empty close, and a close reason that is not UTF-8 drops
the connection without a close frame. This layer checks the client's first close frame before
Tornado sees it (`_handle_message`) and, instead of Tornado's echo, reports what came: a valid
close (`client_closed`; the connection answers with the client's code, or 1000 without one) or
an invalid one (`protocol_violated`, `invalid_payload`; the connection fails it with 1002 or
1007). It chooses no close code itself: `Connection.end` does.

Twin: rust-ws/src/codeless_close.rs, the same workaround for tungstenite, which also echoes a
code-less close and needs the same check of the close code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from tornado.concurrent import Future
from tornado.websocket import WebSocketProtocol13

OP_CLOSE = 0x8


class CloseReport(Protocol):
    """What this layer tells its connection."""

    def client_closed(self) -> None:
        """The client started the close handshake with a valid close frame."""

    def protocol_violated(self, detail: str) -> None:
        """An invalid close frame (1-byte payload, a code that may not be sent)."""

    def invalid_payload(self, detail: str) -> None:
        """A close reason that is not UTF-8."""


def close_code_may_be_sent(code: int) -> bool:
    """PROTOCOL.md §3 (RFC 6455 §7.4): 1000-1003, 1007-1014 and 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class CodelessClose(WebSocketProtocol13):
    """Checks the client's close frame and reports it; `answer_close` sends the reply."""

    report: CloseReport

    def _handle_message(self, opcode: int, data: bytes) -> Future[None] | None:
        if opcode == OP_CLOSE and not self.client_terminated and data:
            if len(data) == 1:
                return self._refuse(
                    self.report.protocol_violated, "close frame with a 1-byte payload"
                )
            if not close_code_may_be_sent(struct.unpack(">H", data[:2])[0]):
                return self._refuse(self.report.protocol_violated, "invalid close code")
            try:
                data[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._refuse(self.report.invalid_payload, "close reason is not UTF-8")
        return super()._handle_message(opcode, data)

    def _refuse(self, report: Callable[[str], None], detail: str) -> None:
        report(detail)
        if not self.server_terminated:
            # The connection had already ended some other way: drop it rather than let Tornado
            # echo the invalid frame.
            WebSocketProtocol13._abort(self)
        return None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.client_terminated and not self.server_terminated:
            # Tornado answering the client's close frame (`close_code` is the client's code, or
            # None): the connection chooses the reply.
            self.report.client_closed()
            if self.server_terminated:
                return
        super().close(code, reason)

    def answer_close(self, code: int) -> None:
        """Answer the client's close frame with `code`; Tornado closes the socket after it."""
        WebSocketProtocol13.close(self, code)
