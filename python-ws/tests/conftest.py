"""Fixtures: python-ws as a real process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyws_support import Server, run_server


@pytest.fixture
def server() -> Iterator[Server]:
    with run_server() as s:
        yield s
