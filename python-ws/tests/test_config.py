"""Configuration from the environment (PROTOCOL.md §1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from python_ws.config import (
    BrokerUrl,
    Config,
    ConfigError,
    default_node_id,
    from_env,
    parse_broker_url,
    redact_url,
)


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
            "WS_BROKER_URL",
            "WS_NODE_ID",
        )
    }
    assert from_env(env) == Config()
    assert from_env(env).broker_url is None


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


# --- WS_BROKER_URL and WS_NODE_ID (PROTOCOL.md §1, §5) --------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://localhost",
            BrokerUrl(False, "localhost", 6379, 0, None, None, "redis://localhost"),
        ),
        ("redis://h:6380/3", BrokerUrl(False, "h", 6380, 3, None, None, "redis://h:6380/3")),
        ("redis://h/", BrokerUrl(False, "h", 6379, 0, None, None, "redis://h/")),
        (
            "redis://:s%40cret@10.0.0.1:1/0",
            BrokerUrl(False, "10.0.0.1", 1, 0, None, "s@cret", "redis://:***@10.0.0.1:1/0"),
        ),
        (
            "rediss://ann:pw@[::1]:65535/12",
            BrokerUrl(True, "::1", 65535, 12, "ann", "pw", "rediss://ann:***@[::1]:65535/12"),
        ),
        ("REDIS://h", BrokerUrl(False, "h", 6379, 0, None, None, "REDIS://h")),
    ],
)
def test_broker_url_parses(url: str, expected: BrokerUrl) -> None:
    assert parse_broker_url(url) == expected
    assert from_env({"WS_BROKER_URL": url}).broker_url == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://h", "http://h"),
        ("h:6379", "h:6379"),
        ("redis://", "redis://"),
        ("redis://:6379", "redis://:6379"),
        ("redis://h:0", "redis://h:0"),
        ("redis://h:65536", "redis://h:65536"),
        ("redis://h:x", "redis://h:x"),
        ("redis://h/x", "redis://h/x"),
        ("redis://h/-1", "redis://h/-1"),
        ("redis://h/0?timeout=1", "redis://h/0?timeout=1"),
        ("redis://h/0#f", "redis://h/0#f"),
        ("redis://[::1", "redis://[::1"),
        ("redis://h h", "redis://h h"),
        # A password never reaches the error line, however malformed the URL around it.
        ("redis://:secret@h:0", "redis://:***@h:0"),
        ("redis://secret@h", "redis://***@h"),
        ("redis://u:@h", "redis://u:***@h"),
        ("redis://u:sec@ret@h?x", "redis://u:***@h?x"),
        ("redis://:secret@", "redis://:***@"),
    ],
)
def test_invalid_broker_url_is_one_redacted_line(url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"WS_BROKER_URL": url})
    assert str(info.value) == (
        f'config error: WS_BROKER_URL="{shown}" is not redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]'
        " or rediss://..., with PORT 1-65535, DB an integer >= 0 and no query or fragment"
    )
    assert "secret" not in str(info.value) and "sec@ret" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("rediss://ann:pw@h") == "rediss://ann:***@h"
    assert redact_url("pw@h") == "***@h"


def test_describe_redacts_the_password() -> None:
    cfg = from_env({"WS_BROKER_URL": "redis://:hunter2@h:1/0", "WS_NODE_ID": "web-1"})
    line = cfg.describe()
    assert "broker_url=redis://:***@h:1/0" in line
    assert "node_id=web-1" in line
    assert "hunter2" not in line and "hunter2" not in repr(cfg)


@pytest.mark.parametrize("node_id", ["a", "web-1.x_2", "x" * 32])
def test_node_id_valid(node_id: str) -> None:
    assert from_env({"WS_NODE_ID": node_id}).node_id == node_id


@pytest.mark.parametrize("node_id", ["x" * 33, "web:1", "a b", "é"])
def test_node_id_invalid(node_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"WS_NODE_ID": node_id})
    assert str(info.value) == (
        f'config error: WS_NODE_ID="{node_id}" is not 1-32 characters of A-Z a-z 0-9 _ . -'
    )


def test_default_node_id_is_host_name_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "pod:with/odd chars-and-a-long-tail")
    assert default_node_id() == f"pod-with-odd-chars-a-{os.getpid()}"
    assert from_env({}).node_id == default_node_id()


def test_invalid_broker_url_exits_2_without_the_password() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "python_ws"],
        env={"WS_BROKER_URL": "redis://:hunter2@h:99999", "WS_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith('config error: WS_BROKER_URL="redis://:***@h:99999" is not ')
    assert "hunter2" not in proc.stderr
