"""Churn soak (bench/README.md, "Soak"): both servers under connect / broadcast / read / close
cycles plus idle holders for a long run, their RSS and open file descriptors sampled every 10 s.

    .venv/bin/python bench/soak.py                 # 30 minutes, both servers at once
    .venv/bin/python bench/soak.py --minutes 2     # a short check of the same pipeline

Each server runs natively on loopback, pinned to a core of its own (rust-ws CPU 0, python-ws CPU 1;
`--pin 0` turns that off), and both soak at the same time so one run takes the stated minutes.
Against each: `--holders` idle connections opened at the start and held to the end (the
server's keepalive pings run on them), and a churn loop of ws-bench runs, one after the other,
until the time is up:

- `sessions`: workers repeating connect, broadcast, read their own message back, close;
- `hold` of `--churn-n` connections over every path in turn (an ok echo, an error reply, a
  broadcast; a close handshake or an RST), held a few seconds, then ended;
- `broadcast`: paced broadcasts in a few rooms, then close.

A sampler reads each server's RSS and open descriptors (psutil) and scrapes `ws_connections` every
10 s. After each churn cycle, once the cycle's connections are gone (only the holders left), it
takes a baseline sample: those baselines are the leak signal, since a sample mid-cycle sees the
cycle's own connections. The slope is a least-squares fit, in MiB per hour, over the baselines
after the first cycle (the warm-up) and, for comparison, over every 10 s sample.

Writes `<out>/soak-<date>.jsonl` (every sample, every ws-bench report), `soak-<date>.png` and
`soak-<date>.md`. The servers share the machine with the soak's own clients; the soak measures
memory and descriptors over time, not throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families
from sweep import ROOT, Server, fmt_secs

SAMPLE_SECS = 10.0
# A churn hold holds for 3 s and ends without a settle (the cycle's baseline sample settles);
# a churn broadcast waits at most 3 s for its last deliveries.
HOLD_TIMES = ["--hold-secs", "3", "--settle-secs", "0"]
DRAIN = ["--drain-secs", "3"]
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int | None:
    """The process's resident memory (None once it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def fd_count(pid: int) -> int | None:
    """The process's open file descriptors (None once it is gone)."""
    try:
        return psutil.Process(pid).num_fds()
    except psutil.Error:
        return None


