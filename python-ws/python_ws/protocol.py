"""Protocol v1 messages: parse, validate and serialise (PROTOCOL.md §3), with no I/O.

`parse` and `reply` (or `error`) are everything the handling histogram times in
`Connection.on_message`: JSON parse, the checks in the order the protocol lists them, and
serialisation of the reply (or error) into the bytes that are sent.

Twin: rust-ws/src/protocol.rs
"""

from __future__ import annotations

import re
import time

import orjson

MAX_SENT_AT = 2**53 - 1

# PROTOCOL.md §3: JSON nested deeper than this is invalid_json. It is serde_json's recursion
# limit, so rust-ws gets it from its parser; orjson allows 1024 levels, so python-ws checks it.
MAX_DEPTH = 127
# The tokens that matter for nesting in text orjson has already accepted: whole strings (so a
# bracket inside one is skipped) and the four brackets.
_NESTING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')

BINARY_DETAIL = "binary frames are not supported; send JSON in a text frame"


class Request:
    """A valid client message (a plain slotted class: a frozen dataclass costs ~1 us to build)."""

    __slots__ = ("ref", "sent_at", "text", "type", "user")

    def __init__(
        self, kind: str, user: str, text: str, ref: str | None, sent_at: int | None
    ) -> None:
        self.type = kind
        self.user = user
        self.text = text
        self.ref = ref
        self.sent_at = sent_at


class ProtocolError(Exception):
    """A client message that gets an error reply; the connection stays open."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse(text: str) -> Request:
    """Parse and validate one text message, or raise ProtocolError with the first failure.

    `type(x) is str` / `is int` on purpose: bool is a subclass of int, and orjson keeps `1.0` a
    float. len() of a str counts code points, which is what the protocol counts.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise ProtocolError("invalid_json", str(err)) from None
    # Two C-speed counts keep the depth walk off the path of every ordinary message: a text with
    # fewer opening brackets than the limit can't nest past it.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise ProtocolError(
            "invalid_json", f"recursion limit exceeded: nested deeper than {MAX_DEPTH} levels"
        )
    if type(obj) is not dict:
        raise ProtocolError("invalid_message", "message: must be a JSON object")
    kind = obj.get("type")
    if type(kind) is not str:
        raise ProtocolError("invalid_message", "type: must be a string, broadcast or echo")
    if kind != "broadcast" and kind != "echo":
        # Name the type, but don't reflect an arbitrarily long string back (rust-ws: 64 too).
        raise ProtocolError(
            "unknown_type", f'type: unknown type "{kind[:64]}"; expected "broadcast" or "echo"'
        )
    user = obj.get("user")
    if type(user) is not str or not 1 <= len(user) <= 32:
        raise ProtocolError("invalid_message", "user: must be a string of 1-32 characters")
    text_field = obj.get("text")
    if type(text_field) is not str or not 1 <= len(text_field) <= 4096:
        raise ProtocolError("invalid_message", "text: must be a string of 1-4096 characters")
    ref = obj.get("ref")
    if ref is not None and (type(ref) is not str or len(ref) > 64):
        raise ProtocolError("invalid_message", "ref: must be null or a string of 0-64 characters")
    sent_at = obj.get("sent_at")
    if sent_at is not None and (type(sent_at) is not int or not 0 <= sent_at <= MAX_SENT_AT):
        raise ProtocolError(
            "invalid_message", f"sent_at: must be an integer from 0 to {MAX_SENT_AT}"
        )
    return Request(kind, user, text_field, ref, sent_at)


def _depth(text: str) -> int:
    """How deep the arrays and objects of valid JSON `text` nest."""
    depth = deepest = 0
    for token in _NESTING_TOKEN.finditer(text):
        c = token.group()
        if c == "[" or c == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif c == "]" or c == "}":
            depth -= 1
    return deepest


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def reply(req: Request, conn_id: str, seq: int, server_ts: int) -> bytes:
    """The broadcast or echo payload, serialised once for every recipient."""
    return orjson.dumps(
        {
            "type": req.type,
            "from": conn_id,
            "user": req.user,
            "text": req.text,
            "ref": req.ref,
            "sent_at": req.sent_at,
            "seq": seq,
            "server_ts": server_ts,
        }
    )


def error(code: str, detail: str) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "detail": detail})


def welcome(conn_id: str, room: str, server: str, connections: int) -> bytes:
    return orjson.dumps(
        {
            "type": "welcome",
            "conn_id": conn_id,
            "room": room,
            "server": server,
            "connections": connections,
        }
    )


def broker_unavailable(ref: str | None) -> bytes:
    """The error for a broadcast the broker did not take (PROTOCOL.md §3), with its ref."""
    return orjson.dumps(
        {
            "type": "error",
            "code": "broker_unavailable",
            "detail": "broadcast not delivered: the broker is unavailable",
            "ref": ref,
        }
    )


_SEQ_KEY = b',"seq":'
_AFTER_SEQ = b',"server_ts":'


def split_at_seq(payload: bytes) -> tuple[bytes, bytes]:
    """A serialised broadcast split for the broker (PROTOCOL.md §5): HEAD is everything up to and
    including `"seq":`, TAIL everything after the number. `seq` and `server_ts` are `reply`'s
    last keys, after every client field, so the last `,"seq":` is the key itself (inside a string
    its quotes would be escaped anyway)."""
    i = payload.rindex(_SEQ_KEY) + len(_SEQ_KEY)
    return payload[:i], payload[payload.index(_AFTER_SEQ, i) :]
