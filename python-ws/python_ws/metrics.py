"""The metrics contract (PROTOCOL.md §4) on a registry of its own.

The registry holds the process collector and the ws_* families only: no python_* or gc_*
families, and, with `disable_created_metrics()`, no `_created` series. Each `Metrics` owns its
registry, so tests that build several apps don't share counters.

Twin: rust-ws/src/metrics.rs
"""

from __future__ import annotations

import sys

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from . import SERVER_NAME

# prometheus_client only offers this switch process-wide; it has to be off before any metric is
# created, which is why it runs at import.
prometheus_client.disable_created_metrics()

# Prometheus 3 and rust-ws both speak text format 0.0.4; say so rather than using the library's
# CONTENT_TYPE_LATEST, which is 1.0.0 in prometheus_client 0.26.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

CLOSE_REASONS = (
    "abnormal",
    "protocol",
    "too_large",
    "slow_consumer",
    "ping_timeout",
    "send_failed",
)
OUTCOMES = ("ok", "invalid")
# Why a broadcast was answered broker_unavailable (PROTOCOL.md §4).
PUBLISH_FAILURES = ("unavailable", "overloaded", "lost")

# This build's profile, for the start-up line and ws_build_info: "debug" on a debug build of
# CPython (which has sys.gettotalrefcount and runs several times slower), as rust-ws says "debug"
# for a cargo debug build; a benchmark of either is not the server's speed.
BUILD_PROFILE = "debug" if hasattr(sys, "gettotalrefcount") else "release"


class Metrics:
    def __init__(self, node_id: str = "", broker: str = "none") -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.connections = Gauge("ws_connections", "Open WebSocket connections.", registry=r)
        self.accepted = Counter(
            "all_ws_connections", "WebSocket connections accepted since start.", registry=r
        )
        self.closed_errors = Counter(
            "ws_closed_conns_errors",
            "WebSocket connections that ended abnormally, by reason.",
            ["reason"],
            registry=r,
        )
        self.received = Counter(
            "ws_messages_received",
            "Messages received from clients, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.sent = Counter("ws_messages_sent", "Messages written to clients.", registry=r)
        self.handling = Histogram(
            "ws_message_handling_duration_seconds",
            "Time from a complete text message received until its reply payload is ready: "
            "parse, validate and serialise.",
            buckets=BUCKETS,
            registry=r,
        )
        self.broadcast = Histogram(
            "ws_broadcast_duration_seconds",
            "Time to fan one broadcast out to every connection in its room: enqueueing the "
            "shared payload, not network delivery.",
            buckets=BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "ws_build_info",
            "Build of this server: its name and build profile (constant 1).",
            ["server", "profile"],
            registry=r,
        )
        self.build_info.labels(server=SERVER_NAME, profile=BUILD_PROFILE).set(1)
        self.node_info = Gauge(
            "ws_node_info",
            "This node: its id and its broker, redis or none (constant 1).",
            ["node_id", "broker"],
            registry=r,
        )
        self.node_info.labels(node_id=node_id, broker=broker).set(1)
        self.broker_up = Gauge(
            "ws_broker_up",
            "1 while this node is connected and subscribed to its broker, else 0 (always 0 "
            "without a broker).",
            registry=r,
        )
        self.broker_published = Counter(
            "ws_broker_published",
            "Broadcasts this node handed to the broker and the broker confirmed.",
            registry=r,
        )
        self.broker_received = Counter(
            "ws_broker_received", "Broadcasts this node received from the broker.", registry=r
        )
        self.broker_failures = Counter(
            "ws_broker_publish_failures",
            "Broadcasts this node could not confirm to the broker, by reason; each was answered "
            "with broker_unavailable.",
            ["reason"],
            registry=r,
        )
        self.broker_publish = Histogram(
            "ws_broker_publish_duration_seconds",
            "Time from a broadcast handed to the broker until the broker confirmed it: the "
            "publish round trip, waiting in the node's publish queue included.",
            buckets=BUCKETS,
            registry=r,
        )
        # Every label value exists at zero from start-up; keep the children for the hot path.
        self.closed_by_reason = {
            reason: self.closed_errors.labels(reason=reason) for reason in CLOSE_REASONS
        }
        self.received_ok = self.received.labels(outcome="ok")
        self.received_invalid = self.received.labels(outcome="invalid")
        self.broker_failed = {
            reason: self.broker_failures.labels(reason=reason) for reason in PUBLISH_FAILURES
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
