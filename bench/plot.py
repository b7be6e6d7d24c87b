"""Pictures and the report section for the sweeps, from `bench/sweep.py`'s JSON lines.

    python bench/plot.py --data D-sweeps.jsonl --meta D-sweeps-meta.json --outdir DIR --prefix D

Writes one PNG per sweep into DIR as `<prefix>-<sweep>.png` (both servers on the same axes, log
scales across decades, steps where ws-bench saturated its core drawn hollow with a red edge, SLOs
as dashed lines) and `<prefix>-sweeps.md`, the markdown section `bench/run.sh` appends to the
report: a table per sweep, the plot, the budgets with a verdict each, and the knee and capacity
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib import ticker

COLORS = {"rust-ws": "#c0392b", "python-ws": "#2c6fbb"}
# The report's typography, spelled out so the linter doesn't take them for typos of x and -.
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"


# ---- reading -----------------------------------------------------------------------------------


def load(data: Path, meta_file: Path | None) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    meta = json.loads(meta_file.read_text()) if meta_file and meta_file.exists() else {}
    return rows, meta


def of(rows: list[dict], sweep: str, server: str) -> list[dict]:
    return sorted(
        (r for r in rows if r["sweep"] == sweep and r["target"] == server), key=lambda r: r["x"]
    )


def lat(r: dict, q: str) -> float | None:
    v = (r.get("latency") or {}).get(f"{q}_us")
    return v / 1000 if v is not None else None  # ms


def thr(r: dict) -> float | None:
    if r.get("broadcast"):
        return r["broadcast"]["deliveries_per_s"]
    if r["mode"] == "hold":
        return r.get("conn_per_s")
    return r.get("req_per_s")


def server_cpu(r: dict) -> float | None:
    if r.get("server_cpu_user_pct") is not None:
        return r["server_cpu_user_pct"] + (r.get("server_cpu_sys_pct") or 0)
    return r.get("server_cpu_total_pct")


def failures(r: dict) -> int:
    return sum((r.get("connect_failures") or {}).values()) + sum((r.get("errors") or {}).values())


def kib(b: float | None) -> str:
    return "-" if b is None else f"{b / 1024:.2f} KiB"


def mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 1048576:.1f} MiB"


def num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f} ms" if x < 100 else f"{x:,.0f} ms")


# ---- drawing -----------------------------------------------------------------------------------


def series(
    ax,
    rows: list[dict],
    server: str,
    y,
    label: str | None = None,
    style: str = "-",
    positive: bool = True,
):
    """One server's line, its saturated steps drawn hollow with a red edge. `positive`: drop
    zeros (they can't go on a log axis)."""
    pts = [(r["x"], y(r), r.get("client_saturated", False)) for r in rows]
    pts = [p for p in pts if p[1] is not None and (p[1] > 0 or not positive)]
    if not pts:
        return
    c = COLORS.get(server, "gray")
    ax.plot(
        [p[0] for p in pts], [p[1] for p in pts], style, color=c, marker="o", label=label or server
    )
    sat = [p for p in pts if p[2]]
    if sat:
        ax.scatter(
            [p[0] for p in sat],
            [p[1] for p in sat],
            s=90,
            facecolors="white",
            edgecolors="red",
            linewidths=2,
            zorder=5,
        )


def compact(v: float, _pos=None) -> str:
    """Tick labels: 0.1, 20, 3 k, 2 M (not powers of ten, not SI prefixes below 1)."""
    if v >= 1e6:
        return f"{v / 1e6:g} M"
    if v >= 1e3:
        return f"{v / 1e3:g} k"
    return f"{v:g}"


def finish(fig, axes, path: Path, title: str, any_sat: bool) -> None:
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        # "2 k" rather than powers of ten on log axes.
        for axis, scale, lim in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            if scale == "log":
                axis.set_major_formatter(ticker.FuncFormatter(compact))
                # Less than about a decade shown: label the minor ticks too, or there would be
                # one label or none.
                short = lim[0] > 0 and lim[1] / lim[0] < 20
                axis.set_minor_formatter(
                    ticker.FuncFormatter(compact) if short else ticker.NullFormatter()
                )
                if short:
                    axis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 5)))
        handles, labels = ax.get_legend_handles_labels()
        if any_sat:
            handles.append(
                plt.Line2D(
                    [],
                    [],
                    marker="o",
                    color="white",
                    markeredgecolor="red",
                    markeredgewidth=2,
                    markersize=9,
                    linestyle="",
                )
            )
            labels.append("ws-bench saturated (a floor)")
        if handles:
            ax.legend(handles, labels, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slo_line(ax, y: float, text: str) -> None:
    ax.axhline(y, color="black", linestyle="--", linewidth=1)
    ax.annotate(text, xy=(0.01, y), xycoords=("axes fraction", "data"), fontsize=8, va="bottom")


# ---- the report --------------------------------------------------------------------------------


def table(rows: list[dict], cols: list[tuple[str, object]]) -> str:
    out = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(f(r)) for _, f in cols) + " |")
    return "\n".join(out)


COMMON = [
    ("p50", lambda r: ms(lat(r, "p50"))),
    ("p95", lambda r: ms(lat(r, "p95"))),
    ("p99", lambda r: ms(lat(r, "p99"))),
    ("max", lambda r: ms(lat(r, "max"))),
    ("server cpu", lambda r: f"{server_cpu(r):.0f}%" if server_cpu(r) is not None else "-"),
    ("server max rss", lambda r: mib(r.get("server_max_rss"))),
    (
        "ws-bench cpu",
        lambda r: (
            f"{r['client_cpu_pct']:.0f}%" + (" ⚠ saturated" if r.get("client_saturated") else "")
        ),
    ),
    ("failures", failures),
]


@dataclass
class Sweeps:
    """What every sweep's plot shares: the data, where the plots go, and what the knee and
    capacity sweeps find for the budgets."""

    rows: list[dict]
    meta: dict
    servers: list[str]
    outdir: Path
    prefix: str
    slo_e: float
    slo_b: float
    figs: dict[str, str] = field(default_factory=dict)
    knees: dict[str, dict[str, float | None]] = field(default_factory=dict)
    caps: dict[str, float | None] = field(default_factory=dict)

    def img(self, name: str) -> Path:
        """Where the sweep's plot goes; the report links it by its file name."""
        self.figs[name] = f"{self.prefix}-{name}.png"
        return self.outdir / self.figs[name]

    def saturated(self, sweep: str) -> bool:
        return any(r.get("client_saturated") for r in self.rows if r["sweep"] == sweep)


