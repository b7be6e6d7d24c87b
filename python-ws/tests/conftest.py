"""Fixtures: python-ws as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from pyws_support import Server, run_server


@pytest.fixture
def server() -> Iterator[Server]:
    with run_server() as s:
        yield s


@pytest.fixture
def server_with():
    """Start servers with extra environment: `server_with({"WS_SEND_QUEUE": "4"})`."""
    with contextlib.ExitStack() as stack:
        yield lambda env: stack.enter_context(run_server(env))
