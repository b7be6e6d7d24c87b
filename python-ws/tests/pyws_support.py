"""Helpers for python-ws's tests: the server as a real process on a free loopback port, and the
repository's shared test code (tests/harness.py starts servers, tests/wire.py has the raw-socket
WebSocket client and the Prometheus text parser). Not named conftest, so it can't clash with
tests/conftest.py when both suites run in one pytest session."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The repository's shared test code lives in tests/ (harness.py, wire.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import harness
from harness import Server, http_get
from wire import parse_metrics, sample, upgrade_request

__all__ = ["Server", "http_get", "metric", "run_server", "upgrade_request", "wait_metric"]


def metric(server: Server, name: str, **labels: str) -> float:
    """The value of one sample on the server's /metrics."""
    return sample(parse_metrics(server.metrics_text()), name, **labels)


def wait_metric(
    server: Server, name: str, value: float, timeout: float = 5.0, **labels: str
) -> None:
    """Poll /metrics (bounded by `timeout`) until name{labels} == value."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = metric(server, name, **labels)
        if seen == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} is {seen}, expected {value} within {timeout}s")


@contextlib.contextmanager
def run_server(env: dict[str, str] | None = None) -> Iterator[Server]:
    """python-ws as a real process on a free loopback port (tests/harness.py starts it)."""
    with harness.running_server("python", env) as s:
        yield s
