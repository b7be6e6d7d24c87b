"""Start rust-ws, python-ws or Prometheus as real processes on free loopback ports, for the tests.

Every suite under tests/ (conformance, k6, dashboard) starts servers through `running_server`, so
they all run the same binaries the same way:

- rust-ws: `$RUST_WS_BIN`, else `target/debug/rust-ws` (built by `cargo build -p rust-ws`);
- python-ws: `$PYTHON_WS_CMD` (split on spaces), else `<this python> -m python_ws`.

Servers bind 127.0.0.1 only. Each one's stderr goes to a temporary log file that is printed when
it fails to start.

`running_redis()` starts Debian's redis-server (`$REDIS_SERVER_BIN`, else `redis-server` on PATH) on
a free loopback port, without persistence, for the multi-node tests (PROTOCOL.md §5); the yielded
`Redis` can be killed, restarted on the same port, paused and resumed.

`running_prometheus(config)` starts Debian's Prometheus (`$PROMETHEUS_BIN`, else `prometheus` on
PATH) with a given config, a temporary TSDB and the remote-write receiver on, as compose runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("rust", "python")
SERVER_NAMES = {"rust": "rust-ws", "python": "python-ws"}


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A free loopback TCP port, below the kernel's ephemeral range where there is room.

    Ports from the ephemeral range (32768-60999 by default) are what client sockets take as their
    local port; one of the tests' own client connections could take the port, or hold it in
    TIME_WAIT, between this check and the server's bind ("Address already in use").
    """
    low = _ephemeral_low()
    if low > 11000:
        for _ in range(200):
            port = random.randrange(10000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
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
def running_server(
    kind: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[Server]:
    """Start a server of `kind` with extra `env` on `port` (a free one by default), yield it once
    /healthz answers, then stop it."""
    port = port or free_port()
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
    server = Server(kind, port, proc, Path(log.name))
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


def _redis_binary() -> str:
    binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: apt-get install redis-server")
    return binary


class RespError(Exception):
    """An error reply from Redis."""


class RespConn:
    """A minimal RESP2 client on a plain socket, to look at what the nodes wrote into Redis (keys,
    scripts, published messages) without a Redis library: `call` sends one command and returns
    its reply (bytes, int, list or None); `read` returns the next reply (a pub/sub message)."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, *args: str | bytes) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            data = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def call(self, *args: str | bytes):
        self.send(*args)
        return self.read()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self._exactly(int(rest))
        if kind == b"*":
            return None if int(rest) < 0 else [self.read() for _ in range(int(rest))]
        raise ValueError(f"not a RESP2 reply: {line!r}")

    def close(self) -> None:
        self.sock.close()


class Redis:
    """A redis-server process on 127.0.0.1:port that a test can kill, restart on the same port
    (empty: it keeps no data), pause and resume. `url` is what WS_BROKER_URL is set to."""

    def __init__(self, port: int, password: str | None, workdir: Path):
        self.port = port
        self.password = password
        self.workdir = workdir
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.accepted_at = 0.0  # when the latest start first accepted a connection (monotonic)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, password: str | None = None, timeout: float = 10.0) -> float:
        """Start redis-server (again) on this port; return the monotonic time at which it
        first accepted a TCP connection, the moment PROTOCOL's recovery bound counts from.
        `password` overrides the one it was created with, for this run only."""
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        password = self.password if password is None else password
        args = [
            _redis_binary(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(self.workdir), "--logfile", "",
        ]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    self.accepted_at = time.monotonic()
            except OSError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not accepting within {timeout}s") from err
                time.sleep(0.01)
                continue
            return self.accepted_at

    def connect(self) -> RespConn:
        """A fresh RESP connection to this Redis, authenticated when it has a password."""
        conn = RespConn(self.port)
        if self.password:
            conn.call("AUTH", self.password)
        return conn

    def call(self, *args: str | bytes):
        with contextlib.closing(self.connect()) as conn:
            return conn.call(*args)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes at once, with its data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def running_redis(port: int | None = None, password: str | None = None) -> Iterator[Redis]:
    """A redis-server on 127.0.0.1:port (a free one by default), no persistence; killed after."""
    workdir = Path(tempfile.mkdtemp(prefix="wslab-redis-"))
    redis = Redis(port or free_port(), password, workdir)
    try:
        redis.start()
        yield redis
    finally:
        redis.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen
    workdir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> dict:
        """GET /api/v1/<path>, or POST a form when there are params (as Grafana's datasource
        does with httpMethod POST); return the decoded JSON even on a 4xx answer."""
        data = urllib.parse.urlencode(params).encode() if params else None
        req = urllib.request.Request(self.url + "/api/v1/" + path, data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            return json.load(err)

    def query(self, expr: str) -> list[dict]:
        body = self.api("query", {"query": expr})
        assert body["status"] == "success", body
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "2s") -> dict:
        return self.api(
            "query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step},
        )


@contextlib.contextmanager
def running_prometheus(
    config: str,
    port: int | None = None,
    prepare: Callable[[Path], None] | None = None,
    flags: Sequence[str] = (),
) -> Iterator[Prometheus]:
    """A real Prometheus on 127.0.0.1:port (a free one by default) with `config` as its
    prometheus.yml, a temporary TSDB and the remote-write receiver on; `prepare(workdir)` may add
    files next to the config first (e.g. the rules it names); `flags` are extra command-line
    flags (e.g. --enable-feature=native-histograms). Stopped and removed afterwards."""
    binary = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary:
        raise RuntimeError(
            "prometheus not found: apt-get install prometheus, or set PROMETHEUS_BIN"
        )
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wslab-prom-"))
    if prepare:
        prepare(workdir)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(config)
    log_path = workdir / "prometheus.log"
    # The child keeps its own descriptor for the log; ours can close at once.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prom = Prometheus(port, proc, workdir, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{prom.log()}")
            with contextlib.suppress(OSError):
                if http_get(prom.url + "/-/ready", timeout=1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus not ready within 30s:\n" + prom.log())
            time.sleep(0.2)
        yield prom
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
