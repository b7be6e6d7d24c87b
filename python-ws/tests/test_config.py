"""Configuration from the environment (PROTOCOL.md §1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from python_ws.config import Config, ConfigError, from_env


def test_defaults() -> None:
    assert from_env({}) == Config()
    assert from_env({}).port == 8001


def test_empty_counts_as_unset() -> None:
    env = {
        k: ""
        for k in (
            "WS_HOST",
            "WS_PORT",
            "WS_MAX_MESSAGE_BYTES",
            "WS_SEND_QUEUE",
            "WS_PING_INTERVAL_SECS",
            "WS_PING_TIMEOUT_SECS",
            "WS_MAX_CONNECTIONS",
            "WS_HEADER_TIMEOUT_SECS",
            "LOG_LEVEL",
        )
    }
    assert from_env(env) == Config()


def test_values() -> None:
    cfg = from_env(
        {
            "WS_HOST": "::1",
            "WS_PORT": "0",
            "WS_MAX_MESSAGE_BYTES": "67108864",
            "WS_SEND_QUEUE": "1",
            "WS_PING_INTERVAL_SECS": "0",
            "WS_PING_TIMEOUT_SECS": "3600",
            "WS_MAX_CONNECTIONS": "100000",
            "WS_HEADER_TIMEOUT_SECS": "3600",
            "LOG_LEVEL": "WARN",
        }
    )
    assert cfg == Config(
        host="::1",
        port=0,
        max_message_bytes=67108864,
        send_queue=1,
        ping_interval_secs=0,
        ping_timeout_secs=3600,
        max_connections=100000,
        header_timeout_secs=3600,
        log_level="warn",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_HOST", "localhost"),
        ("WS_HOST", "1.2.3"),
        ("WS_PORT", "abc"),
        ("WS_PORT", "65536"),
        ("WS_PORT", "-1"),
        ("WS_PORT", " 80"),
        ("WS_PORT", "8_0"),
        ("WS_PORT", "1.0"),
        ("WS_MAX_MESSAGE_BYTES", "0"),
        ("WS_MAX_MESSAGE_BYTES", "67108865"),
        ("WS_SEND_QUEUE", "0"),
        ("WS_SEND_QUEUE", "1048577"),
        ("WS_PING_INTERVAL_SECS", "3601"),
        ("WS_PING_TIMEOUT_SECS", "0"),
        ("WS_MAX_CONNECTIONS", "-5"),
        ("LOG_LEVEL", "verbose"),
    ],
)
def test_invalid_names_variable_and_value(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    message = str(info.value)
    assert message.startswith("config error: ")
    assert f'{name}="{value}"' in message
    assert "\n" not in message


def test_busy_port_is_one_clear_line_and_exit_1() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "python_ws"],
            env={"WS_HOST": "127.0.0.1", "WS_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"python-ws: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in proc.stderr
