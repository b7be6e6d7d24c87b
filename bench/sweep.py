"""The sweeps: how cost grows as load grows, for rust-ws and python-ws, measured by ws-bench.

`bench/run.sh` calls this after its fixed matrix; `bench/plot.py` turns what it writes into
pictures and the report's sweep section. It runs each sweep for each server, one server after
the other, each step one `ws-bench --json` run, and appends one JSON line per step to
`<out>/sweeps.jsonl`: ws-bench's report plus `sweep`, `x` (the step's value) and `target` (the
server it ran against). Progress goes to stderr: which sweep and step, and the time left.

The sweeps (`--quick` shrinks sizes and durations so the whole pipeline runs in minutes):

1. `conns`: hold 1k, 2.5k, 5k, 10k and the fd-limit tier, from helper processes over several
   loopback source addresses; a fresh server per tier.
   `paths`: one hold tier over each path (ok echo, error replies, broadcast; each ended by a
   close handshake or a reset), rust-ws with two worker threads.
2. `fanout`: one room of 10..10,000 members, paced to a fixed offered delivery rate.
3. `msgsize`: closed-loop echo with 64 B .. 64 KiB requests.
4. `knee-echo`, `knee-broadcast`: open-loop offered load in rising steps until the server
   falls behind (stops two steps past the SLO).
5. `capacity`: one room growing in steps, every client sending at a fixed rate (Hashrocket's
   websocket-shootout method), until p95 round trip passes the SLO.
6. `nodes`: rooms of 10 and of 100 members spread over 1 node without a broker, 1 node on Redis,
   2 nodes on Redis (4 where the cores allow, `--max-nodes`): the broadcast closed loop, then the
   broadcast knee (open loop, as `knee-broadcast`), with reach and order checked on every run
   and Redis's own CPU and RSS read around it (`cluster.py` starts Redis and the nodes).
7. `multicore`: the fair multi-core row, every setup on the same two cores: python-ws as 2
   processes on Redis, rust-ws as 1 process with 2 workers and no broker, rust-ws as 2 nodes on
   Redis; echo, broadcast and sessions, with the memory of each setup (RSS of every process,
   Redis's included).
8. `hundredk` (opt-in: not in run.sh's default list): 100,000 connections held by rust-ws nodes on
   one Redis (each node under the open-files cap, so `--hk-nodes` 7), all members of ONE room,
   from `--hk-procs` ws-bench helper processes over several loopback source addresses
   (`ws-bench fanout`); idle CPU of the whole with keepalive on, then broadcasts: time until the
   last member has each, reach, memory per connection over all nodes, Redis's CPU and RSS.
   python-ws as far as the machine allows: one process per core, each under the cap.

Servers are started here (pinned with taskset like run.sh's matrix) so each sweep can give them
the settings it needs, e.g. a short keepalive interval for the idle-CPU figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    """One ws-bench run: its sweep, its x value, its arguments and a time estimate (seconds)."""

    sweep: str
    x: float
    args: list[str]
    est: float
    label: str
    # A fresh server for this step (hold tiers: memory per connection from a clean baseline).
    fresh: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    # What limits the step's size, for the report (hundredk: where the fd cap stopped it).
    note: str = ""


def fd_cap() -> int:
    """The open-files limit a server started from here gets: the hard limit, which root can't
    raise past on the lab's machines (20,000)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def plan(a: argparse.Namespace) -> list[Step]:
    q = a.quick
    d = 2.0 if q else a.duration
    steps: list[Step] = []
    ping = {"WS_PING_INTERVAL_SECS": str(a.ping_secs)}

    # 1. Connections held. The top tier is what the fd limit allows a server (a few fds for the
    # listener, logs and /metrics); it is named in the report as where the cap stopped the run.
    tiers = [200, 500, 1000] if q else [1000, 2500, 5000, 10000]
    top = min(a.top_tier or (fd_cap() - 100), 10**6)
    if not q and top > tiers[-1]:
        tiers.append(top)
    hold_s, settle = (2.0, 2.0) if q else (a.hold_secs, 5.0)
    for n in tiers:
        # Two helper processes over two source addresses at every tier: the path that reaches
        # 100,000+ on a machine without the caps, exercised here at sizes that fit.
        procs = max(2, math.ceil(n / 15000))
        srcs = max(2, math.ceil(n / 25000))
        steps.append(
            Step(
                "conns",
                n,
                [
                    "--source-addrs",
                    str(srcs),
                    "hold",
                    "-n",
                    str(n),
                    "--procs",
                    str(procs),
                    "--hold-secs",
                    str(hold_s),
                    "--settle-secs",
                    str(settle),
                ],
                n / 3000 + hold_s + settle + 4,
                f"conns-{n}",
                fresh=True,
                server_env=ping,
            )
        )
    # Memory coming back over each path (bench/README.md, "Memory coming back, on every path"), at
    # one tier. rust-ws runs two worker threads here, as it does on two unpinned cores (compose):
    # pinned with one worker, no block is ever freed by a thread other than its owner, and that path
    # (rust-ws/src/reclaim.rs) would go unmeasured. python-ws ignores ROCKET_WORKERS.
    pn = 200 if q else a.paths_n
    for ex, end in [
        (ex, end) for end in ("close", "reset") for ex in ("echo", "error", "broadcast")
    ]:
        steps.append(
            Step(
                "paths",
                0,
                [
                    "hold",
                    "-n",
                    str(pn),
                    "--exchange",
                    ex,
                    "--end",
                    end,
                    "--hold-secs",
                    str(hold_s),
                    "--settle-secs",
                    str(settle),
                ],
                pn / 3000 + hold_s + settle + 4,
                f"path-{ex}-{end}",
                fresh=True,
                server_env={"ROCKET_WORKERS": "2"},
            )
        )

    # 2. Fan-out size: one room, the same offered deliveries/s at every size.
    sizes = [10, 100, 1000] if q else [10, 100, 1000, 10000]
    deliv = 2000 if q else a.fanout_deliveries
    for n in sizes:
        rate = deliv / (n * n)
        steps.append(
            Step(
                "fanout",
                n,
                [
                    "broadcast",
                    "-c",
                    str(n),
                    "--rooms",
                    "1",
                    "--rate",
                    f"{rate:.9f}",
                    "-d",
                    str(d),
                    "--drain-secs",
                    "5",
                ],
                d + n / 3000 + 3,
                f"fanout-{n}",
            )
        )

    # 3. Message size: closed-loop echo.
    c = 10 if q else 50
    for b in [64, 1024, 16384, 65536]:
        steps.append(
            Step(
                "msgsize",
                b,
                ["echo", "-c", str(c), "-d", str(d), "--msg-bytes", str(b)],
                d + 3,
                f"msgsize-{b}",
            )
        )

    # 4. The knee: open loop at rising offered rates.
    echo_rates = (
        [500, 1000, 2000, 4000] if q else [1000, 2000, 5000, 10000, 20000, 40000, 80000, 160000]
    )
    ec = 20 if q else 100
    for rate in echo_rates:
        steps.append(
            Step(
                "knee-echo",
                rate,
                ["echo", "-c", str(ec), "--rate", str(rate), "-d", str(d), "--drain-secs", "5"],
                d + 4,
                f"knee-echo-{rate}",
            )
        )
    bc, rooms = (100, 10) if q else (1000, 10)
    members = bc // rooms
    b_rates = (
        [1000, 2000, 4000] if q else [5000, 10000, 20000, 40000, 80000, 160000, 320000, 640000]
    )
    for deliv_s in b_rates:
        per_conn = deliv_s / (bc * members)
        steps.append(
            Step(
                "knee-broadcast",
                deliv_s,
                [
                    "broadcast",
                    "-c",
                    str(bc),
                    "--rooms",
                    str(rooms),
                    "--rate",
                    f"{per_conn:.6f}",
                    "-d",
                    str(d),
                    "--drain-secs",
                    "5",
                ],
                d + 4,
                f"knee-broadcast-{deliv_s}",
            )
        )

    # 5. Capacity under an SLO: one room growing, each client sending at a fixed rate.
    cap = [20, 50, 100, 150] if q else [50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000]
    for n in cap:
        steps.append(
            Step(
                "capacity",
                n,
                [
                    "broadcast",
                    "-c",
                    str(n),
                    "--rooms",
                    "1",
                    "--rate",
                    str(a.capacity_rate),
                    "-d",
                    str(d),
                    "--drain-secs",
                    "5",
                ],
                d + n / 3000 + 4,
                f"capacity-{n}",
            )
        )
    return [s for s in steps if s.sweep in a.sweeps]


