"""Start rust-ws or python-ws as a real process on a free loopback port, for the test suites.

Every suite under tests/ (conformance, k6, dashboard) starts servers through `running_server`, so
they all run the same binaries the same way:

- rust-ws: `$RUST_WS_BIN`, else `target/debug/rust-ws` (built by `cargo build -p rust-ws`);
- python-ws: `$PYTHON_WS_CMD` (split on spaces), else `<this python> -m python_ws`.

Servers bind 127.0.0.1 only. Each one's stderr goes to a temporary log file that is printed when
it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("rust", "python")
SERVER_NAMES = {"rust": "rust-ws", "python": "python-ws"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str) -> list[str]:
    if kind == "rust":
        binary = os.environ.get("RUST_WS_BIN") or str(REPO / "target" / "debug" / "rust-ws")
        if not Path(binary).is_file():
            raise RuntimeError(
                f"rust-ws binary not found at {binary}: run `cargo build -p rust-ws` "
                "or set RUST_WS_BIN"
            )
        return [binary]
    if kind == "python":
        cmd = os.environ.get("PYTHON_WS_CMD")
        return shlex.split(cmd) if cmd else [sys.executable, "-m", "python_ws"]
    raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    """GET url; return (status, headers, body) without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode("utf-8", "replace")


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return SERVER_NAMES[self.kind]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def metrics_text(self) -> str:
        status, _, body = http_get(self.http_url + "/metrics")
        assert status == 200, f"{self.name} /metrics answered {status}"
        return body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send sig and wait; returns the exit status (kills after timeout and fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{self.name} did not exit within {timeout}s of {sig}"
                ) from None
        return self.proc.returncode


def wait_healthy(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode} before it was healthy:\n"
                + server.log()
            )
        try:
            status, _, body = http_get(server.http_url + "/healthz", timeout=1.0)
            if status == 200 and body == "ok":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not healthy within {timeout}s:\n" + server.log())


@contextlib.contextmanager
def running_server(kind: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a server of `kind` with extra `env`, yield it once /healthz answers, then stop it."""
    port = free_port()
    full_env = dict(os.environ)
    full_env.update({"WS_HOST": "127.0.0.1", "WS_PORT": str(port), "LOG_LEVEL": "info"})
    full_env.update(env or {})
    # Kept open for the server's lifetime and removed in `finally`, so no `with` block.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix=f"wslab-{kind}-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        server_command(kind),
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    server = Server(kind, port, proc, Path(log.name), env or {})
    try:
        wait_healthy(server)
        yield server
    except BaseException:
        # The test failed with this server running: show what the server said before its log goes.
        sys.stderr.write(f"--- {server.name} log (port {port}) ---\n{server.log()}\n")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)


def run_config_check(kind: str, env: dict[str, str], timeout: float = 15.0):
    """Run a server with env expected to be invalid; return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update({"WS_HOST": "127.0.0.1", "WS_PORT": str(free_port())})
    full_env.update(env)
    return subprocess.run(
        server_command(kind), env=full_env, capture_output=True, text=True, timeout=timeout
    )
