"""PROTOCOL.md section 2: HTTP routes, room validation before the upgrade."""

from __future__ import annotations

import pytest

from .support import CONTENT_TYPE, Clients, http_request, upgrade_status


def test_healthz_is_200_ok(server):
    status, _, body = http_request(server.port, "/healthz")
    assert (status, body) == (200, "ok")


def test_metrics_is_200_with_exposition_content_type(server):
    status, headers, body = http_request(server.port, "/metrics")
    assert status == 200
    assert headers.get("content-type") == CONTENT_TYPE
    assert "# TYPE ws_connections gauge" in body


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/healthzz"),
        ("GET", "/metrics/extra"),
        ("GET", "/ws/extra"),
        ("POST", "/nope"),
        ("POST", "/healthz"),  # only GET /healthz is a route; "anything else" is 404
    ],
)
def test_anything_else_is_404(server, method, path):
    status, _, _ = http_request(server.port, path, method=method)
    assert status == 404, f"{method} {path} answered {status}"


def test_default_room_is_lobby(server):
    with Clients(server) as cs:
        assert cs.join().welcome["room"] == "lobby"


@pytest.mark.parametrize(
    "room",
    [
        "",  # empty
        "a" * 65,  # one too long
        "a%20b",  # space
        "a%2Fb",  # slash
        "caf%C3%A9",  # non-ASCII letter
        "a!b",
        "a%2Cb",  # comma
        "a~b",
    ],
    ids=["empty", "65-chars", "space", "slash", "non-ascii", "bang", "comma", "tilde"],
)
def test_bad_room_is_400_before_upgrade(server, room):
    assert upgrade_status(server, room) == 400


@pytest.mark.parametrize(
    "room",
    ["a" * 64, "A", "Az09_.-", "-", "..."],
    ids=["64-chars", "one-char", "all-classes", "dash", "dots"],
)
def test_good_room_names_are_accepted(server, room):
    with Clients(server) as cs:
        welcome = cs.join(room).welcome
        assert welcome["room"] == room
        assert welcome["connections"] == 1