# ---- several nodes -------------------------------------------------------------------------------


@dataclass
class Setup:
    """Servers of one kind as one cluster: how many nodes, on a broker or not, on which CPUs
    (a taskset list), and their own environment."""

    server: str
    nodes: int
    broker: bool
    name: str
    cpus: str = "0"
    env: dict[str, str] = field(default_factory=dict)


def node_setups(a: argparse.Namespace, server: str) -> list[Setup]:
    """The nodes sweep's setups. Nodes run on every CPU but ws-bench's own: with 2 cores, they
    all share CPU 0 (and Redis with them), ws-bench has CPU 1."""
    cpus = server_cpus(a)
    out = [
        Setup(server, 1, False, "1 node, no broker", cpus),
        Setup(server, 1, True, "1 node, Redis", cpus),
    ]
    n = 2
    while n <= a.max_nodes:
        out.append(Setup(server, n, True, f"{n} nodes, Redis", cpus))
        n *= 2
    return out


def multicore_setups(a: argparse.Namespace) -> list[Setup]:
    """The fair multi-core row: each setup gets the same two CPUs (`--multicore-cpus`)."""
    two = a.multicore_cpus
    return [
        Setup("python-ws", 2, True, "python-ws: 2 processes, Redis", two),
        Setup("rust-ws", 1, False, "rust-ws: 1 process, 2 workers", two, {"ROCKET_WORKERS": "2"}),
        Setup("rust-ws", 2, True, "rust-ws: 2 nodes, Redis", two),
    ]


