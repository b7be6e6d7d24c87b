"""bench/sweep.py's nodes sweep end to end at a toy size: real rust-ws nodes, a real Redis
(Debian's redis-server, started by the sweep on a free port), the real ws-bench spreading every
room over every node, then bench/plot.py's section and plot.

What it holds the sweep to is reach and order (PROTOCOL.md §5): one node, with or without a
broker, delivers every broadcast to every member in one order; two nodes on Redis do too once the
nodes speak §5 (their ws_node_info says broker="redis"). Two nodes that don't (servers from
before §5 ignore WS_BROKER_URL) each serve only their own members, and then the run and the
report must say so: reach below 100%, named, never a quiet number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def reach(r: dict) -> float:
    b = r["broadcast"]
    return b["reach_received"] / b["reach_expected"]


def test_a_quick_nodes_sweep_checks_reach_and_order(tmp_path: Path) -> None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    sweep = [
        sys.executable,
        str(ROOT / "bench/sweep.py"),
        "--quick",
        "--out",
        str(tmp_path),
        "--servers",
        "rust-ws",
        "--sweeps",
        "nodes",
        "--node-rates",
        "1000",
        "--max-nodes",
        "2",
        "--bench",
        str(target / "ws-bench"),
        "--rust-bin",
        str(target / "rust-ws"),
    ]
    p = subprocess.run(sweep, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ws-bench failed" not in p.stderr, p.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "sweeps.jsonl").read_text().splitlines()]
    # 3 setups x rooms of 10 and 100 x (closed loop + one knee step).
    setups = {(r["setup"], r["broadcast"]["members"], r["kind"]) for r in rows}
    assert len(rows) == 12 and len(setups) == 12, setups
    for r in rows:
        assert r["target"] == "rust-ws" and r["sweep"] == "nodes"
        assert not r["connect_failures"], r
        nodes = r["nodes"]
        assert len(nodes) == r["x"], r
        # Every room spans every node, evenly.
        assert {n["conns"] for n in nodes} == {100 // len(nodes)}, nodes
        assert r["broker"] == ("none" if r["setup"] == "1 node, no broker" else "redis")
        assert r["broadcast"]["reach_expected"] > 0
        if r["broker"] == "redis":
            assert r["redis_cpu_s"] >= 0 and r["redis_rss"] > 0, r
        speaks_5 = all(n["broker"] == r["broker"] for n in nodes)
        if r["x"] == 1 or speaks_5:
            assert reach(r) == 1.0, r
            b = r["broadcast"]
            assert (b["seq_violations"], b["seq_gaps"], b["seq_disagreements"]) == (0, 0, 0), b
        else:
            # Nodes that ignore the broker: each broadcast reaches its own node's members only.
            assert reach(r) < 1.0, r
            assert r["notes"][0].startswith("⚠ REACH "), r["notes"]

    plot = [
        sys.executable,
        str(ROOT / "bench/plot.py"),
        "--data",
        str(tmp_path / "sweeps.jsonl"),
        "--meta",
        str(tmp_path / "sweeps-meta.json"),
        "--outdir",
        str(tmp_path),
        "--prefix",
        "t",
    ]
    p = subprocess.run(plot, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "t-nodes.png").stat().st_size > 10_000
    md = (tmp_path / "t-sweeps.md").read_text()
    assert "### 6. Nodes" in md and "| rust-ws | 2 nodes, Redis | 100 | 50/50 |" in md, md
    broken = [r for r in rows if reach(r) < 1.0]
    if broken:
        assert f"**⚠ Reach or order failed in {len(broken)} of 12 runs**" in md, md
    else:
        assert "Reach was 100% and the order check clean in all 12 runs." in md, md
