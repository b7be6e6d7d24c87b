"""Fixtures for the conformance suite.

`kind` is redefined here with module scope (same params and ids as tests/conftest.py), so one
server process can serve a whole module: `server` starts one per module and per kind with default
settings. Modules that need other limits start their own with `running_server(kind, env)`.
"""

from __future__ import annotations

import pytest
from harness import KINDS, running_server


@pytest.fixture(scope="module", params=KINDS)
def kind(request) -> str:
    """The server under test: "rust" or "python"."""
    return request.param


@pytest.fixture(scope="module")
def server(kind):
    """One server of this kind, default settings, shared by the tests of one module."""
    with running_server(kind) as srv:
        yield srv