def connections(port: int) -> float | None:
    """The server's own `ws_connections` gauge (None when the scrape fails)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "ws_connections":
            return float(family.samples[0].value)
    return None


def slope_mib_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, bytes) points, in MiB per hour; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600 / MIB


def churn_cycle(a: argparse.Namespace, k: int) -> list[tuple[str, list[str], float]]:
    """The ws-bench runs of churn cycle `k`: (label, arguments, time limit in seconds). The hold
    path rotates with k, so a soak of six cycles or more has taken every path."""
    paths = [
        ("echo", "close"),
        ("error", "close"),
        ("broadcast", "close"),
        ("echo", "reset"),
        ("error", "reset"),
        ("broadcast", "reset"),
    ]
    ex, end = paths[k % len(paths)]
    d = a.step_secs
    n = a.churn_n
    return [
        ("sessions", ["sessions", "-c", str(a.workers), "-d", str(d)], d + 30),
        (
            f"hold-{ex}-{end}",
            ["hold", "-n", str(n), "--exchange", ex, "--end", end, *HOLD_TIMES],
            n / 500 + 40,
        ),
        (
            "broadcast",
            [
                "broadcast",
                "-c",
                str(a.bcast_c),
                "--rooms",
                "4",
                "--rate",
                "1",
                "-d",
                str(d),
                *DRAIN,
            ],
            d + 40,
        ),
    ]


class Soak(threading.Thread):
    """One server's soak: holders, the churn loop, and the sampler, writing to a shared sink."""

    def __init__(self, server: Server, cpu: str, a: argparse.Namespace, sink: Sink):
        super().__init__(name=f"soak-{server.name}")
        self.server = server
        # This server's ws-bench runs on the other core, so no client takes its server's core.
        self.client_cpu = "1" if cpu == "0" else "0"
        self.a = a
        self.sink = sink
        self.url = f"ws://127.0.0.1:{server.port}/ws"
        self.t0 = time.monotonic()
        self.phase = "start"
        self.stop_sampling = threading.Event()
        self.cycles = 0
        self.error: str | None = None

    def sample(self, kind: str) -> None:
        pid = self.server.proc.pid
        self.sink.write(
            {
                "kind": kind,
                "target": self.server.name,
                "t": round(time.monotonic() - self.t0, 2),
                "rss": rss_bytes(pid),
                "fds": fd_count(pid),
                "ws_connections": connections(self.server.port),
                "phase": self.phase,
            }
        )

    def sampler(self) -> None:
        next_at = time.monotonic()
        while not self.stop_sampling.is_set():
            self.sample("sample")
            next_at += SAMPLE_SECS
            self.stop_sampling.wait(max(0.0, next_at - time.monotonic()))

    def bench_cmd(self, label: str, args: list[str]) -> list[str]:
        cmd = [self.a.bench, "--url", self.url, "--json", "--label", label, *args]
        return ["taskset", "-c", self.client_cpu, *cmd] if self.a.pin else cmd

    def record(self, stdout: str) -> None:
        """ws-bench's JSON report (its last line) as a `bench` row."""
        rep = json.loads(stdout.strip().splitlines()[-1])
        self.sink.write(
            {"kind": "bench", "target": self.server.name, "t": time.monotonic() - self.t0, **rep}
        )

    def bench(self, label: str, args: list[str], limit: float) -> None:
        cmd = self.bench_cmd(label, args)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            self.sink.write({"kind": "bench-timeout", "target": self.server.name, "label": label})
            return
        if p.returncode != 0 or not p.stdout.strip():
            self.sink.write(
                {
                    "kind": "bench-error",
                    "target": self.server.name,
                    "label": label,
                    "rc": p.returncode,
                    "stderr": p.stderr[-2000:],
                }
            )
            return
        self.record(p.stdout)

    def run(self) -> None:
        a = self.a
        sampler = threading.Thread(target=self.sampler, name=f"sampler-{self.server.name}")
        self.sample("idle")
        sampler.start()
        deadline = self.t0 + a.minutes * 60
        hold_secs = max(1.0, deadline - time.monotonic())
        holders_cmd = self.bench_cmd(
            "holders",
            [
                *("hold", "-n", str(a.holders), "--exchange", "none"),
                *("--hold-secs", f"{hold_secs:.0f}", "--settle-secs", "1"),
            ],
        )
        holders = subprocess.Popen(holders_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.phase = "churn"
            time.sleep(min(5.0, hold_secs))  # the holders open first
            while time.monotonic() < deadline - 5:
                complete = True
                for label, args, limit in churn_cycle(a, self.cycles):
                    if time.monotonic() >= deadline - 5:
                        complete = False
                        break
                    self.bench(label, args, limit)
                self.cycles += 1
                time.sleep(3)  # the cycle's closes land; then only the holders are open
                # A baseline only after a whole cycle, with the holders still holding.
                if complete and holders.poll() is None and time.monotonic() < deadline:
                    self.sample("baseline")
            self.phase = "holders-ending"
            out, err = holders.communicate(timeout=120)
            if holders.returncode != 0:
                self.error = f"holders exited {holders.returncode}: {err.decode()[-500:]}"
            elif out.strip():
                self.record(out.decode())
            self.phase = "after"
            time.sleep(a.settle_secs)
            self.sample("after")
        finally:
            if holders.poll() is None:
                holders.kill()
                holders.wait(5)
            self.stop_sampling.set()
            sampler.join(15)


class Sink:
    """JSON lines from several threads into one file, and the rows kept for the report."""

    def __init__(self, path: Path):
        self.f = open(path, "w")  # noqa: SIM115 (closed in close)
        self.rows: list[dict] = []
        self.lock = threading.Lock()

    def write(self, row: dict) -> None:
        with self.lock:
            self.rows.append(row)
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()

    def close(self) -> None:
        self.f.close()


# ---- the report ----------------------------------------------------------------------------------


def summarise(rows: list[dict], target: str) -> dict:
    samples = [r for r in rows if r["target"] == target and r["kind"] in ("sample", "baseline")]
    baselines = [r for r in rows if r["target"] == target and r["kind"] == "baseline"]
    idle = next(r for r in rows if r["target"] == target and r["kind"] == "idle")
    after = next((r for r in rows if r["target"] == target and r["kind"] == "after"), None)
    benches = [r for r in rows if r["target"] == target and r["kind"] == "bench"]
    problems = [
        r for r in rows if r["target"] == target and r["kind"] in ("bench-error", "bench-timeout")
    ]
    warm = baselines[1:]  # the first cycle is the warm-up
    half = max((r["t"] for r in samples), default=0) / 2
    fails = sum(sum((b.get("connect_failures") or {}).values()) for b in benches)
    errors = sum(sum((b.get("errors") or {}).values()) for b in benches)
    rss = [r["rss"] for r in samples if r["rss"]]
    fds = [r["fds"] for r in samples if r["fds"] is not None]
    return {
        "target": target,
        "idle_rss": idle["rss"],
        "idle_fds": idle["fds"],
        "first_baseline": warm[0]["rss"] if warm else None,
        "last_baseline": warm[-1]["rss"] if warm else None,
        "last_baseline_fds": warm[-1]["fds"] if warm else None,
        "peak_rss": max(rss) if rss else None,
        "max_fds": max(fds) if fds else None,
        "after_rss": after["rss"] if after else None,
        "after_fds": after["fds"] if after else None,
        "after_conns": after["ws_connections"] if after else None,
        "slope_baselines": slope_mib_per_hour([(r["t"], r["rss"]) for r in warm if r["rss"]]),
        # The second half alone: a warm-up that levels off is not a leak.
        "slope_second_half": slope_mib_per_hour(
            [(r["t"], r["rss"]) for r in warm if r["rss"] and r["t"] >= half]
        ),
        "slope_all": slope_mib_per_hour(
            [(r["t"], r["rss"]) for r in samples if r["rss"] and r["t"] >= 60]
        ),
        "fd_slope_baselines": slope_mib_per_hour(
            [(r["t"], r["fds"] * MIB) for r in warm if r["fds"] is not None]
        ),
        "cycles": len(baselines),
        "samples": len(samples),
        "connections_opened": sum(b.get("conns_opened") or 0 for b in benches),
        "sessions": sum(b.get("requests") or 0 for b in benches if b.get("mode") == "sessions"),
        "failed_handshakes": fails,
        "errors": errors,
        "bench_problems": len(problems),
    }


def plot(rows: list[dict], targets: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"rust-ws": "#c0392b", "python-ws": "#2471a3"}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for t in targets:
        s = [r for r in rows if r["target"] == t and r["kind"] == "sample" and r["rss"]]
        b = [r for r in rows if r["target"] == t and r["kind"] == "baseline" and r["rss"]]
        c = colours.get(t)
        ax1.plot([r["t"] / 60 for r in s], [r["rss"] / MIB for r in s], color=c, lw=1, label=t)
        ax1.plot(
            [r["t"] / 60 for r in b],
            [r["rss"] / MIB for r in b],
            "o",
            ms=3,
            color=c,
            label=f"{t}, between cycles",
        )
        ax2.plot(
            [r["t"] / 60 for r in s], [r["fds"] for r in s if r["fds"] is not None], color=c, lw=1
        )
    ax1.set_ylabel("server RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title("Churn soak: RSS and open file descriptors every 10 s")
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("minutes")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / MIB:.1f} MiB"


def slope(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f} MiB/h"


def report(a: argparse.Namespace, rows: list[dict], targets: list[str], stem: str) -> str:
    sums = [summarise(rows, t) for t in targets]
    lines = [
        f"# Churn soak, {stem[5:]}",
        "",
        f"Written by `bench/soak.py --minutes {a.minutes:g}`. Both servers soaked "
        f"at the same time for {a.minutes:g} minutes, natively on loopback"
        + (
            ", rust-ws pinned to CPU 0 and python-ws to CPU 1, each server's ws-bench runs on "
            "the other core"
            if a.pin
            else ", unpinned"
        )
        + f". Against each: {a.holders:,} idle holders for the whole run, and churn cycles of "
        f"`sessions` ({a.workers} workers, {a.step_secs:g} s), a `hold` of {a.churn_n:,} "
        "connections over one path per cycle (echo / error / broadcast, each with close / "
        f"reset, in turn) and paced `broadcast` ({a.bcast_c} connections, 4 rooms, 1/s each, "
        f"{a.step_secs:g} s). RSS, open fds and `ws_connections` sampled every 10 s; a baseline "
        "sample after each whole cycle, when only the holders are open. The slope is a "
        "least-squares fit over the baselines after the first cycle (the warm-up), over those of "
        "the second half alone (a warm-up that levels off is not a leak), and over every sample "
        "after the first minute for comparison.",
        "",
        f"![RSS and fds over time]({stem}.png)",
        "",
        "| server | idle | first → last baseline | slope (baselines) | slope (baselines, "
        "second half) | slope (all samples) "
        "| peak | after (holders gone) | fds idle / between cycles / peak / after | cycles "
        "| connections opened | sessions | failed handshakes | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sums:
        lines.append(
            f"| {s['target']} | {mib(s['idle_rss'])} | {mib(s['first_baseline'])} → "
            f"{mib(s['last_baseline'])} | {slope(s['slope_baselines'])} | "
            f"{slope(s['slope_second_half'])} | "
            f"{slope(s['slope_all'])} | {mib(s['peak_rss'])} | {mib(s['after_rss'])} | "
            f"{s['idle_fds']} / {s['last_baseline_fds']} / {s['max_fds']} / {s['after_fds']} | "
            f"{s['cycles']} | {s['connections_opened']:,} | {s['sessions']:,} | "
            f"{s['failed_handshakes']} | {s['errors']} |"
        )
    problems = [r for r in rows if r["kind"] in ("bench-error", "bench-timeout")]
    lines += ["", f"ws-bench runs that failed or timed out: {len(problems)}."]
    for r in problems[:10]:
        lines.append(f"- {r['target']} {r['label']}: {r['kind']} {r.get('stderr', '')[:300]!r}")
    lines += ["", "```json", json.dumps(sums, indent=1), "```", ""]
    return "\n".join(lines)


# The settings a report states, kept in the JSON lines' first row.
META = ("minutes", "pin", "holders", "churn_n", "workers", "bcast_c", "step_secs", "servers")


def write_report(
    rows: list[dict], a: argparse.Namespace, out: Path, stem: str, targets: list[str]
) -> None:
    plot(rows, targets, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(report(a, rows, targets, stem))
    print(f"soak: wrote {out / stem}.md, .png and .jsonl", file=sys.stderr)


def render(jsonl: Path, a: argparse.Namespace) -> None:
    """The report and plot again from a soak's JSON lines, with the settings its meta row
    recorded (a soak written before the meta row existed takes the command line's)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    for r in rows:
        if r["kind"] == "meta":
            for k in META:
                setattr(a, k, r[k])
    targets = [t for t in a.servers.split() if any(r["target"] == t for r in rows)]
    write_report(rows, a, jsonl.parent, jsonl.stem, targets)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--servers", default="rust-ws python-ws")
    p.add_argument("--bench", default=str(ROOT / "target/release/ws-bench"))
    p.add_argument("--rust-bin", default=str(ROOT / "target/release/rust-ws"))
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    p.add_argument("--rust-port", type=int, default=28110)
    p.add_argument("--py-port", type=int, default=28111)
    p.add_argument("--pin", type=int, default=1)
    p.add_argument("--holders", type=int, default=2000, help="idle connections held throughout")
    p.add_argument("--churn-n", type=int, default=2000, help="connections per churn hold")
    p.add_argument("--workers", type=int, default=8, help="sessions workers")
    p.add_argument("--bcast-c", type=int, default=200, help="connections per churn broadcast")
    p.add_argument("--step-secs", type=float, default=15.0, help="seconds per timed churn step")
    p.add_argument("--settle-secs", type=float, default=5.0)
    p.add_argument(
        "--render",
        metavar="JSONL",
        help="only write the report and plot again from a soak's JSON lines (its settings too)",
    )
    a = p.parse_args()
    if a.render:
        render(Path(a.render), a)
        return
    if not (0.5 <= a.minutes <= 24 * 60):
        sys.exit("soak.py: --minutes must be from 0.5 to 1440")
    for path in (a.bench, a.rust_bin):
        if not os.access(path, os.X_OK):
            sys.exit(f"soak.py: {path} is not built: cargo build --release -p rust-ws -p ws-bench")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    a.pin = a.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    a.quick = False
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # The servers' logs stay out of the results directory.
    a.work = tempfile.mkdtemp(prefix="wslab-soak-")
    stem = f"soak-{time.strftime('%Y-%m-%d', time.gmtime())}"
    targets = a.servers.split()
    sink = Sink(out / f"{stem}.jsonl")
    sink.write({"kind": "meta", "target": "", "date": stem[5:], **{k: getattr(a, k) for k in META}})
    servers: list[Server] = []
    try:
        cpus = [str(i % 2) for i in range(len(targets))]
        for name, cpu in zip(targets, cpus, strict=True):
            servers.append(Server(name, a, {}, cpu=cpu))
        soaks = [Soak(s, cpu, a, sink) for s, cpu in zip(servers, cpus, strict=True)]
        for s in soaks:
            s.start()
        t0 = time.monotonic()
        while any(s.is_alive() for s in soaks):
            left = a.minutes * 60 - (time.monotonic() - t0)
            status = ", ".join(f"{s.server.name} cycle {s.cycles}" for s in soaks)
            print(f"soak: {status}; about {fmt_secs(left + 15)} left", file=sys.stderr)
            for s in soaks:
                s.join(timeout=60 / len(soaks))
    finally:
        for s in servers:
            s.stop()
        sink.close()
    errors = [f"{s.server.name}: {s.error}" for s in soaks if s.error]
    write_report(sink.rows, a, out, stem, targets)
    print(f"soak: server logs in {a.work}", file=sys.stderr)
    if errors:
        sys.exit("soak.py: " + "; ".join(errors))


if __name__ == "__main__":
    main()
