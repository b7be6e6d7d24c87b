"""The HTTP routes: GET /ws with its checks before the upgrade, /metrics, /healthz, /readyz, 404.

Tornado makes the WebSocket route's handler class the session too, so `WsRoute` is the session
(`connection.Connection`) plus what belongs to the route: the checks that answer 400 or 503 before
the upgrade (PROTOCOL.md §2: the room, HTTP/1.1, the key, no body, capacity), the Origin policy,
and 404 for other methods. The route table is in `app.make_app`.

Twin: rust-ws/src/routes.rs
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import Any

import tornado.httputil
import tornado.web

from .broker import Broker
from .connection import Connection
from .metrics import CONTENT_TYPE, Metrics

ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
DEFAULT_ROOM = "lobby"


def _not_found(self: tornado.web.RequestHandler, *args: Any, **kwargs: Any) -> None:
    raise tornado.web.HTTPError(404)


def _key_is_valid(key: str) -> bool:
    """RFC 6455 §4.2.1: the key is base64 (with its padding) of exactly 16 bytes."""
    try:
        return len(b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def upgrade_refusal(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """Why an upgrade request must get 400 before Tornado looks at it, or None.

    Tornado upgrades all of these: over HTTP/1.0, with any key, and after reading a body (whose
    bytes, chunked, could otherwise be taken for frames). A missing key or missing upgrade headers
    are left to Tornado, which answers 400 itself.
    """
    rooms = request.query_arguments.get("room", [])
    if len(rooms) > 1:
        return "room given more than once\n"
    if request.version == "HTTP/1.0":
        return "WebSocket needs HTTP/1.1\n"
    headers = request.headers
    key = headers.get("Sec-WebSocket-Key")
    if key is not None and not _key_is_valid(key):
        return "Sec-WebSocket-Key must be base64 of 16 bytes\n"
    if "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        return "an upgrade request has no body\n"
    return None


class WsRoute(Connection):
    """GET /ws: refuse bad requests and rooms (400) and a full server (503) before the upgrade."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        refusal = upgrade_refusal(self.request)
        if refusal is not None:
            self.set_status(400)
            self.finish(refusal)
            return
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

    head = post = put = patch = delete = options = _not_found


class GetOnlyHandler(tornado.web.RequestHandler):
    """Rocket answers 404 when no route matches the method, so other methods get 404 here too."""

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


class ReadyHandler(GetOnlyHandler):
    """Ready while the node can serve: no broker configured, or connected and subscribed to it."""

    def initialize(self, broker: Broker | None) -> None:
        self.broker = broker

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if self.broker is None or self.broker.up:
            self.finish("ready")
        else:
            self.set_status(503)
            self.finish("broker unavailable")

    head = get


class NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)
