"""Several nodes of one server on one Redis, on loopback, for the sweeps that need a cluster.

`bench/sweep.py`'s `nodes` and `multicore` sweeps start one `Cluster` per setup: a Redis of its
own (Debian's `redis-server`, on a free port, keeping no data, as PROTOCOL.md §5 expects of the
lab's Redis) when the setup has a broker, and N nodes of rust-ws or python-ws on free ports with
`WS_BROKER_URL` and a `WS_NODE_ID` each, all pinned with taskset to the same CPUs. It hands
ws-bench every node at once (`bench_args`: one `--url`, `--pid` and `--metrics-url` per node)
and reads Redis's own CPU and RSS (psutil), so a step can charge the broker its share.

    python bench/cluster.py rust-ws --nodes 2 --broker   # start one by hand; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nobody listens on now, from the kernel (below the ephemeral range is not needed:
    nothing here connects out of it before the server binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ready(port: int) -> bool:
    """/readyz answers 200: with a broker, the node is connected and subscribed (PROTOCOL.md §5).
    A 404 is a server from before §5, which has no broker to wait for: ready once it listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 404
    except OSError:
        return False


class Cluster:
    """Redis (if `broker`) and `nodes` processes of `server`, all on `cpus` (a taskset CPU list,
    or None for no pinning). Logs go to `work`/<server>-<k>.log and `work`/redis.log."""

    def __init__(
        self,
        server: str,
        *,
        nodes: int,
        broker: bool,
        cpus: str | None,
        env: dict[str, str],
        work: Path,
        rust_bin: str,
        python: str,
        settle: float = 3.0,
    ):
        self.server = server
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.redis: subprocess.Popen | None = None
        self.logs = []
        self.pin = ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []
        self.work = work
        self.cmd = [rust_bin] if server == "rust-ws" else [python, "-m", "python_ws"]
        try:
            self.base = dict(os.environ, WS_HOST="127.0.0.1", LOG_LEVEL="warning", **env)
            if broker:
                self.redis_port = free_port()
                self.start_redis()
                self.base["WS_BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
            for k in range(nodes):
                self.ports.append(free_port())
                self.procs.append(self.start_node(k))
            # Every node ready (subscribed, with a broker) before any load.
            deadline = time.monotonic() + 15
            while not all(ready(p) for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server}: nodes not ready within 15 s ({self.ports})")
                time.sleep(0.1)
            time.sleep(settle)  # start-up allocations settle before any baseline
        except BaseException:
            self.stop()
            raise

    def start_redis(self) -> None:
        """Redis on its port (again, after a kill: bench/faults.py), keeping no data."""
        log = open(self.work / "redis.log", "ab")  # noqa: SIM115 (closed in stop)
        self.logs.append(log)
        # No persistence: the lab's Redis keeps no data (PROTOCOL.md §5).
        self.redis = subprocess.Popen(
            [
                *self.pin,
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
            ],
            stdout=log,
            stderr=log,
        )
        self._wait(self.redis_port, self.redis, "redis-server", log.name)

    def start_node(self, k: int) -> subprocess.Popen:
        """Node k (0-based) on its port (again, after a kill: bench/faults.py), listening."""
        port = self.ports[k]
        e = dict(self.base, WS_PORT=str(port), WS_NODE_ID=f"{self.server}-{k + 1}")
        log = open(self.work / f"{self.server}-{k + 1}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.logs.append(log)
        p = subprocess.Popen([*self.pin, *self.cmd], env=e, stdout=log, stderr=log)
        if k < len(self.procs):
            self.procs[k] = p
        self._wait(port, p, self.server, log.name)
        return p

    @staticmethod
    def _wait(port: int, p: subprocess.Popen, what: str, log: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if port_open(port):
                return
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not start on port {port} (log in {log})")

    def bench_args(self) -> list[str]:
        """ws-bench's options for every node: one --url, --pid and --metrics-url each."""
        return [
            "--url",
            ",".join(f"ws://127.0.0.1:{p}/ws" for p in self.ports),
            "--pid",
            ",".join(str(p.pid) for p in self.procs),
            "--metrics-url",
            ",".join(f"http://127.0.0.1:{p}/metrics" for p in self.ports),
        ]

    def redis_reading(self) -> tuple[float, int] | None:
        """Redis's CPU seconds (user + system) and RSS bytes now; None without a broker."""
        if self.redis is None:
            return None
        try:
            p = psutil.Process(self.redis.pid)
            t = p.cpu_times()
            return t.user + t.system, p.memory_info().rss
        except psutil.Error:
            return None

    def stop(self) -> None:
        for p in [*self.procs, *([self.redis] if self.redis else [])]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.procs, *([self.redis] if self.redis else [])]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in self.logs:
            log.close()
        self.logs = []


def main() -> None:
    p = argparse.ArgumentParser(description="Start a cluster of nodes on one Redis, until Ctrl-C.")
    p.add_argument("server", choices=["rust-ws", "python-ws"])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--broker", action="store_true")
    p.add_argument("--cpus", default=None, help="taskset CPU list for every process")
    p.add_argument("--rust-bin", default=str(ROOT / "target/release/rust-ws"))
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    a = p.parse_args()
    c = Cluster(
        a.server,
        nodes=a.nodes,
        broker=a.broker,
        cpus=a.cpus,
        env={},
        work=Path("."),
        rust_bin=a.rust_bin,
        python=a.python,
        settle=0,
    )
    print("ws-bench " + " ".join(c.bench_args()), file=sys.stderr)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()


if __name__ == "__main__":
    main()
