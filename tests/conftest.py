"""Shared fixtures for the suites under tests/: `kind` runs a test once per server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import KINDS


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    """The server under test: "rust" or "python"."""
    return request.param
