"""Configuration from the environment, validated as PROTOCOL.md §1 says.

An empty variable counts as unset. Any invalid value raises `ConfigError` whose message is the one
stderr line the process prints before exiting with status 2.

Twin: rust-ws/src/config.rs
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class ConfigError(ValueError):
    """An environment variable holds a value PROTOCOL.md does not allow."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8001
    max_message_bytes: int = 65536
    send_queue: int = 1024
    ping_interval_secs: int = 20
    ping_timeout_secs: int = 20
    max_connections: int = 0
    header_timeout_secs: int = 10
    log_level: str = "info"

    def describe(self) -> str:
        """The effective configuration as one log line."""
        return " ".join(f"{key}={value}" for key, value in asdict(self).items())


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    # int() alone would accept " 5", "+5", "5_000" and non-ASCII digits; the Rust twin does not.
    text = raw[1:] if raw.startswith("-") else raw
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f'config error: {name}="{raw}" is not {allowed}')
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise ConfigError(f'config error: {name}="{raw}" is not {allowed}')
    return value


def from_env(env: Mapping[str, str]) -> Config:
    """Build a Config from `env` (usually os.environ) or raise ConfigError naming the variable."""
    host = env.get("WS_HOST", "") or Config.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f'config error: WS_HOST="{host}" is not an IP address') from None
    level = env.get("LOG_LEVEL", "") or Config.log_level
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f'config error: LOG_LEVEL="{level}" is not one of debug, info, warning, warn, error'
        )
    return Config(
        host=host,
        port=_int(env, "WS_PORT", Config.port, 0, 65535),
        max_message_bytes=_int(env, "WS_MAX_MESSAGE_BYTES", Config.max_message_bytes, 1, 67108864),
        send_queue=_int(env, "WS_SEND_QUEUE", Config.send_queue, 1, 1048576),
        ping_interval_secs=_int(env, "WS_PING_INTERVAL_SECS", Config.ping_interval_secs, 0, 3600),
        ping_timeout_secs=_int(env, "WS_PING_TIMEOUT_SECS", Config.ping_timeout_secs, 1, 3600),
        max_connections=_int(env, "WS_MAX_CONNECTIONS", Config.max_connections, 0, None),
        header_timeout_secs=_int(
            env, "WS_HEADER_TIMEOUT_SECS", Config.header_timeout_secs, 1, 3600
        ),
        log_level=level.lower(),
    )