def plot_conns(c: Sweeps) -> list[str]:
    """1. Connections held: RSS per connection, handshakes/s, idle CPU, RSS at N."""
    rows, meta, servers = c.rows, c.meta, c.servers
    md: list[str] = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for s in servers:
        rs = of(rows, "conns", s)
        series(axes[0][0], rs, s, lambda r: (r["hold"].get("bytes_per_conn") or 0) / 1024)
        series(axes[0][1], rs, s, lambda r: r.get("conn_per_s"))
        series(axes[1][0], rs, s, lambda r: r["hold"].get("idle_cpu_pct"), positive=False)
        series(axes[1][1], rs, s, lambda r: (r["hold"].get("rss_at_n") or 0) / 1048576)
    slo_line(axes[0][0], 8.0, "rust-ws budget 8 KiB")
    for ax, t in zip(
        axes.flat,
        [
            "server RSS per connection (KiB)",
            "handshakes/s in the storm",
            "server CPU while idle-held, keepalive pings (% of a core)",
            "server RSS at N (MiB)",
        ],
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("connections held")
    axes[0][1].set_yscale("log")
    axes[1][1].set_yscale("log")
    axes[1][0].set_ylim(bottom=0)
    finish(fig, axes.flat, c.img("conns"), "Connections held", c.saturated("conns"))
    md.append("### 1. Connections held\n")
    md.append(f"![connections held]({c.figs['conns']})\n")
    md.append(
        f"Each tier a fresh server (keepalive ping every {meta.get('ping_secs', '?')} s), a "
        "storm of handshakes from two ws-bench helper processes over two loopback source "
        "addresses, held, then closed. "
        + (
            "Quick mode: small tiers only; the full run adds 2.5k, 5k, 10k and the "
            "open-files tier.\n"
            if meta.get("quick")
            else "The top tier is the open-files limit "
            f"({meta.get('fd_cap', '?')} per process, which root can't raise here) less "
            "100: **that cap, not either server, is where this sweep stops on this "
            "machine**; failed handshakes there, if any, are counted by kind in the notes "
            "(`too_many_files` is the cap).\n"
        )
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("held", lambda r: f"{r['hold']['open']:,}"),
        ("per conn", lambda r: kib(r["hold"].get("bytes_per_conn"))),
        ("handshakes/s", lambda r: num(r.get("conn_per_s"))),
        (
            "failed handshakes",
            lambda r: f"{sum(r['connect_failures'].values())}/{r['connect_attempts']}",
        ),
        ("idle cpu", lambda r: f"{r['hold'].get('idle_cpu_pct') or 0:.1f}%"),
        (
            "rss idle → N → after",
            lambda r: (
                f"{mib(r['hold'].get('rss_idle_before'))} → "
                f"{mib(r['hold'].get('rss_at_n'))} → {mib(r['hold'].get('rss_idle_after'))}"
            ),
        ),
        ("handshake p99", lambda r: ms(lat(r, "p99"))),
        ("ws-bench cpu", COMMON[6][1]),
    ]
    md.append(table([r for s in servers for r in of(rows, "conns", s)], cols) + "\n")
    return md


def plot_paths(c: Sweeps) -> list[str]:
    """Memory coming back, by path: RSS after the last end ÷ idle before, per path."""
    rows, servers = c.rows, c.servers
    md: list[str] = []
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = sorted({r["label"].removeprefix("path-") for r in rows if r["sweep"] == "paths"})
    w = 0.8 / max(1, len(servers))
    for i, s in enumerate(servers):
        ys = []
        for lab in labels:
            r = next(
                (
                    r
                    for r in rows
                    if r["sweep"] == "paths" and r["target"] == s and r["label"] == f"path-{lab}"
                ),
                None,
            )
            h = (r or {}).get("hold") or {}
            a, b = h.get("rss_idle_after"), h.get("rss_idle_before")
            ys.append(a / b if a and b else 0)
        ax.bar([j + i * w for j in range(len(labels))], ys, w, label=s, color=COLORS.get(s, "gray"))
    ax.set_xticks([j + w * (len(servers) - 1) / 2 for j in range(len(labels))], labels)
    slo_line(ax, 2.0, f"budget: ≤ 2{TIMES} idle")
    ax.set_ylabel("RSS 5 s after the last end ÷ idle before")
    finish(fig, [ax], c.img("paths"), "Memory coming back, by path", False)
    md.append("### Memory coming back, by path\n")
    md.append(f"![memory by path]({c.figs['paths']})\n")
    md.append(
        "Each path a fresh server: connections opened as a storm, each sent one message "
        "(`echo`: a valid echo; `error`: a short non-JSON text, answered with an error; "
        "`broadcast`: a broadcast in a room of its own), held, then ended with a close "
        "handshake (`close`) or an RST (`reset`, SO_LINGER 0). rust-ws runs two worker "
        "threads (`ROCKET_WORKERS=2`, as on two unpinned cores) though pinned to one core, "
        "so blocks freed by another thread than their owner are part of every path.\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("path", lambda r: r["label"][5:]),
        ("held", lambda r: f"{r['hold']['open']:,}"),
        ("per conn", lambda r: kib(r["hold"].get("bytes_per_conn"))),
        (
            "rss idle → N → after",
            lambda r: (
                f"{mib(r['hold'].get('rss_idle_before'))} → "
                f"{mib(r['hold'].get('rss_at_n'))} → {mib(r['hold'].get('rss_idle_after'))}"
            ),
        ),
        ("after ÷ idle", after_idle),
        ("ws_connections after", lambda r: r["hold"].get("server_connections_after")),
        ("failures", failures),
    ]
    md.append(
        table(
            [r for s in servers for r in rows if r["sweep"] == "paths" and r["target"] == s],
            cols,
        )
        + "\n"
    )
    return md


def plot_fanout(c: Sweeps) -> list[str]:
    """2. Fan-out size: deliveries/s and latency, with the server's fan-out timer."""
    rows, meta, servers = c.rows, c.meta, c.servers
    md: list[str] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in servers:
        rs = of(rows, "fanout", s)
        series(axes[0], rs, s, thr)
        series(axes[1], rs, s, lambda r: lat(r, "p99"), f"{s} client p99 send→receipt")
        series(
            axes[1],
            rs,
            s,
            lambda r: ((r["broadcast"].get("server_fanout") or {}).get("p99_us") or 0) / 1000,
            f"{s} server fan-out timer p99",
            ":",
        )
    axes[0].set_title("deliveries/s", fontsize=10)
    axes[1].set_title("latency (ms)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("members in the one room")
    finish(
        fig,
        axes,
        c.img("fanout"),
        "Fan-out size (paced, same offered deliveries/s)",
        c.saturated("fanout"),
    )
    md.append("### 2. Fan-out size\n")
    md.append(f"![fan-out]({c.figs['fanout']})\n")
    md.append(
        "One room, paced so that every size is offered "
        f"{meta.get('fanout_deliveries', 0):,.0f} deliveries/s. Client latency is each "
        "broadcast's scheduled send time to its receipt by each member; the server's "
        "`ws_broadcast_duration_seconds` (scraped before and after) times enqueueing the "
        "fan-out only, not the network or the member's read.\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("members", lambda r: r["broadcast"]["members"]),
        ("deliveries/s", lambda r: num(thr(r))),
        (
            "delivered",
            lambda r: f"{r['broadcast']['delivered_total']}/{r['broadcast']['expected']}",
        ),
        (
            "server fan-out mean / p99",
            lambda r: (
                lambda t: f"{t['mean_us'] or 0:.0f} µs / {t['p99_us'] or 0:.0f} µs" if t else "-"
            )(r["broadcast"].get("server_fanout")),
        ),
        *COMMON,
    ]
    md.append(table([r for s in servers for r in of(rows, "fanout", s)], cols) + "\n")
    md.append(fanout_story(rows, servers) + "\n")
    return md


def plot_msgsize(c: Sweeps) -> list[str]:
    """3. Message size: echo req/s and MB/s."""
    rows, servers = c.rows, c.servers
    md: list[str] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in servers:
        rs = of(rows, "msgsize", s)
        series(axes[0], rs, s, lambda r: r.get("req_per_s"))
        series(axes[1], rs, s, lambda r: r["echo"]["sent_mb_per_s"], f"{s} requests MB/s")
    axes[0].set_title("echo req/s (closed loop)", fontsize=10)
    axes[1].set_title("MB/s of requests", fontsize=10)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("request size on the wire (bytes)")
    finish(fig, axes, c.img("msgsize"), "Message size", c.saturated("msgsize"))
    md.append("### 3. Message size\n")
    md.append(f"![message size]({c.figs['msgsize']})\n")
    md.append(
        "Closed-loop echo with requests of 64 B, 1 KiB, 16 KiB and 64 KiB on the wire. The "
        "protocol caps `text` at 4,096 characters (PROTOCOL.md §3), so past that the request "
        "carries `text` of 4,096 characters plus a `pad` field, which the protocol ignores "
        '("anything else: ignored"): the server reads, reassembles and parses every byte, '
        "and its reply carries the 4,096-character text only. The 64 KiB request is exactly "
        "65,536 bytes, the default `WS_MAX_MESSAGE_BYTES`. Errors would show in `failures`.\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("bytes", lambda r: f"{r['echo']['msg_bytes']:,}"),
        ("req/s", lambda r: num(r.get("req_per_s"))),
        ("MB/s in requests", lambda r: f"{r['echo']['sent_mb_per_s']:.1f}"),
        ("MB/s in replies", lambda r: f"{r['echo']['recv_mb_per_s']:.1f}"),
        *COMMON,
    ]
    md.append(table([r for s in servers for r in of(rows, "msgsize", s)], cols) + "\n")
    return md


def plot_knee(c: Sweeps, sweep: str, slo: float, what: str) -> list[str]:
    """4. Offered load, open loop: latency against the SLO and achieved against offered;
    records each server's knee for the budgets."""
    rows, servers = c.rows, c.servers
    md: list[str] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in servers:
        rs = of(rows, sweep, s)
        series(axes[0], rs, s, lambda r: lat(r, "p99"), f"{s} p99")
        series(axes[0], rs, s, lambda r: lat(r, "p50"), f"{s} p50", ":")
        series(axes[1], rs, s, thr)
        c.knees.setdefault(what, {})[s] = best(rs, lambda r: lat(r, "p99"), slo)
    xs = [r["x"] for r in rows if r["sweep"] == sweep]
    axes[1].plot(
        [min(xs), max(xs)], [min(xs), max(xs)], "--", color="gray", label="offered = achieved"
    )
    slo_line(axes[0], slo, f"SLO p99 {slo:g} ms")
    unit = "requests/s" if what == "echo" else "deliveries/s"
    axes[0].set_title("latency from scheduled send time (ms)", fontsize=10)
    axes[1].set_title(f"achieved {unit}", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"offered {unit}")
    finish(fig, axes, c.img(sweep), f"Offered load, {what} (open loop)", c.saturated(sweep))
    md.append(f"### 4. Offered load: {what}\n")
    md.append(f"![knee {what}]({c.figs[sweep]})\n")
    md.append(
        f"Open loop: the offered rate is sent on a fixed schedule whatever the server does, "
        f"and latency runs from each message's scheduled send time, so waiting to be sent "
        f"counts (no coordinated omission). A server's steps stop two past the SLO "
        f"(p99 ≤ {slo:g} ms).\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        (f"offered {unit}", lambda r: num(r["x"])),
        (f"achieved {unit}", lambda r: num(thr(r))),
        (
            "behind",
            lambda r: (
                "yes"
                if (
                    (r.get("echo") or r.get("broadcast") or {}).get("skipped")
                    or (r.get("echo") or {}).get("missing")
                )
                else "-"
            ),
        ),
        *COMMON,
    ]
    md.append(table([r for s in servers for r in of(rows, sweep, s)], cols) + "\n")
    return md


def plot_capacity(c: Sweeps) -> list[str]:
    """5. Capacity under an SLO: one room growing; records each server's capacity for the
    budgets."""
    rows, meta, servers, slo_b = c.rows, c.meta, c.servers, c.slo_b
    md: list[str] = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    rtt = lambda r: ((r["broadcast"].get("own_rtt") or {}).get("p95_us") or 0) / 1000  # noqa: E731
    for s in servers:
        rs = of(rows, "capacity", s)
        series(axes[0], rs, s, rtt, f"{s} p95 round trip")
        series(axes[1], rs, s, thr)
        c.caps[s] = best(rs, rtt, slo_b)
    slo_line(axes[0], slo_b, f"SLO p95 {slo_b:g} ms")
    axes[0].set_title("p95 broadcast round trip (ms)", fontsize=10)
    axes[1].set_title("deliveries/s", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients in the one room")
    finish(
        fig,
        axes,
        c.img("capacity"),
        f"Capacity: one room, every client {meta.get('capacity_rate', '?')} broadcasts/s",
        c.saturated("capacity"),
    )
    md.append("### 5. Capacity under an SLO\n")
    md.append(f"![capacity]({c.figs['capacity']})\n")
    md.append(
        f"Hashrocket's websocket-shootout method: one room grows in steps, every client sends "
        f"{meta.get('capacity_rate', '?')} broadcasts/s, and the round trip is a sender's own "
        f"broadcast from scheduled send to its return. Capacity = the largest step whose p95 "
        f"round trip is ≤ {slo_b:g} ms.\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("clients", lambda r: r["x"]),
        ("deliveries/s", lambda r: num(thr(r))),
        ("p95 round trip", lambda r: ms(rtt(r))),
        *COMMON,
    ]
    md.append(table([r for s in servers for r in of(rows, "capacity", s)], cols) + "\n")
    return md


# ---- several nodes -----------------------------------------------------------------------------


def reach_pct(r: dict) -> float | None:
    """Deliveries received ÷ owed over the members that stayed (ws-bench's reach), in percent."""
    b = r.get("broadcast") or {}
    return 100 * b["reach_received"] / b["reach_expected"] if b.get("reach_expected") else None


def reach_text(r: dict) -> str:
    b = r.get("broadcast") or {}
    if not b.get("reach_expected"):
        return "-"
    if b["reach_received"] == b["reach_expected"]:
        return "100%"
    return f"⚠ {reach_pct(r):.1f}%"


def order_text(r: dict) -> str:
    b = r.get("broadcast") or {}
    bad = [
        f"{b.get(k, 0)} {what}"
        for k, what in (
            ("seq_violations", "out of order"),
            ("seq_gaps", "skipped"),
            ("seq_disagreements", "disagreeing"),
        )
        if b.get(k)
    ]
    return "⚠ " + ", ".join(bad) if bad else ("ok" if b else "-")


def spread(r: dict) -> str:
    return "/".join(str(n.get("conns", 0)) for n in r.get("nodes") or []) or "-"


def nodes_cpu_us(r: dict) -> float | None:
    """The nodes' CPU (user + system, all nodes) per delivery received, in µs: their local
    fan-out plus, with a broker, their side of it (publishing, reading the subscription)."""
    b, cpu = r.get("broadcast") or {}, server_cpu(r)
    if cpu is None or not b.get("delivered_total") or not r.get("cpu_window_s"):
        return None
    return 1e6 * cpu / 100 * r["cpu_window_s"] / b["delivered_total"]


def redis_cpu_us(r: dict) -> float | None:
    """Redis's own CPU per delivery received, in µs (read around the whole ws-bench run)."""
    b = r.get("broadcast") or {}
    if r.get("redis_cpu_s") is None or not b.get("delivered_total"):
        return None
    return 1e6 * r["redis_cpu_s"] / b["delivered_total"]


def us(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} µs"


def setup_order(r: dict) -> tuple:
    return (
        r["target"],
        (r.get("broadcast") or {}).get("members") or 0,
        r["broker"] != "none",
        r["x"],
    )


def plot_nodes(c: Sweeps) -> list[str]:
    """6. Nodes: the broadcast closed loop and knee against the number of nodes, with reach and
    order on every row, and server CPU per delivery split into local fan-out and broker."""
    rows = [r for r in c.rows if r["sweep"] == "nodes"]
    closed = sorted((r for r in rows if r.get("kind") == "closed"), key=setup_order)
    knees = [r for r in rows if r.get("kind") == "knee"]
    md: list[str] = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sizes = sorted({(r.get("broadcast") or {}).get("members") or 0 for r in rows})
    styles = dict(zip(sizes, ["-", "--", ":", "-."], strict=False))
    best_of: dict[tuple, float | None] = {}
    for r in knees:
        key = (r["target"], r.get("members"), r["broker"], r["x"])
        best_of.setdefault(key, None)
    for key in best_of:
        group = [r for r in knees if (r["target"], r.get("members"), r["broker"], r["x"]) == key]
        group = [r for r in group if not (reach_pct(r) or 0) < 100]
        best_of[key] = best(
            [dict(r, x=r["offered"]) for r in group], lambda r: lat(r, "p99"), c.slo_b
        )
    for s in c.servers:
        for m in sizes:
            mine = [r for r in closed if r["target"] == s and r.get("members") == m]
            redis = [r for r in mine if r["broker"] == "redis"]
            label = f"{s}, rooms of {m}"
            series(axes[0][0], redis, s, thr, label, styles[m])
            series(axes[0][1], redis, s, lambda r: lat(r, "p99"), label, styles[m])
            kx = sorted(k[3] for k in best_of if k[:3] == (s, m, "redis"))
            pts = [(x, best_of[(s, m, "redis", x)]) for x in kx]
            pts = [p for p in pts if p[1]]
            if pts:
                axes[1][0].plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    styles[m],
                    marker="o",
                    color=COLORS.get(s, "gray"),
                    label=label,
                )
            for r in [r for r in mine if r["broker"] == "none"]:
                axes[0][0].scatter(
                    [r["x"]],
                    [thr(r) or 0],
                    marker="s",
                    facecolors="none",
                    edgecolors=COLORS.get(s, "gray"),
                    s=70,
                    zorder=4,
                )
                axes[0][1].scatter(
                    [r["x"]],
                    [lat(r, "p99") or 0],
                    marker="s",
                    facecolors="none",
                    edgecolors=COLORS.get(s, "gray"),
                    s=70,
                    zorder=4,
                )
                k = best_of.get((s, m, "none", r["x"]))
                if k:
                    axes[1][0].scatter(
                        [r["x"]],
                        [k],
                        marker="s",
                        facecolors="none",
                        edgecolors=COLORS.get(s, "gray"),
                        s=70,
                        zorder=4,
                    )
    # A run whose broadcasts missed members is no cluster measurement: crossed out in red.
    bad = [r for r in closed if reach_pct(r) is not None and reach_pct(r) != 100]
    for k, y in ((0, thr), (1, lambda r: lat(r, "p99"))):
        pts = [(r["x"], y(r)) for r in bad if y(r)]
        if pts:
            axes[0][k].scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="x",
                color="red",
                s=110,
                zorder=6,
                label="reach < 100%",
            )
    # CPU per delivery, rooms of the largest size: local fan-out (the same server without a
    # broker), the nodes' extra with a broker, and Redis's own.
    m = max(sizes) if sizes else 0
    bars = [r for r in closed if r.get("members") == m]
    labels, local, extra, red = [], [], [], []
    for r in bars:
        base = next(
            (
                b
                for b in bars
                if b["target"] == r["target"] and b["broker"] == "none" and b["x"] == 1
            ),
            None,
        )
        n_cpu, b_cpu = nodes_cpu_us(r), nodes_cpu_us(base) if base else None
        if n_cpu is None:
            continue
        lo = min(n_cpu, b_cpu) if b_cpu is not None else n_cpu
        labels.append(f"{r['target']}\n{r['setup']}")
        local.append(lo)
        extra.append(n_cpu - lo)
        red.append(redis_cpu_us(r) or 0)
    ax = axes[1][1]
    if labels:
        xs = range(len(labels))
        ax.bar(xs, local, color="#7f8c8d", label="local fan-out (no-broker baseline)")
        ax.bar(xs, extra, bottom=local, color="#e67e22", label="broker, on the nodes")
        ax.bar(
            xs,
            red,
            bottom=[a + b for a, b in zip(local, extra, strict=True)],
            color="#8e44ad",
            label="broker: Redis",
        )
        ax.set_xticks(list(xs), labels, fontsize=7, rotation=30, ha="right")
    axes[0][0].set_title("closed loop: deliveries/s (□ = no broker)", fontsize=10)
    axes[0][1].set_title("closed loop: p99 send→receipt (ms)", fontsize=10)
    axes[1][0].set_title(f"knee: most offered deliveries/s with p99 ≤ {c.slo_b:g} ms", fontsize=10)
    ax.set_title(f"server CPU per delivery (µs), rooms of {m}", fontsize=10)
    for a_ in (axes[0][0], axes[0][1], axes[1][0]):
        a_.set_xscale("log", base=2)
        a_.set_yscale("log")
        a_.set_xlabel("nodes")
        a_.set_xlim(0.8, 5)
    finish(
        fig,
        [axes[0][0], axes[0][1], axes[1][0], ax],
        c.img("nodes"),
        "Nodes on one Redis: broadcast",
        c.saturated("nodes"),
    )
    meta = c.meta
    md.append("### 6. Nodes\n")
    broken = [
        r
        for r in rows
        if (reach_pct(r) is not None and reach_pct(r) != 100) or order_text(r).startswith("⚠")
    ]
    if broken:
        md.append(
            f"**⚠ Reach or order failed in {len(broken)} of {len(rows)} runs** "
            + "("
            + "; ".join(
                f"{r['target']} {r['setup']}, rooms of {r.get('members')}, {r['label']}: "
                f"reach {reach_text(r)}, order {order_text(r)}"
                for r in broken[:6]
            )
            + ("; …" if len(broken) > 6 else "")
            + "). A broadcast that misses members is not a measurement of a cluster: these "
            "rows' throughput is not comparable.\n"
        )
    else:
        md.append(f"Reach was 100% and the order check clean in all {len(rows)} runs.\n")
    md.append(f"![nodes]({c.figs['nodes']})\n")
    md.append(
        f"Each setup is a fresh Redis (no persistence) and fresh nodes, pinned to CPUs "
        f"{meta.get('node_cpus', '?')} together, Redis included; ws-bench on "
        f"{meta.get('node_client_cpus', '?')}"
        + (
            " (with 2 cores the nodes share one core: more nodes there measure the broker's "
            "cost, not added capacity)"
            if meta.get("cores") == 2
            else ""
        )
        + ". Every room has members on every node (ws-bench puts a room's k-th member on node "
        "k mod nodes). Reach = deliveries received ÷ owed, exact, over members that stayed "
        "connected; order = seq out of order, skipped, and members whose (seq, broadcast) "
        "pairs disagree with the rest of their room's. CPU per delivery: the nodes' CPU over "
        "ws-bench's window ÷ deliveries received; Redis's CPU over the whole run ÷ the same "
        "deliveries. The split charges the broker everything above the same server's one-node "
        "no-broker run at the same room size.\n"
    )
    cols = [
        ("server", lambda r: r["target"]),
        ("setup", lambda r: r["setup"]),
        ("members", lambda r: r.get("members")),
        ("spread", spread),
        ("deliveries/s", lambda r: num(thr(r))),
        ("sends/s per node", lambda r: num((r.get("req_per_s") or 0) / max(1, r["x"]))),
        ("reach", reach_text),
        ("order", order_text),
        ("nodes CPU/delivery", lambda r: us(nodes_cpu_us(r))),
        ("Redis CPU/delivery", lambda r: us(redis_cpu_us(r))),
        (
            "publish p50 / p99",
            lambda r: (
                lambda t: f"{t['p50_us'] or 0:.0f} / {t['p99_us'] or 0:.0f} µs" if t else "-"
            )((r.get("broadcast") or {}).get("broker_publish")),
        ),
        ("Redis RSS", lambda r: mib(r.get("redis_rss"))),
        *COMMON,
    ]
    md.append("Closed loop:\n")
    md.append(table(closed, cols) + "\n")
    kcols = [
        ("server", lambda r: r[0]),
        ("members", lambda r: r[1]),
        ("broker", lambda r: r[2]),
        ("nodes", lambda r: f"{r[3]:g}"),
        (f"knee (deliveries/s, p99 ≤ {c.slo_b:g} ms, reach 100%)", lambda r: num(best_of[r])),
    ]
    md.append("Knee (open loop, offered deliveries/s rising until two steps past the SLO):\n")
    md.append(
        table(sorted(best_of, key=lambda k: (k[0], k[1] or 0, k[2] != "none", k[3])), kcols) + "\n"
    )
    md.append(nodes_budgets(closed) + "\n")
    return md


def nodes_budgets(closed: list[dict]) -> str:
    """The broker's budgets: in rooms of 100, at most 25% more server CPU per delivery than
    without it; a node's publishes pipelined, so its broadcast rate is above 1 ÷ publish RTT."""
    out = ["Budgets (rooms of 100 members):\n"]
    for r in closed:
        if r.get("members") != 100 or r["broker"] != "redis":
            continue
        base = next(
            (
                b
                for b in closed
                if b["target"] == r["target"]
                and b.get("members") == 100
                and b["broker"] == "none"
                and b["x"] == 1
            ),
            None,
        )
        n, b0, red = nodes_cpu_us(r), nodes_cpu_us(base) if base else None, redis_cpu_us(r)
        if n is None or not b0:
            continue
        if reach_pct(r) != 100:
            out.append(
                f"- ❌ {r['target']} {r['setup']}: not judged, reach {reach_text(r)} "
                "(a broadcast that misses members costs less and proves nothing)."
            )
            continue
        nodes_only = 100 * (n / b0 - 1)
        with_redis = 100 * ((n + (red or 0)) / b0 - 1)
        ok = "✅" if with_redis <= 25 else "❌"
        out.append(
            f"- {ok} {r['target']} {r['setup']}: server CPU per delivery {nodes_only:+.0f}% "
            f"on the nodes, {with_redis:+.0f}% with Redis's own (budget: ≤ +25%)."
        )
        t = (r.get("broadcast") or {}).get("broker_publish") or {}
        per_node = (r.get("req_per_s") or 0) / max(1, r["x"])
        if t.get("p50_us"):
            cap = 1e6 / t["p50_us"]
            ok = "✅" if per_node > 2 * cap else "❌"
            out.append(
                f"  - {ok} publishes pipelined: {per_node:,.0f} broadcasts/s per node against "
                f"1 ÷ publish p50 = {cap:,.0f}/s (budget: well above, here > 2{TIMES})."
            )
    if len(out) == 1:
        out.append("- not judged: no run in rooms of 100 on Redis with a baseline beside it.")
    return "\n".join(out)


def plot_multicore(c: Sweeps) -> list[str]:
    """7. The fair multi-core row: the same two CPUs for every setup, echo, broadcast and
    sessions, with what each setup costs in memory."""
    rows = [r for r in c.rows if r["sweep"] == "multicore"]
    setups = list(dict.fromkeys(r["setup"] for r in rows))
    modes = ["echo", "broadcast", "sessions"]
    unit = {"echo": "requests/s", "broadcast": "deliveries/s", "sessions": "sessions/s"}
    md: list[str] = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for ax, mode in zip(axes, modes, strict=True):
        ys = [
            next((thr(r) or 0 for r in rows if r["setup"] == s and r["mode"] == mode), 0)
            for s in setups
        ]
        colors = [COLORS.get(s.split(":")[0], "gray") for s in setups]
        ax.bar(range(len(setups)), ys, color=colors)
        for k, s in enumerate(setups):
            r = next((r for r in rows if r["setup"] == s and r["mode"] == mode), None)
            if r is not None and r.get("client_saturated"):
                ax.bar([k], [ys[k]], facecolor="none", edgecolor="red", linewidth=2)
        ax.set_xticks(range(len(setups)), [s.replace(": ", "\n") for s in setups], fontsize=7)
        ax.set_title(f"{mode}: {unit[mode]}", fontsize=10)
    finish(
        fig,
        list(axes),
        c.img("multicore"),
        "The same two CPUs, three setups",
        c.saturated("multicore"),
    )
    meta = c.meta
    md.append("### 7. The fair multi-core row\n")
    md.append(f"![multicore]({c.figs['multicore']})\n")
    md.append(
        f"Every setup on CPUs {meta.get('multicore_cpus', '?')} (Redis too); ws-bench "
        f"{meta.get('multicore_client_cpus', '?')}"
        + (
            ": on this 2-core machine the client shares the servers' cores, so every figure "
            "here is a floor and the setups are compared with the same handicap"
            if meta.get("multicore_client_cpus") == "unpinned"
            else ""
        )
        + ". Memory is the sum of every process's peak RSS over the run (each node's), plus "
        "Redis's.\n"
    )
    cols = [
        ("setup", lambda r: r["setup"]),
        ("run", lambda r: r["mode"]),
        ("throughput", lambda r: f"{num(thr(r))} {unit.get(r['mode'], '')}"),
        ("spread", spread),
        ("reach", reach_text),
        (
            "memory (all processes)",
            lambda r: mib((r.get("server_max_rss") or 0) + (r.get("redis_rss") or 0)),
        ),
        *COMMON,
    ]
    md.append(
        table(sorted(rows, key=lambda r: (modes.index(r["mode"]), setups.index(r["setup"]))), cols)
        + "\n"
    )
    return md


def plot_hundredk(c: Sweeps) -> list[str]:
    """8. 100,000 connections: one room over every node, held idle, then broadcasts; the time
    until the last member had each, reach, memory per connection, CPU of the whole and Redis's."""
    rows = [r for r in c.rows if r["sweep"] == "hundredk"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        f = r.get("fanout") or {}
        lasts = [(b.get("last_us") or 0) / 1000 for b in f.get("broadcasts", [])]
        ax1.plot(
            range(1, len(lasts) + 1),
            lasts,
            "o-",
            color=COLORS.get(r["target"]),
            label=f"{r['target']} ({r['conns_opened']:,} members)",
        )
    ax1.set_xlabel("broadcast")
    ax1.set_ylabel("until the last member had it (ms)")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    names = [r["target"] for r in rows]
    per_conn = [((r.get("hold") or {}).get("bytes_per_conn") or 0) / 1024 for r in rows]
    ax2.bar(range(len(rows)), per_conn, color=[COLORS.get(t, "gray") for t in names])
    ax2.set_xticks(range(len(rows)), names)
    ax2.set_ylabel("server RSS per connection, all nodes (KiB)")
    finish(fig, [ax1, ax2], c.img("hundredk"), "One room over every node", c.saturated("hundredk"))

    def cpu(r: dict, window: str, part: str) -> str:
        v = ((r.get("fanout") or {}).get(window) or {}).get(part)
        return "-" if v is None else f"{v:.1f}%"

    def last(r: dict, q: str) -> str:
        v = (r.get("fanout") or {}).get(q)
        return ms(None if v is None else v / 1000)

    cols = [
        ("server", lambda r: r["target"]),
        ("nodes", lambda r: str(len(r["nodes"]))),
        ("members open / asked", lambda r: f"{r['conns_opened']:,} / {r['connections']:,}"),
        ("failed handshakes", lambda r: f"{failures(r)} of {r['connect_attempts']:,}"),
        ("spread", spread),
        ("reach", reach_text),
        ("order", order_text),
        (
            "last member p50 / p99 / max",
            lambda r: " / ".join(last(r, q) for q in ("last_p50_us", "last_p99_us", "last_max_us")),
        ),
        ("per conn (all nodes)", lambda r: kib((r.get("hold") or {}).get("bytes_per_conn"))),
        ("nodes RSS at N", lambda r: mib((r.get("hold") or {}).get("rss_at_n"))),
        (
            "idle CPU: nodes / clients / Redis / whole",
            lambda r: " / ".join(
                cpu(r, "idle", k)
                for k in ("nodes_total_pct", "clients_pct", "broker_pct", "total_pct")
            ),
        ),
        ("broadcasting: Redis CPU", lambda r: cpu(r, "busy", "broker_pct")),
        ("Redis RSS", lambda r: mib((r.get("fanout") or {}).get("broker_rss_at_n"))),
        ("stopped by", lambda r: r.get("stopped_by", "")),
    ]
    md = ["### 8. 100,000 connections on this machine\n", f"![hundredk]({c.figs['hundredk']})\n"]
    md.append(
        f"`ws-bench fanout`: every member in ONE room, member g on node g mod nodes, held by "
        f"helper processes over several loopback source addresses (no process may hold more than "
        f"{c.meta.get('fd_cap', '?'):,} descriptors on this machine); held idle with keepalive "
        f"every {c.meta.get('ping_secs_hundredk', '?')} s (idle CPU of the whole: every node, "
        "every ws-bench process, Redis), then broadcasts from one more connection on node 1, a "
        "few seconds apart: the time until the LAST member had each (p50/p99/max over the "
        "broadcasts), reach exact over every member. Per conn = the nodes' RSS with every "
        "member held, less before any, over the members.\n"
    )
    md.append(table(rows, cols) + "\n")
    bad = [
        r
        for r in rows
        if (r.get("broadcast") or {}).get("reach_received")
        != (r.get("broadcast") or {}).get("reach_expected")
        or failures(r)
    ]
    if bad:
        md.append(
            f"**⚠ {len(bad)} of {len(rows)} runs missed a member or a handshake**: "
            + "; ".join(f"{r['target']}: {(r.get('notes') or [''])[0]}" for r in bad)
            + "\n"
        )
    return md


# Each sweep's plot and report section, in the report's order; a sweep with no rows is left out.
SWEEPS: dict[str, Callable[[Sweeps], list[str]]] = {
    "conns": plot_conns,
    "paths": plot_paths,
    "fanout": plot_fanout,
    "msgsize": plot_msgsize,
    "knee-echo": lambda c: plot_knee(c, "knee-echo", c.slo_e, "echo"),
    "knee-broadcast": lambda c: plot_knee(c, "knee-broadcast", c.slo_b, "broadcast"),
    "capacity": plot_capacity,
    "nodes": plot_nodes,
    "multicore": plot_multicore,
    "hundredk": plot_hundredk,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--meta", type=Path)
    p.add_argument("--outdir", required=True, type=Path)
    p.add_argument("--prefix", required=True)
    args = p.parse_args()
    d = args.outdir
    d.mkdir(parents=True, exist_ok=True)
    rows, meta = load(args.data, args.meta)
    c = Sweeps(
        rows=rows,
        meta=meta,
        servers=meta.get("servers") or sorted({r["target"] for r in rows}),
        outdir=d,
        prefix=args.prefix,
        slo_e=meta.get("slo_echo_ms", 50.0),
        slo_b=meta.get("slo_broadcast_ms", 250.0),
    )
    md: list[str] = []
    for sweep, plot in SWEEPS.items():
        if any(r["sweep"] == sweep for r in rows):
            md += plot(c)
    md.insert(0, budgets(rows, c.servers, c.knees, c.caps, c.slo_e, c.slo_b))
    md.insert(0, "## Sweeps\n")
    (d / f"{args.prefix}-sweeps.md").write_text("\n".join(md))
    print(f"wrote {d / (args.prefix + '-sweeps.md')} and {len(c.figs)} plots", file=sys.stderr)


def after_idle(r: dict) -> str:
    a, b = r["hold"].get("rss_idle_after"), r["hold"].get("rss_idle_before")
    return f"{a / b:.2f}{TIMES}" if a and b else "-"


def best(rs: list[dict], y, slo: float) -> float | None:
    """The largest x whose figure is within the SLO (and whose run kept up)."""
    ok = [
        r["x"]
        for r in rs
        if y(r) is not None
        and 0 < y(r) <= slo
        and not ((r.get("echo") or r.get("broadcast") or {}).get("skipped"))
    ]
    return max(ok) if ok else None


def fanout_story(rows: list[dict], servers: list[str]) -> str:
    """Whether the server's fan-out timer and the client's latency tell one story, in words."""
    lines = []
    for s in servers:
        for r in of(rows, "fanout", s):
            t = r["broadcast"].get("server_fanout") or {}
            c99, s99 = lat(r, "p99"), (t.get("p99_us") or 0) / 1000
            if c99 is None or not t:
                continue
            share = s99 / c99 if c99 else 0
            if share < 0.05:
                lines.append(
                    f"{s}, {r['x']:,.0f} members: the server's fan-out p99 "
                    f"({s99:.3f} ms) is {share:.0%} of the client's p99 ({c99:.2f} ms): "
                    "the time goes to writing and delivering, not to enqueueing."
                )
            else:
                lines.append(
                    f"{s}, {r['x']:,.0f} members: fan-out p99 {s99:.3f} ms of the "
                    f"client's {c99:.2f} ms ({share:.0%}): enqueueing is a visible share."
                )
    return "How the two timers compare: " + (" ".join(lines) if lines else "no data.")


def budgets(rows, servers, knees, caps, slo_e, slo_b) -> str:
    out = [
        "### Budgets of the sweeps\n",
        "| budget | rust-ws | python-ws | verdict |",
        "|---|---|---|---|",
    ]
    conns = {s: of(rows, "conns", s) for s in servers}
    rw = conns.get("rust-ws", [])
    per = [r["hold"].get("bytes_per_conn") for r in rw if r["hold"].get("bytes_per_conn")]
    if per:
        lo, hi = min(per), max(per)
        spread = max(abs(x - per[0]) / per[0] for x in per)
        ok = all(abs(x - per[0]) / per[0] <= 0.10 for x in per) and hi <= 8192
        why = (
            ""
            if ok
            else (" (over 8 KiB)" if hi > 8192 else f" (varies {spread:.0%} from the first tier)")
        )
        py = [
            r["hold"].get("bytes_per_conn")
            for r in conns.get("python-ws", [])
            if r["hold"].get("bytes_per_conn")
        ]
        out.append(
            f"| per-connection RSS within ±10% from the first tier to the top, ≤ 8 KiB | "
            f"{kib(lo)}{DASH}{kib(hi)} | {kib(min(py)) + DASH + kib(max(py)) if py else '-'} | "
            f"{'**met**' if ok else '**missed**' + why} |"
        )
    fails = {s: sum(sum(r["connect_failures"].values()) for r in conns.get(s, [])) for s in servers}
    if rw:
        out.append(
            f"| 0 failed handshakes at every tier (rust-ws; python-ws stated) | "
            f"{fails.get('rust-ws', '-')} | {fails.get('python-ws', '-')} | "
            f"{'**met**' if fails.get('rust-ws') == 0 else '**missed**'} |"
        )
    # Broadcast deliveries/s with ws-bench unsaturated: the highest achieved by an unsaturated
    # step of the broadcast knee sweep, for each server. A server that still kept up at the
    # sweep's top offered rate wasn't pushed to its ceiling, and the ratio says nothing then.
    kb = {
        s: [r for r in of(rows, "knee-broadcast", s) if not r.get("client_saturated")]
        for s in servers
    }
    top = {s: max((thr(r) for r in kb[s]), default=None) for s in servers}

    def kept_up_at_top(s: str) -> bool:
        rs = of(rows, "knee-broadcast", s)
        return bool(rs) and not over(rs[-1]) and thr(rs[-1]) >= 0.9 * rs[-1]["x"]

    def over(r: dict) -> bool:
        b = r.get("broadcast") or {}
        p99 = (r.get("latency") or {}).get("p99_us", 0) / 1000
        return bool(b.get("skipped")) or p99 > slo_b

    if top.get("rust-ws") and top.get("python-ws"):
        k = top["rust-ws"] / top["python-ws"]
        sat = any(r.get("client_saturated") for r in of(rows, "knee-broadcast", "rust-ws"))
        if kept_up_at_top("python-ws"):
            verdict = (
                f"not shown ({k:.2f}{TIMES}): python-ws kept up with the sweep's highest "
                "offered rate, so neither ceiling was reached; raise the sweep's top rate"
            )
        else:
            verdict = f"{'**met**' if k >= 5 else '**missed**'} ({k:.2f}{TIMES})"
            if sat or kept_up_at_top("rust-ws"):
                verdict += (
                    " (rust-ws's figure is a floor: ws-bench saturated at a higher step, "
                    "or rust-ws kept up with the top offered rate)"
                )
        out.append(
            f"| rust-ws broadcast deliveries/s, ws-bench unsaturated, ≥ 5{TIMES} python-ws"
            f" | {num(top['rust-ws'])} | {num(top['python-ws'])} | {verdict} |"
        )
    for what, slo in [("echo", slo_e), ("broadcast", slo_b)]:
        kn = knees.get(what)
        if kn:
            a, b = kn.get("rust-ws"), kn.get("python-ws")
            ratio = f"{a / b:.2f}{TIMES}" if a and b else "-"
            unit = "req/s" if what == "echo" else "deliveries/s"
            floor = ""
            for s, v in (("rust-ws", a), ("python-ws", b)):
                top_x = max((r["x"] for r in of(rows, "knee-" + what, s)), default=None)
                if v and v == top_x:
                    floor += f" ({s} met the SLO at the sweep's top step: its figure is a floor)"
            out.append(
                f"| knee, {what}: highest offered {unit} with p99 ≤ {slo:g} ms | "
                f"{num(a)} | {num(b)} | ratio {ratio}{floor} |"
            )
    if caps:
        a, b = caps.get("rust-ws"), caps.get("python-ws")
        ratio = f"{a / b:.2f}{TIMES}" if a and b else "-"
        floor = ""
        for s, v in (("rust-ws", a), ("python-ws", b)):
            top_x = max((r["x"] for r in of(rows, "capacity", s)), default=None)
            if v and v == top_x:
                floor += f" ({s} met the SLO at the sweep's largest step: its figure is a floor)"
        out.append(
            f"| capacity: most clients in one room with p95 round trip ≤ {slo_b:g} ms | "
            f"{num(a)} | {num(b)} | ratio {ratio}{floor} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
