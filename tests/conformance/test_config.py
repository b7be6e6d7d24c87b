"""PROTOCOL.md section 1, configuration: an invalid value exits with status 2 and one stderr line
naming the variable and its value; empty counts as unset; LOG_LEVEL is case-insensitive; an
address that can't be bound exits with status 1 and one stderr line naming it."""

from __future__ import annotations

import socket

import pytest
from harness import SERVER_NAMES, free_port, run_config_check, running_server

from .support import Clients

BAD = [
    ("WS_PORT", "abc"),
    ("WS_PORT", "65536"),
    ("WS_PORT", "-1"),
    ("WS_PORT", "80.5"),
    ("WS_HOST", "not-an-ip"),
    ("WS_MAX_MESSAGE_BYTES", "-1"),
    ("WS_MAX_MESSAGE_BYTES", "0"),
    ("WS_MAX_MESSAGE_BYTES", "67108865"),
    ("WS_SEND_QUEUE", "0"),
    ("WS_SEND_QUEUE", "1048577"),
    ("WS_SEND_QUEUE", "lots"),
    ("WS_PING_INTERVAL_SECS", "-1"),
    ("WS_PING_INTERVAL_SECS", "3601"),
    ("WS_PING_INTERVAL_SECS", "1.5"),
    ("WS_PING_TIMEOUT_SECS", "0"),
    ("WS_PING_TIMEOUT_SECS", "3601"),
    ("WS_MAX_CONNECTIONS", "-1"),
    ("WS_MAX_CONNECTIONS", "many"),
    ("LOG_LEVEL", "loud"),
    ("LOG_LEVEL", "trace"),
]


@pytest.mark.parametrize("var,value", BAD, ids=[f"{v}={x}" for v, x in BAD])
def test_bad_value_exits_2_naming_the_variable(kind, var, value):
    result = run_config_check(kind, {var: value})
    assert result.returncode == 2, (
        f"exit {result.returncode}, expected 2\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got: {lines}"
    assert var in lines[0] and value in lines[0], lines[0]


def test_empty_values_count_as_unset_and_log_level_is_case_insensitive(kind):
    env = {
        "WS_MAX_MESSAGE_BYTES": "",
        "WS_SEND_QUEUE": "",
        "WS_PING_INTERVAL_SECS": "",
        "WS_PING_TIMEOUT_SECS": "",
        "WS_MAX_CONNECTIONS": "",
        "LOG_LEVEL": "WaRn",
    }
    with running_server(kind, env) as server, Clients(server) as cs:
        a = cs.join()
        a.assert_alive()
        # Defaults apply: a 60000-byte message is under the default 65536 limit.
        a.send_json({"type": "echo", "user": "u", "text": "t", "pad": "x" * 60000})
        assert a.recv_json()["type"] == "echo"


@pytest.mark.parametrize(
    "env",
    [
        {"WS_MAX_MESSAGE_BYTES": "1", "WS_SEND_QUEUE": "1", "LOG_LEVEL": "debug"},
        {
            "WS_MAX_MESSAGE_BYTES": "67108864",
            "WS_SEND_QUEUE": "1048576",
            "WS_PING_INTERVAL_SECS": "3600",
            "WS_PING_TIMEOUT_SECS": "3600",
            "LOG_LEVEL": "ERROR",
        },
        {"LOG_LEVEL": "warning"},
    ],
    ids=["lowest", "highest", "warning"],
)
def test_boundary_values_are_accepted(kind, env):
    with running_server(kind, env) as server, Clients(server) as cs:
        assert cs.join().welcome["type"] == "welcome"


def test_ws_host_and_port_win_over_rocket_address_and_port(kind):
    """rust-ws honours ROCKET_*, but WS_HOST/WS_PORT win; python-ws ignores ROCKET_* anyway."""
    env = {"ROCKET_PORT": str(free_port()), "ROCKET_ADDRESS": "127.0.0.2"}
    with running_server(kind, env) as server, Clients(server) as cs:  # healthy on WS_PORT
        cs.join().assert_alive()


@pytest.mark.parametrize("level,logged", [("info", True), ("error", False)])
def test_start_line_shows_effective_config_at_info_only(kind, level, logged):
    env = {"WS_SEND_QUEUE": "777", "WS_MAX_CONNECTIONS": "4321", "LOG_LEVEL": level}
    with running_server(kind, env) as server, Clients(server) as cs:
        cs.join().assert_alive()  # the start line is written before /healthz answers
        log = server.log()
    lines = [ln for ln in log.splitlines() if "777" in ln and "4321" in ln]
    if logged:
        assert len(lines) == 1, f"expected one start line with the config:\n{log}"
    else:
        assert lines == [], f"LOG_LEVEL=error, yet the info start line was logged: {lines}"


def test_a_taken_port_exits_1_with_one_line_naming_the_address(kind):
    """Another process listens on WS_HOST:WS_PORT: one stderr line names the address, status 1,
    the same line from both twins but for the server's name."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_config_check(kind, {"WS_HOST": "127.0.0.1", "WS_PORT": str(port)})
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    expected = f"{SERVER_NAMES[kind]}: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert lines == [expected], proc.stderr