def server_cpus(a: argparse.Namespace) -> str:
    """The servers' CPUs when pinned: every CPU but the last, which is ws-bench's."""
    n = os.cpu_count() or 1
    return "0" if n <= 2 else f"0-{n - 2}"


def client_cpu(a: argparse.Namespace, server_cpus_: str) -> list[str]:
    """taskset prefix for ws-bench: the last CPU, unless the servers have it (then unpinned)."""
    n = os.cpu_count() or 1
    if not a.pin:
        return []
    last = str(n - 1)
    taken = set()
    for part in server_cpus_.split(","):
        lo, _, hi = part.partition("-")
        taken.update(str(c) for c in range(int(lo), int(hi or lo) + 1))
    return [] if last in taken else ["taskset", "-c", last]


def cluster_steps(a: argparse.Namespace, sweep: str) -> list[tuple[Setup, Step]]:
    """Every (setup, step) of the nodes or multicore sweep, in the order they run."""
    q = a.quick
    d = 2.0 if q else a.duration
    out: list[tuple[Setup, Step]] = []
    if sweep == "nodes":
        conns = 100 if q else 1000
        rates = a.node_rates or (
            [1000, 4000] if q else [5000, 10000, 20000, 40000, 80000, 160000, 320000]
        )
        for server in a.servers.split():
            for setup in node_setups(a, server):
                for members in (10, 100):
                    rooms = max(1, conns // members)
                    c = rooms * members
                    base = ["broadcast", "-c", str(c), "--rooms", str(rooms), "-d", str(d)]
                    tag = f"{setup.nodes}n-{'redis' if setup.broker else 'none'}-{members}m"
                    out.append(
                        (setup, Step("nodes", setup.nodes, [*base], d + 6, f"nodes-{tag}-closed"))
                    )
                    for deliv in rates:
                        per_conn = deliv / (c * members)
                        out.append(
                            (
                                setup,
                                Step(
                                    "nodes",
                                    setup.nodes,
                                    [*base, "--rate", f"{per_conn:.6f}", "--drain-secs", "5"],
                                    d + 5,
                                    f"nodes-{tag}-knee-{deliv:g}",
                                ),
                            )
                        )
    elif sweep == "hundredk":
        for server in a.servers.split():
            setup, step = hundredk_step(a, server)
            out.append((setup, step))
    elif sweep == "multicore":
        ec, bc, sw = (20, 100, 5) if q else (1000, 1000, 50)
        for setup in multicore_setups(a):
            for label, args in (
                ("echo", ["echo", "-c", str(ec), "-d", str(d)]),
                ("broadcast", ["broadcast", "-c", str(bc), "--rooms", "10", "-d", str(d)]),
                ("sessions", ["sessions", "-c", str(sw), "-d", str(d)]),
            ):
                out.append((setup, Step("multicore", 2, args, d + 5, f"multicore-{label}")))
    return out


def hundredk_plan(a: argparse.Namespace, server: str) -> tuple[int, int, str]:
    """(nodes, members, why it stops there) of the hundredk sweep for one server. Each node may
    hold at most the open-files cap less some headroom (listener, Redis, logs, /metrics)."""
    per_node = fd_cap() - 500
    cores = os.cpu_count() or 1
    if a.quick:
        return 2, 400, "quick: a toy size"
    if server == "rust-ws":
        nodes = a.hk_nodes
        members = min(a.hk_members, nodes * per_node)
        why = f"{nodes} nodes x at most {per_node:,} connections each (open-files cap {fd_cap():,})"
        return nodes, members, why
    # python-ws runs one event loop per process, so more processes than cores only share them;
    # each process is under the same cap.
    nodes = a.hk_py_nodes or cores
    members = min(a.hk_members, nodes * per_node)
    why = (
        f"{nodes} processes (one per core: python-ws is one event loop each) x at most "
        f"{per_node:,} connections (open-files cap {fd_cap():,} per process)"
    )
    return nodes, members, why


def hundredk_step(a: argparse.Namespace, server: str) -> tuple[Setup, Step]:
    """The one fanout run of the hundredk sweep for `server`: its cluster (every node on every
    CPU, keepalive every --ping-secs), and ws-bench's helpers and source addresses."""
    nodes, members, why = hundredk_plan(a, server)
    q = a.quick
    # Each helper under the cap too, and each source address under its ~28,000 ports per node.
    procs = max(2, math.ceil(members / 15000))
    srcs = max(2, math.ceil(members / 20000) + 1)
    k, interval, hold = (3, 0.5, 2.0) if q else (a.hk_broadcasts, a.hk_interval, a.hold_secs)
    n = os.cpu_count() or 1
    setup = Setup(
        server,
        nodes,
        True,
        f"{server}: {nodes} nodes, Redis",
        f"0-{n - 1}" if n > 1 else "0",
        {"WS_PING_INTERVAL_SECS": str(a.ping_secs)},
    )
    args = [
        *("--source-addrs", str(srcs), "fanout", "-n", str(members), "--procs", str(procs)),
        *("--broadcasts", str(k), "--interval-secs", str(interval)),
        *("--hold-secs", str(hold), "--drain-secs", str(2 if q else 5)),
    ]
    est = members / 2500 + hold + k * interval + 15
    return setup, Step("hundredk", members, args, est, f"hundredk-{server}", note=why)


def run_clusters(a: argparse.Namespace, sweep: str, f, progress) -> None:
    """Runs the nodes or multicore sweep: a cluster per setup (Redis and its nodes, fresh), each
    step one ws-bench run over every node, with Redis's CPU and RSS read around it."""
    from cluster import Cluster  # bench/cluster.py, beside this file

    steps = cluster_steps(a, sweep)
    current: Setup | None = None
    cluster: Cluster | None = None
    past_slo: dict[str, int] = {}
    try:
        for setup, s in steps:
            knee = "--rate" in s.args
            group = s.label.rsplit("-", 1)[0] if knee else s.label
            if knee and past_slo.get(group, 0) >= 2:
                progress(s, setup, skipped=True)
                continue
            progress(s, setup)
            if setup is not current:
                if cluster is not None:
                    cluster.stop()
                    time.sleep(1)
                cluster = Cluster(
                    setup.server,
                    nodes=setup.nodes,
                    broker=setup.broker,
                    cpus=setup.cpus if a.pin else None,
                    env=setup.env,
                    work=Path(a.work),
                    rust_bin=a.rust_bin,
                    python=a.python,
                    settle=1.5 if a.quick else 3,
                )
                current = setup
            assert cluster is not None
            cmd = [
                *client_cpu(a, setup.cpus),
                a.bench,
                *cluster.bench_args(),
                "--connect-concurrency",
                str(a.connect_concurrency),
                "--label",
                s.label,
                "--json",
                *s.args,
            ]
            if sweep == "hundredk" and cluster.redis is not None:
                cmd += ["--broker-pid", str(cluster.redis.pid)]
            r0 = cluster.redis_reading()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            r1 = cluster.redis_reading()
            if r.returncode != 0:
                print(f"    ws-bench failed ({r.returncode}): {r.stderr.strip()}", file=sys.stderr)
                continue
            rep = json.loads(r.stdout)
            rep.update(
                sweep=sweep,
                x=s.x,
                target=setup.server,
                setup=setup.name,
                broker="redis" if setup.broker else "none",
                kind="knee" if knee else "closed",
                offered=float(s.label.rsplit("-", 1)[1]) if knee else 0.0,
                members=(rep.get("broadcast") or {}).get("members"),
                cpus=setup.cpus if a.pin else "all",
                client_cpus=" ".join(client_cpu(a, setup.cpus)[2:]) or "unpinned",
            )
            if sweep == "hundredk":
                rep.update(stopped_by=s.note, fd_cap=fd_cap())
            if r0 and r1:
                rep.update(redis_cpu_s=r1[0] - r0[0], redis_rss=max(r0[1], r1[1]))
            f.write(json.dumps(rep) + "\n")
            f.flush()
            b = rep.get("broadcast") or {}
            lat = rep.get("latency") or {}
            reach = (
                f" reach={100 * b['reach_received'] / b['reach_expected']:.1f}%"
                if b.get("reach_expected")
                else ""
            )
            print(
                f"    p99={lat.get('p99_us', '-')}us{reach} "
                f"client_cpu={rep.get('client_cpu_pct', 0):.0f}%"
                f"{' SATURATED' if rep.get('client_saturated') else ''} "
                f"notes={'; '.join(rep.get('notes', []))[:200]}",
                file=sys.stderr,
            )
            if knee and over_slo(rep, "knee-broadcast", a):
                past_slo[group] = past_slo.get(group, 0) + 1
            time.sleep(0.5 if a.quick else 2)
    finally:
        if cluster is not None:
            cluster.stop()


# ---- servers -----------------------------------------------------------------------------------


class Server:
    """A server process on loopback, pinned to `cpu` (CPU 0 by default) when pinning is on."""

    def __init__(self, name: str, a: argparse.Namespace, env: dict[str, str], cpu: str = "0"):
        self.name = name
        self.port = a.rust_port if name == "rust-ws" else a.py_port
        e = dict(
            os.environ, WS_HOST="127.0.0.1", WS_PORT=str(self.port), LOG_LEVEL="warning", **env
        )
        cmd = [a.rust_bin] if name == "rust-ws" else [a.python, "-m", "python_ws"]
        if a.pin:
            cmd = ["taskset", "-c", cpu, *cmd]
        if port_open(self.port):
            sys.exit(f"sweep.py: something already listens on 127.0.0.1:{self.port}")
        self.log = open(Path(a.work) / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=e, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if port_open(self.port):
                # Let start-up allocations settle before any idle baseline.
                time.sleep(1.5 if a.quick else 3)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        sys.exit(f"sweep.py: {name} did not start on port {self.port} (log in {self.log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- running -----------------------------------------------------------------------------------


def fmt_secs(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def over_slo(rep: dict, sweep: str, a: argparse.Namespace) -> bool:
    """Whether this step is past the SLO: the sweeps that look for a limit stop soon after."""
    lat = rep.get("latency") or {}
    b = rep.get("broadcast") or {}
    e = rep.get("echo") or {}
    behind = (
        (b.get("skipped") or 0) > 0 or (e.get("skipped") or 0) > 0 or (e.get("missing") or 0) > 0
    )
    if sweep == "knee-echo":
        return behind or lat.get("p99_us", 0) > a.slo_echo_ms * 1000
    if sweep == "knee-broadcast":
        return behind or lat.get("p99_us", 0) > a.slo_broadcast_ms * 1000
    if sweep == "capacity":
        rtt = b.get("own_rtt") or {}
        return behind or rtt.get("p95_us", 0) > a.slo_broadcast_ms * 1000
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 s steps: a pipeline check")
    p.add_argument(
        "--out", required=True, help="directory for sweeps.jsonl and sweeps-meta.json (created)"
    )
    p.add_argument(
        "--servers",
        default="rust-ws python-ws",
        help="space-separated servers to sweep, one after the other (default: %(default)s)",
    )
    p.add_argument(
        "--sweeps",
        default="conns paths fanout msgsize knee-echo knee-broadcast capacity",
        help="space-separated sweeps to run, any of: %(default)s (bench/README.md explains each)",
    )
    p.add_argument(
        "--bench",
        default=str(ROOT / "target/release/ws-bench"),
        help="the ws-bench binary (default: the release build, %(default)s)",
    )
    p.add_argument(
        "--rust-bin",
        default=str(ROOT / "target/release/rust-ws"),
        help="the rust-ws binary; a debug build measures the wrong thing (default: %(default)s)",
    )
    p.add_argument(
        "--python",
        default=str(ROOT / ".venv/bin/python"),
        help="the Python that runs `-m python_ws` (default: %(default)s)",
    )
    p.add_argument(
        "--rust-port", type=int, default=28100, help="rust-ws's port on 127.0.0.1 (%(default)s)"
    )
    p.add_argument(
        "--py-port", type=int, default=28101, help="python-ws's port on 127.0.0.1 (%(default)s)"
    )
    p.add_argument(
        "--pin",
        type=int,
        default=1,
        help="1: pin each server to CPU 0 and ws-bench to CPU 1 with taskset (needs 2 cores); "
        "0: no pinning (default: %(default)s)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per timed step")
    p.add_argument(
        "--hold-secs",
        type=float,
        default=12.0,
        help="conns and paths sweeps: seconds each tier's connections are held (quick: 2)",
    )
    p.add_argument(
        "--ping-secs", type=int, default=5, help="server keepalive interval during the conns sweep"
    )
    p.add_argument("--top-tier", type=int, default=0, help="largest hold tier; 0 = fd limit - 100")
    p.add_argument(
        "--paths-n",
        type=int,
        default=10000,
        help="paths sweep: connections per path (default: %(default)s; quick: 200)",
    )
    p.add_argument(
        "--fanout-deliveries",
        type=float,
        default=10000.0,
        help="offered deliveries/s at every fan-out size",
    )
    p.add_argument(
        "--capacity-rate",
        type=float,
        default=None,
        help="broadcasts/s per client in the capacity sweep (0.1; quick: 0.5)",
    )
    p.add_argument(
        "--slo-echo-ms",
        type=float,
        default=50.0,
        help="knee-echo: the p99 round trip (ms) a step must stay under (default: %(default)s)",
    )
    p.add_argument(
        "--slo-broadcast-ms",
        type=float,
        default=250.0,
        help="knee-broadcast and capacity: the round-trip bound (ms): p99 for the knee, p95 "
        "for capacity (default: %(default)s)",
    )
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=512,
        help="handshakes ws-bench keeps in flight while connecting (default: %(default)s)",
    )
    p.add_argument(
        "--max-nodes",
        type=int,
        default=None,
        help="most nodes in the nodes sweep (2, 4, ...); default 4 with 5+ cores, else 2",
    )
    p.add_argument(
        "--node-rates",
        default="",
        help="offered deliveries/s of the nodes sweep's knee steps, comma list (default: by size)",
    )
    p.add_argument(
        "--multicore-cpus",
        default="0,1",
        help="the CPUs every setup of the multicore row gets (taskset list)",
    )
    p.add_argument(
        "--hk-members", type=int, default=100_000, help="hundredk: members of the one room"
    )
    p.add_argument(
        "--hk-nodes", type=int, default=7, help="hundredk: rust-ws nodes (each under the fd cap)"
    )
    p.add_argument(
        "--hk-py-nodes",
        type=int,
        default=0,
        help="hundredk: python-ws processes (0 = one per core)",
    )
    p.add_argument("--hk-broadcasts", type=int, default=10, help="hundredk: broadcasts to time")
    p.add_argument(
        "--hk-interval", type=float, default=3.0, help="hundredk: seconds between broadcasts"
    )
    a = p.parse_args()
    a.node_rates = [float(x) for x in a.node_rates.split(",") if x.strip()]
    if a.max_nodes is None:
        a.max_nodes = 4 if (os.cpu_count() or 1) >= 5 else 2
    a.sweeps = a.sweeps.split()
    # The servers inherit this process's open-files limit: lift the soft limit to the hard one,
    # as run.sh does, so a hold tier near the cap is the cap's doing, not a default of 1,024.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.capacity_rate is None:
        a.capacity_rate = 0.5 if a.quick else 0.1
    a.pin = a.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    a.work = str(out)
    jsonl = out / "sweeps.jsonl"
    steps = plan(a)
    servers = a.servers.split()
    clusters = {w: cluster_steps(a, w) for w in ("nodes", "multicore", "hundredk") if w in a.sweeps}
    total = len(steps) * len(servers) + sum(len(v) for v in clusters.values())
    est_total = sum(s.est for s in steps) * len(servers)
    est_total += sum(s.est + 2 for v in clusters.values() for _, s in v)
    print(f"sweeps: {total} steps, about {fmt_secs(est_total)} estimated", file=sys.stderr)
    (out / "sweeps-meta.json").write_text(
        json.dumps(
            {
                "quick": a.quick,
                "slo_echo_ms": a.slo_echo_ms,
                "slo_broadcast_ms": a.slo_broadcast_ms,
                "capacity_rate": a.capacity_rate,
                "fanout_deliveries": 2000 if a.quick else a.fanout_deliveries,
                "ping_secs": a.ping_secs,
                "fd_cap": fd_cap(),
                "pinned": bool(a.pin),
                "duration": 2.0 if a.quick else a.duration,
                "servers": servers,
                "cores": os.cpu_count(),
                "max_nodes": a.max_nodes,
                "ping_secs_hundredk": a.ping_secs,
                "node_cpus": server_cpus(a) if a.pin else "all",
                "node_client_cpus": " ".join(client_cpu(a, server_cpus(a))[2:]) or "unpinned",
                "multicore_cpus": a.multicore_cpus if a.pin else "all",
                "multicore_client_cpus": " ".join(client_cpu(a, a.multicore_cpus)[2:])
                or "unpinned",
            },
            indent=1,
        )
    )
    t_start = time.monotonic()
    done_est = 0.0
    n = 0
    with open(jsonl, "a") as f:
        for name in servers:
            server: Server | None = None
            server_env: dict[str, str] | None = None
            stopped_sweeps: dict[str, int] = {}
            for s in steps:
                n += 1
                elapsed = time.monotonic() - t_start
                # ETA: the remaining estimates, scaled by how the estimates have held so far.
                scale = elapsed / done_est if done_est > 0 else 1.0
                eta = (est_total - done_est) * scale
                if stopped_sweeps.get(s.sweep, 0) >= 2:
                    print(
                        f"[{n}/{total}] {name} {s.sweep} x={s.x:g}: skipped (two steps past "
                        f"the SLO already)",
                        file=sys.stderr,
                    )
                    done_est += s.est
                    continue
                print(
                    f"[{n}/{total}] {name} {s.sweep} x={s.x:g} ({s.label}); elapsed "
                    f"{fmt_secs(elapsed)}, about {fmt_secs(eta)} left",
                    file=sys.stderr,
                )
                if server is None or s.fresh or s.server_env != server_env:
                    if server is not None:
                        server.stop()
                        time.sleep(1)
                    server = Server(name, a, s.server_env)
                    server_env = s.server_env
                cmd = [
                    a.bench,
                    "--url",
                    f"ws://127.0.0.1:{server.port}/ws",
                    "--pid",
                    str(server.proc.pid),
                    "--metrics-url",
                    f"http://127.0.0.1:{server.port}/metrics",
                    "--connect-concurrency",
                    str(a.connect_concurrency),
                    "--label",
                    s.label,
                    "--json",
                    *s.args,
                ]
                if a.pin:
                    cmd = ["taskset", "-c", "1", *cmd]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                done_est += s.est
                if r.returncode != 0:
                    print(
                        f"    ws-bench failed ({r.returncode}): {r.stderr.strip()}", file=sys.stderr
                    )
                    continue
                rep = json.loads(r.stdout)
                rep.update(sweep=s.sweep, x=s.x, target=name)
                f.write(json.dumps(rep) + "\n")
                f.flush()
                lat = rep.get("latency") or {}
                print(
                    f"    p50={lat.get('p50_us', '-')}us p99={lat.get('p99_us', '-')}us "
                    f"client_cpu={rep.get('client_cpu_pct', 0):.0f}%"
                    f"{' SATURATED' if rep.get('client_saturated') else ''} "
                    f"notes={'; '.join(rep.get('notes', []))[:200]}",
                    file=sys.stderr,
                )
                if over_slo(rep, s.sweep, a):
                    stopped_sweeps[s.sweep] = stopped_sweeps.get(s.sweep, 0) + 1
                # Let TIME_WAITs and the allocator settle between steps.
                time.sleep(0.5 if a.quick else 2)
            if server is not None:
                server.stop()
            time.sleep(1)

        def progress(s: Step, setup: Setup, skipped: bool = False) -> None:
            nonlocal n, done_est
            n += 1
            elapsed = time.monotonic() - t_start
            scale = elapsed / done_est if done_est > 0 else 1.0
            eta = (est_total - done_est) * scale
            done_est += s.est + 2
            what = "skipped (two steps past the SLO already)" if skipped else ""
            print(
                f"[{n}/{total}] {setup.name}: {s.label} {what}; elapsed {fmt_secs(elapsed)}, "
                f"about {fmt_secs(eta)} left",
                file=sys.stderr,
            )

        for sweep in clusters:
            run_clusters(a, sweep, f, progress)
    print(f"sweeps: done in {fmt_secs(time.monotonic() - t_start)}; {jsonl}", file=sys.stderr)


if __name__ == "__main__":
    main()
