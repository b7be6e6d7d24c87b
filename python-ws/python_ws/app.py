"""The Tornado application and the state it holds: config, metrics, the hub and the broker.

`make_app(config)` builds the application for `__main__` and for the tests alike.

Twin: rust-ws/src/lib.rs (`rocket(config)`)
"""

from __future__ import annotations

import logging

import tornado.web

from .broker import Broker
from .config import Config
from .hub import Hub
from .metrics import Metrics
from .routes import HealthHandler, MetricsHandler, NotFoundHandler, ReadyHandler, WsRoute

log = logging.getLogger("python_ws")


class App(tornado.web.Application):
    config: Config
    hub: Hub
    metrics: Metrics
    broker: Broker | None


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Tornado logs every request at info; that would be one line per scrape and per connection.
    log.debug(
        "%d %s %.2fms",
        handler.get_status(),
        handler._request_summary(),
        1000.0 * handler.request.request_time(),
    )


def make_app(config: Config, metrics: Metrics | None = None) -> App:
    """The application, for __main__ and the tests alike."""
    metrics = metrics or Metrics(config.node_id, "none" if config.broker_url is None else "redis")
    hub = Hub(config, metrics)
    broker = None
    if config.broker_url is not None:
        # Not started here: `Broker.start` needs the running loop (__main__, or a test's).
        broker = Broker(config.broker_url, config.node_id, metrics, hub.deliver, hub.enqueue)
        hub.broker = broker
        hub.id_prefix = f"{config.node_id}:"
    # Tornado refuses a ping timeout longer than the interval (it warns and uses the interval).
    ping_timeout = min(config.ping_timeout_secs, config.ping_interval_secs)
    app = App(
        [
            (r"/ws", WsRoute, {"hub": hub}),
            (r"/metrics", MetricsHandler, {"metrics": metrics}),
            (r"/healthz", HealthHandler),
            (r"/readyz", ReadyHandler, {"broker": broker}),
        ],
        default_handler_class=NotFoundHandler,
        websocket_max_message_size=config.max_message_bytes,
        websocket_ping_interval=config.ping_interval_secs,
        websocket_ping_timeout=ping_timeout,
        log_function=_log_request,
    )
    app.config = config
    app.hub = hub
    app.metrics = metrics
    app.broker = broker
    return app
