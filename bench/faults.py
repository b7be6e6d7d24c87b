"""Faults under load (issue 23, section 4): nodes on one Redis under churn and broadcasts, while
on a schedule Redis is killed (SIGKILL, then restarted), a node is killed and restarted, and
Redis is paused (SIGSTOP for a few seconds, then SIGCONT).

    .venv/bin/python bench/faults.py                        # python-ws, 2 nodes, ~1.5 min
    .venv/bin/python bench/faults.py --server rust-ws --nodes 3 --members 2000 --phase-secs 20

What PROTOCOL.md §5 promises, checked broadcast by broadcast ("never a silent split"): every
broadcast either reached every member that was owed it, exactly once, or its sender got an error
carrying its `ref` (`broker_unavailable`). A member is owed a broadcast of its room when it was
connected from the send until 2 s after, and its node answered `/readyz` 200 at every poll
(every 100 ms) in that time (a node that is not ready may miss other nodes' broadcasts: §5 says
so, and its members then see a jump in `seq`). Anything else is a violation the report names:
an owed member that never got it (`missed`), a member that got it twice (`duplicate`), a
broadcast with neither a delivery nor an error (`silent`), and `seq` going backwards on a
member (allowed only once per Redis restart, which starts every room at 1 again).

The load: `--members` ledger connections (a websockets client in this process) in `--rooms`
rooms, the k-th member of each room on node k mod nodes; one sender per room per node sends a
broadcast with a distinct `ref` every 1/`--rate` s; a member that loses its connection (its node
was killed) reconnects to the same node. Beside it, `ws-bench sessions` runs back to back over
every node (connect, broadcast, read it back, close: churn), its runs counted per phase.

Writes `<out>/faults-<date>.jsonl` (meta, events, readiness, every broadcast's outcome, node
samples, churn runs), `faults-<date>.md` (reach per phase, time to recover, errors by code, the
nodes' memory and descriptors before and after, the check) and `faults-<date>.png`. Exits 3 when
the check fails (after writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import websockets
from cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
OWED_FOR = 2.0  # a member connected and its node ready this long after a send is owed it
POLL = 0.1


@dataclass
class Sent:
    ref: str
    room: int
    node: int
    member: int
    t: float
    phase: str
    error: str | None = None
    detail: str | None = None


@dataclass
class Member:
    index: int
    room: int
    node: int
    sender: bool
    # (opened, closed or None) of each connection this member had.
    spans: list[list[float | None]] = field(default_factory=list)
    got: Counter = field(default_factory=Counter)
    seq_back: int = 0


class Run:
    """The ledger: every broadcast sent, every delivery, every node's readiness over time."""

    def __init__(self, a: argparse.Namespace, cluster: Cluster):
        self.a = a
        self.cluster = cluster
        self.t0 = time.monotonic()
        self.phase = "baseline"
        self.sent: dict[str, Sent] = {}
        self.members: list[Member] = []
        self.ready: list[list[tuple[float, bool]]] = [[] for _ in cluster.ports]
        self.events: list[dict] = []
        self.stop = False
        self.sending = True
        # Set once every member has connected once.
        self.all_in = asyncio.Event()
        self.joined = 0
        self.refs = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, what: str, **kw) -> None:
        self.events.append({"kind": "event", "t": round(self.now(), 3), "what": what, **kw})
        print(f"faults: {self.now():6.1f}s {what} {kw or ''}", file=sys.stderr)

    # ---- the load ----------------------------------------------------------------------------

    async def member(self, m: Member) -> None:
        url = f"ws://127.0.0.1:{self.cluster.ports[m.node]}/ws?room=faults-{m.room}"
        k = 0
        while not self.stop:
            try:
                async with websockets.connect(url, open_timeout=3, ping_interval=None) as ws:
                    welcome = json.loads(await ws.recv())
                    conn = welcome.get("conn_id", "?")
                    span: list[float | None] = [self.now(), None]
                    m.spans.append(span)
                    if len(m.spans) == 1:
                        self.joined += 1
                        if self.joined == len(self.members):
                            self.all_in.set()
                    last_seq = 0
                    sender = asyncio.create_task(self.send_loop(ws, m, conn)) if m.sender else None
                    try:
                        while not self.stop:
                            try:
                                raw = await asyncio.wait_for(ws.recv(), 0.5)
                            except TimeoutError:
                                continue
                            msg = json.loads(raw)
                            if msg.get("type") == "broadcast":
                                m.got[msg.get("ref")] += 1
                                seq = msg.get("seq") or 0
                                if seq <= last_seq:
                                    m.seq_back += 1
                                last_seq = seq
                            elif msg.get("type") == "error" and msg.get("ref") in self.sent:
                                s = self.sent[msg["ref"]]
                                s.error, s.detail = msg.get("code"), msg.get("detail")
                    finally:
                        span[1] = self.now()
                        if sender:
                            sender.cancel()
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
                pass
            k += 1
            await asyncio.sleep(0.2)

    async def send_loop(self, ws, m: Member, conn: str) -> None:
        every = 1 / self.a.rate
        # Senders start once every member is in (so every baseline broadcast is owed to all),
        # spread over one period.
        await self.all_in.wait()
        await asyncio.sleep(every * ((m.index * 0.618) % 1))
        while not self.stop:
            if self.sending:
                # Unique over the run: a restarted node hands out its conn_ids again.
                ref = f"b{self.refs}-{conn}"
                self.refs += 1
                self.sent[ref] = Sent(ref, m.room, m.node, m.index, self.now(), self.phase)
                try:
                    await ws.send(
                        json.dumps({"type": "broadcast", "user": "f", "text": "x", "ref": ref})
                    )
                except websockets.exceptions.WebSocketException:
                    # Never handed to the server: not a broadcast the server answered for.
                    del self.sent[ref]
                    return
            await asyncio.sleep(every)

    async def poll_ready(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop:
            for k, port in enumerate(self.cluster.ports):
                ok = await loop.run_in_executor(None, ready, port)
                self.ready[k].append((self.now(), ok))
            await asyncio.sleep(POLL)

    # ---- the schedule ------------------------------------------------------------------------

    async def schedule(self) -> None:
        a, c = self.a, self.cluster
        loop = asyncio.get_running_loop()
        await asyncio.sleep(a.phase_secs)
        # 1. Redis killed, then restarted on its port without its data.
        self.phase = "redis-kill"
        self.event("SIGKILL redis", pid=c.redis.pid)
        c.redis.kill()
        c.redis.wait()
        await asyncio.sleep(a.down_secs)
        await loop.run_in_executor(None, c.start_redis)
        self.event("redis restarted", pid=c.redis.pid, fault_end=True)
        await asyncio.sleep(a.phase_secs)
        # 2. The last node killed, then restarted.
        self.phase = "node-kill"
        k = len(c.procs) - 1
        self.event("SIGKILL node", node=k + 1, pid=c.procs[k].pid)
        c.procs[k].kill()
        c.procs[k].wait()
        await asyncio.sleep(a.down_secs)
        await loop.run_in_executor(None, c.start_node, k)
        self.event("node restarted", node=k + 1, pid=c.procs[k].pid, fault_end=True)
        await asyncio.sleep(a.phase_secs)
        # 3. Redis paused: it keeps its sockets but answers nothing.
        self.phase = "redis-pause"
        self.event("SIGSTOP redis", pid=c.redis.pid)
        os.kill(c.redis.pid, signal.SIGSTOP)
        await asyncio.sleep(a.pause_secs)
        os.kill(c.redis.pid, signal.SIGCONT)
        self.event("SIGCONT redis", fault_end=True)
        await asyncio.sleep(a.phase_secs)
        # The last sends get OWED_FOR to arrive before the members stop reading.
        self.phase = "end"
        self.sending = False
        await asyncio.sleep(OWED_FOR + 1)
        self.stop = True

    async def main(self) -> None:
        a = self.a
        rooms = a.rooms
        nodes = len(self.cluster.ports)
        for i in range(a.members):
            room, place = i % rooms, i // rooms
            # One sender per room per node: the first `nodes` members of each room.
            self.members.append(Member(i, room, place % nodes, place < nodes))
        tasks = [asyncio.create_task(self.member(m)) for m in self.members]
        poller = asyncio.create_task(self.poll_ready())
        await self.schedule()
        await asyncio.gather(*tasks, poller, return_exceptions=True)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
            return r.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


# ---- churn -------------------------------------------------------------------------------------


def churn(a: argparse.Namespace, run: Run, rows: list[dict], done: threading.Event) -> None:
    """ws-bench sessions back to back over every node, until `done`."""
    urls = ",".join(f"ws://127.0.0.1:{p}/ws" for p in run.cluster.ports)
    while not done.is_set():
        phase, t = run.phase, run.now()
        cmd = [a.bench, "--url", urls, "--json", "sessions", "-c", str(a.workers), "-d", "2"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
            rep = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
            rows.append(
                {
                    "kind": "churn",
                    "t": round(t, 2),
                    "phase": phase,
                    "rc": p.returncode,
                    "sessions": rep.get("requests", 0),
                    "connect_failures": rep.get("connect_failures", {}),
                    "errors": rep.get("errors", {}),
                    "stderr": p.stderr.strip()[-300:] if p.returncode else "",
                }
            )
        except subprocess.TimeoutExpired:
            rows.append({"kind": "churn", "t": round(t, 2), "phase": phase, "rc": "timeout"})
        done.wait(0.5)


# ---- the check ---------------------------------------------------------------------------------


def node_ready_through(run: Run, node: int, t0: float, t1: float) -> bool:
    polls = [ok for t, ok in run.ready[node] if t0 - POLL <= t <= t1]
    return bool(polls) and all(polls)


def connected_through(m: Member, t0: float, t1: float) -> bool:
    return any(s[0] <= t0 and (s[1] is None or s[1] >= t1) for s in m.spans)


def check(run: Run) -> dict:
    """Every broadcast's outcome, by phase."""
    by_room: dict[int, list[Member]] = defaultdict(list)
    for m in run.members:
        by_room[m.room].append(m)
    phases: dict[str, Counter] = defaultdict(Counter)
    codes: dict[str, Counter] = defaultdict(Counter)
    outcomes = []
    for s in run.sent.values():
        ph = phases[s.phase]
        ph["sent"] += 1
        delivered = sum(m.got.get(s.ref, 0) for m in by_room[s.room])
        if s.error:
            ph["answered_error"] += 1
            codes[s.phase][f"{s.error} ({s.detail})"] += 1
            outcomes.append({"ref": s.ref, "t": s.t, "phase": s.phase, "error": s.error})
            continue
        if not connected_through(run.members[s.member], s.t, s.t + OWED_FOR):
            # Its sender's connection ended (its node was killed) before an answer was due:
            # PROTOCOL promises that connection nothing more.
            ph["sender_gone"] += 1
            outcomes.append({"ref": s.ref, "t": s.t, "phase": s.phase, "sender_gone": True})
            continue
        owed = [
            m
            for m in by_room[s.room]
            if connected_through(m, s.t, s.t + OWED_FOR)
            and node_ready_through(run, m.node, s.t, s.t + OWED_FOR)
        ]
        got = sum(1 for m in owed if m.got.get(s.ref, 0) >= 1)
        dup = sum(1 for m in by_room[s.room] if m.got.get(s.ref, 0) > 1)
        ph["owed"] += len(owed)
        ph["received"] += got
        ph["missed"] += len(owed) - got
        ph["duplicate"] += dup
        ph["not_owed"] += len(by_room[s.room]) - len(owed)
        if delivered == 0:
            ph["silent"] += 1
        elif got == len(owed):
            ph["delivered_to_all"] += 1
        outcomes.append(
            {
                "ref": s.ref,
                "t": s.t,
                "phase": s.phase,
                "owed": len(owed),
                "got": got,
                "delivered": delivered,
            }
        )
    seq_back = sum(m.seq_back for m in run.members)
    # Each Redis restart starts every room at 1 again: once per member's connection at most.
    restarts = sum(1 for e in run.events if e["what"] == "redis restarted")
    return {
        "seq_back_allowed": len(run.members) * restarts,
        "phases": {k: dict(phases[k]) for k in PHASES if k in phases},
        "codes": {k: dict(v) for k, v in codes.items()},
        "outcomes": outcomes,
        "seq_back": seq_back,
    }


def recovery(run: Run, outcomes: list[dict]) -> list[dict]:
    """For each fault's end: seconds until every node was ready, and until the first broadcast
    sent after it reached every member of its room with no error."""
    out = []
    for e in run.events:
        if not e.get("fault_end"):
            continue
        t = e["t"]
        ready_at = None
        times = sorted({tt for r in run.ready for tt, _ in r if tt >= t})
        for tt in times:
            if all(any(x >= tt - POLL and ok for x, ok in r if x <= tt + POLL) for r in run.ready):
                ready_at = tt
                break
        first_ok = next(
            (
                o["t"]
                for o in sorted(outcomes, key=lambda o: o["t"])
                if o["t"] >= t
                and "owed" in o
                and o["owed"] > 0
                and o["got"] == o["owed"]
                and o["owed"] == len([m for m in run.members if m.room == room_of(run, o)])
            ),
            None,
        )
        out.append(
            {
                "after": e["what"],
                "ready_s": None if ready_at is None else round(ready_at - t, 2),
                "first_full_broadcast_s": None if first_ok is None else round(first_ok - t, 2),
            }
        )
    return out


def room_of(run: Run, o: dict) -> int:
    return run.sent[o["ref"]].room


def sample_nodes(c: Cluster) -> list[dict]:
    rows = []
    for k, p in enumerate(c.procs):
        try:
            ps = psutil.Process(p.pid)
            rows.append(
                {"node": k + 1, "pid": p.pid, "rss": ps.memory_info().rss, "fds": ps.num_fds()}
            )
        except psutil.Error:
            rows.append({"node": k + 1, "pid": p.pid, "rss": None, "fds": None})
    return rows


# ---- the report --------------------------------------------------------------------------------

PHASES = ["baseline", "redis-kill", "node-kill", "redis-pause", "end"]


def report(a, res: dict, rec: list[dict], before, after, churn_rows, stem: str) -> tuple[str, bool]:
    ph = res["phases"]
    bad = sum(ph[p].get(k, 0) for p in ph for k in ("missed", "duplicate", "silent"))
    bad += max(0, res["seq_back"] - res["seq_back_allowed"])
    lines = [
        f"# Faults under load, {stem[7:]}",
        "",
        f"Written by `bench/faults.py --server {a.server} --nodes {a.nodes} --members "
        f"{a.members} --rooms {a.rooms} --rate {a.rate:g} --phase-secs {a.phase_secs:g}`. "
        f"{a.nodes} {a.server} nodes on one Redis (bench/cluster.py), unpinned. Load: "
        f"{a.members} ledger members in {a.rooms} rooms spread over every node, one sender per "
        f"room per node at {a.rate:g} broadcasts/s, and `ws-bench sessions` back to back "
        f"({a.workers} workers) over every node. Schedule: {a.phase_secs:g} s baseline; Redis "
        f"SIGKILL, restarted after {a.down_secs:g} s; the last node SIGKILL, restarted after "
        f"{a.down_secs:g} s; Redis SIGSTOP for {a.pause_secs:g} s; each followed by "
        f"{a.phase_secs:g} s. A member is owed a broadcast when connected from the send until "
        f"{OWED_FOR:g} s after with its node ready (`/readyz` 200 at every 100 ms poll) "
        "throughout (PROTOCOL.md §5).",
        "",
        f"![faults]({stem}.png)",
        "",
        "| phase | sent | delivered to all owed | answered with an error | owed deliveries | "
        "reach | missed | duplicates | silent | sender's connection gone | not owed (node not "
        "ready / not connected) | churn runs ok / failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in PHASES:
        c = ph.get(p, {})
        if not c:
            continue
        owed = c.get("owed", 0)
        reach = f"{100 * c.get('received', 0) / owed:.2f}%" if owed else "-"
        ch = [r for r in churn_rows if r["phase"] == p]
        ok = sum(1 for r in ch if r["rc"] == 0)
        lines.append(
            f"| {p} | {c.get('sent', 0)} | {c.get('delivered_to_all', 0)} | "
            f"{c.get('answered_error', 0)} | {owed} | {reach} | {c.get('missed', 0)} | "
            f"{c.get('duplicate', 0)} | {c.get('silent', 0)} | {c.get('sender_gone', 0)} | "
            f"{c.get('not_owed', 0)} | "
            f"{ok} / {len(ch) - ok} |"
        )
    lines += ["", "Errors answering broadcasts, by code (and detail), per phase:", ""]
    for p, codes in res["codes"].items():
        lines.append(f"- {p}: " + ", ".join(f"{n} {k}" for k, n in codes.items()))
    if not res["codes"]:
        lines.append("- none")
    lines += [
        "",
        "| after | every node ready in | first broadcast reaching its whole room in |",
        "|---|---|---|",
    ]
    for r in rec:
        lines.append(f"| {r['after']} | {r['ready_s']} s | {r['first_full_broadcast_s']} s |")
    lines += [
        "",
        "| node | RSS before → after | fds before → after | pid before → after |",
        "|---|---|---|---|",
    ]
    for b, f in zip(before, after, strict=True):
        mib = lambda v: "-" if v is None else f"{v / 1048576:.1f} MiB"  # noqa: E731
        lines.append(
            f"| {b['node']} | {mib(b['rss'])} → {mib(f['rss'])} | {b['fds']} → {f['fds']} | "
            f"{b['pid']} → {f['pid']} |"
        )
    churn_fail = Counter()
    for r in churn_rows:
        for k, v in (r.get("connect_failures") or {}).items():
            churn_fail[k] += v
    lines += [
        "",
        f"Churn: {sum(r.get('sessions', 0) for r in churn_rows):,} sessions in "
        f"{len(churn_rows)} ws-bench runs; failed handshakes by kind: "
        + (", ".join(f"{v} {k}" for k, v in churn_fail.items()) or "none")
        + " (a run that starts while a node is down fails as a whole: counted per phase above).",
        "",
        f"`seq` going backwards on a member: {res['seq_back']} (allowed: once per member per "
        f"Redis restart, which starts every room's counter at 1 again: {res['seq_back_allowed']}).",
        "",
    ]
    ok = bad == 0
    lines.append(
        "**Check passed**: every broadcast reached every member owed it exactly once, or its "
        "sender got an error code for it; none was silent."
        if ok
        else f"**⚠ Check FAILED**: {bad} missed deliveries, duplicates or silent broadcasts "
        "(table above) or seq going backwards more often than Redis restarted."
    )
    return "\n".join(lines) + "\n", ok


def plot(res: dict, run: Run, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    full = [o["t"] for o in res["outcomes"] if "owed" in o and o["got"] == o["owed"]]
    part = [o["t"] for o in res["outcomes"] if "owed" in o and o["got"] < o["owed"]]
    err = [o["t"] for o in res["outcomes"] if "error" in o]
    bins = max(10, int(run.now()))
    ax1.hist(
        [full, err, part],
        bins=bins,
        stacked=True,
        color=["#27ae60", "#f39c12", "#c0392b"],
        label=[
            "delivered to every member owed",
            "answered broker_unavailable",
            "missed a member owed",
        ],
    )
    ax1.set_ylabel("broadcasts sent per second")
    ax1.legend(fontsize=8, loc="lower left")
    for e in run.events:
        for ax in (ax1, ax2):
            ax.axvline(e["t"], color="gray", lw=0.8, ls="--")
        ax1.text(
            e["t"],
            ax1.get_ylim()[1] * 0.95,
            e["what"],
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
        )
    for k, r in enumerate(run.ready):
        ax2.plot(
            [t for t, _ in r],
            [k + 1 + (0.3 if ok else 0) for _, ok in r],
            lw=1,
            label=f"node {k + 1}",
        )
    ax2.set_ylabel("/readyz (up = 200)")
    ax2.set_xlabel("seconds")
    ax2.set_yticks([])
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", default="python-ws", choices=["rust-ws", "python-ws"])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--rate", type=float, default=2.0, help="broadcasts/s per sender")
    p.add_argument("--workers", type=int, default=4, help="ws-bench sessions workers (churn)")
    p.add_argument("--phase-secs", type=float, default=15.0)
    p.add_argument("--down-secs", type=float, default=2.0)
    p.add_argument("--pause-secs", type=float, default=4.0)
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--bench", default=str(ROOT / "target/release/ws-bench"))
    p.add_argument("--rust-bin", default=str(ROOT / "target/release/rust-ws"))
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wslab-faults-"))
    stem = f"faults-{time.strftime('%Y-%m-%d', time.gmtime())}"
    cluster = Cluster(
        a.server,
        nodes=a.nodes,
        broker=True,
        cpus=None,
        env={},
        work=work,
        rust_bin=a.rust_bin,
        python=a.python,
        settle=1.0,
    )
    churn_rows: list[dict] = []
    try:
        # Before anything of ours connects (the cluster settled a second after its last /readyz).
        before = sample_nodes(cluster)
        # Nodes from before PROTOCOL §5 answer /readyz 404 and ignore the broker: nothing would be
        # owed to anyone and the check would pass on nothing.
        if not all(ready(p) for p in cluster.ports):
            sys.exit(
                f"faults.py: {a.server} nodes do not answer /readyz 200 with WS_BROKER_URL set: "
                "this build does not speak PROTOCOL.md §5 (several nodes)"
            )
        run = Run(a, cluster)
        done = threading.Event()
        ch = threading.Thread(target=churn, args=(a, run, churn_rows, done), daemon=True)
        ch.start()
        asyncio.run(run.main())
        done.set()
        ch.join(60)
        time.sleep(2)  # the members' closes land
        after = sample_nodes(cluster)
    finally:
        cluster.stop()
    res = check(run)
    rec = recovery(run, res["outcomes"])
    with open(out / f"{stem}.jsonl", "w") as f:
        meta = {k: v for k, v in vars(a).items()}
        f.write(json.dumps({"kind": "meta", **meta}) + "\n")
        for row in [*run.events, *churn_rows]:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"kind": "nodes", "before": before, "after": after}) + "\n")
        f.write(json.dumps({"kind": "ready", "ready": run.ready}) + "\n")
        f.write(
            json.dumps(
                {
                    "kind": "check",
                    "phases": res["phases"],
                    "codes": res["codes"],
                    "seq_back": res["seq_back"],
                    "seq_back_allowed": res["seq_back_allowed"],
                    "recovery": rec,
                }
            )
            + "\n"
        )
        for o in res["outcomes"]:
            f.write(json.dumps({"kind": "broadcast", **o}) + "\n")
    plot(res, run, out / f"{stem}.png")
    md, ok = report(a, res, rec, before, after, churn_rows, stem)
    (out / f"{stem}.md").write_text(md)
    print(f"faults: wrote {out / stem}.md, .png and .jsonl; server logs in {work}", file=sys.stderr)
    if not ok:
        sys.exit(3)


if __name__ == "__main__":
    main()
