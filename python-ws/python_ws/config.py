"""Configuration from the environment, validated as PROTOCOL.md §1 says.

An empty variable counts as unset. Any invalid value raises `ConfigError` whose message is the one
stderr line the process prints before exiting with status 2.

Twin: rust-ws/src/config.rs
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import unquote

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class ConfigError(ValueError):
    """An environment variable holds a value PROTOCOL.md does not allow."""


# WS_NODE_ID, and what a default node id keeps of the host name (PROTOCOL.md §1).
NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}", re.ASCII)
_NOT_NODE_ID_CHAR = re.compile(r"[^A-Za-z0-9_.-]", re.ASCII)
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)

# What the one error line says an invalid value should have been. rust-ws/src/config.rs prints
# the same words, so the two kinds of node fail alike.
BROKER_URL_ALLOWED = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://..., "
    "with PORT 1-65535, DB an integer >= 0 and no query or fragment"
)
NODE_ID_ALLOWED = "1-32 characters of A-Z a-z 0-9 _ . -"


def default_node_id() -> str:
    """The host name (its first 20 characters, others than [A-Za-z0-9_.-] made `-`), `-`, pid."""
    host = _NOT_NODE_ID_CHAR.sub("-", socket.gethostname()[:20])
    return f"{host}-{os.getpid()}"


def redact_url(raw: str) -> str:
    """`raw` with any password shown as `***`, whether or not it parses.

    The user information runs from after `scheme://` to the last `@` (a careless password may
    hold another `@`); with a colon, what follows it is the password, and without one the whole of
    it may be (the old `redis://PASSWORD@HOST` form), so all of it goes.
    """
    scheme_end = raw.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3
    at = raw.rfind("@")
    if at < start:
        return raw
    user, colon, _ = raw[start:at].partition(":")
    return raw[:start] + (f"{user}:***" if colon else "***") + raw[at:]


@dataclass(frozen=True)
class BrokerUrl:
    """A valid WS_BROKER_URL, split into what a Redis connection needs. `repr` is redacted, so
    the dataclass can't leak the password into a log line."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    redacted: str

    def __str__(self) -> str:
        return self.redacted


def parse_broker_url(raw: str) -> BrokerUrl:
    """Parse WS_BROKER_URL as PROTOCOL.md §1 allows it, or raise ConfigError (password redacted)."""
    redacted = redact_url(raw)
    bad = ConfigError(f'config error: WS_BROKER_URL="{redacted}" is not {BROKER_URL_ALLOWED}')
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss") or "?" in rest or "#" in rest:
        raise bad
    authority, slash, path = rest.partition("/")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        if not colon or not secret:
            raise bad
        username = unquote(user) or None
        password = unquote(secret)
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        if not bracket or (after and not after.startswith(":")):
            raise bad
        has_port, port_text = bool(after), after[1:]
    else:
        host, colon, port_text = authority.partition(":")
        has_port = bool(colon)
        if not _HOST_NAME_RE.fullmatch(host):
            raise bad
    port = 6379
    if has_port:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise bad
        port = int(port_text)
    db = 0
    if slash and path:
        if not (path.isascii() and path.isdigit()):
            raise bad
        db = int(path)
    return BrokerUrl(
        tls=scheme.lower() == "rediss",
        host=host,
        port=port,
        db=db,
        username=username,
        password=password,
        redacted=redacted,
    )


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
    broker_url: BrokerUrl | None = None
    node_id: str = field(default_factory=default_node_id)

    def describe(self) -> str:
        """The effective configuration as one log line (the broker URL's password as `***`)."""
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


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
        broker_url=parse_broker_url(broker) if (broker := env.get("WS_BROKER_URL", "")) else None,
        node_id=_node_id(env),
    )


def _node_id(env: Mapping[str, str]) -> str:
    raw = env.get("WS_NODE_ID", "")
    if raw == "":
        return default_node_id()
    if not NODE_ID_RE.fullmatch(raw):
        raise ConfigError(f'config error: WS_NODE_ID="{raw}" is not {NODE_ID_ALLOWED}')
    return raw
