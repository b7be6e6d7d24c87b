"""PROTOCOL.md sections 2-3, Capacity: 503 past WS_MAX_CONNECTIONS, a slot frees after a close."""

from __future__ import annotations

import pytest
from harness import running_server
from websockets.exceptions import InvalidStatus

from .support import (
    Client,
    Clients,
    http_request,
    unique_room,
    upgrade_status,
    value_of,
    wait_for,
)

MAX = 2


@pytest.fixture(scope="module")
def capped_server(kind):
    with running_server(kind, {"WS_MAX_CONNECTIONS": str(MAX)}) as srv:
        yield srv


def test_503_past_max_connections_and_slot_frees_after_close(capped_server):
    server = capped_server
    room = unique_room()
    with Clients(server) as cs:
        a = cs.join(room)
        cs.join(unique_room())  # the limit is server-wide, not per room
        assert upgrade_status(server, room) == 503
        assert upgrade_status(server) == 503
        # Refused upgrades are not accepted connections.
        assert value_of(server, "all_ws_connections_total") == MAX
        assert value_of(server, "ws_connections") == MAX
        # Open connections and other routes still work at capacity.
        a.assert_alive()
        assert http_request(server.port, "/healthz")[0] == 200

        a.close()

        def try_join():
            try:
                return Client(server, room)
            except InvalidStatus as err:
                assert err.response.status_code == 503
                return None

        c = wait_for(try_join, timeout=5, interval=0.1)
        assert c is not None, "no slot freed within 5s of a close"
        cs.opened.append(c)
        assert c.welcome["connections"] == 1
        c.assert_alive()
        assert upgrade_status(server) == 503


def test_bad_room_is_still_400_at_capacity(capped_server):
    server = capped_server
    with Clients(server) as cs:
        wait_for(lambda: value_of(server, "ws_connections") == 0)
        cs.join()
        cs.join()
        # Both checks come before the upgrade; a bad room is a 400 or a 503, never a 101.
        assert upgrade_status(server, "a!b") in (400, 503)
