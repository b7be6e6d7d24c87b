"""bench/sweep.py's hundredk sweep end to end at a toy size (400 members over 2 nodes of each
server on a real Redis, held by 2 ws-bench helper processes over 2 loopback source addresses),
then bench/plot.py's section and plot.

The pipeline the 100,000-connection run takes on a quiet machine: `ws-bench fanout` spreads one
room over every node and over its helpers, times every broadcast to its last member, and counts
reach exactly. Both twins are nodes (PROTOCOL.md §5): every member has every broadcast, once, in
one order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_quick_hundredk_sweep_times_the_last_member(tmp_path: Path) -> None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    sweep = [
        sys.executable,
        str(ROOT / "bench/sweep.py"),
        *("--quick", "--out", str(tmp_path), "--sweeps", "hundredk"),
        *("--servers", "rust-ws python-ws", "--python", sys.executable),
        *("--bench", str(target / "ws-bench"), "--rust-bin", str(target / "rust-ws")),
    ]
    p = subprocess.run(sweep, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ws-bench failed" not in p.stderr, p.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "sweeps.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in rows) == ["python-ws", "rust-ws"]
    for r in rows:
        assert r["sweep"] == "hundredk" and r["mode"] == "fanout", r
        # Exact counts: every member opened, the sender's handshake counted too, none failed.
        assert (r["conns_opened"], r["connect_attempts"]) == (400, 401), r
        assert not r["connect_failures"], r
        assert [n["conns"] for n in r["nodes"]] == [200, 200], r["nodes"]
        f, b = r["fanout"], r["broadcast"]
        assert f["procs"] == 2 and f["source_addrs"] == 2 and len(f["broadcasts"]) == 3, f
        assert all(x["error"] is None for x in f["broadcasts"]), f
        assert f["idle"]["broker_pct"] is not None and f["broker_rss_at_n"] > 0, f
        assert f["idle"]["total_pct"] is not None, f
        assert r["hold"]["bytes_per_conn"] > 0, r["hold"]
        assert b["reach_expected"] == 3 * 400 and b["members_dropped"] == 0, b
        assert f["stray"] == 0, f
        # Both twins are nodes (PROTOCOL §5): every member has every broadcast, in one order.
        assert all(n["broker"] == "redis" for n in r["nodes"]), r["nodes"]
        assert b["reach_received"] == b["reach_expected"], r["notes"]
        assert (b["seq_violations"], b["seq_gaps"], b["seq_disagreements"]) == (0, 0, 0), b
        assert [x["delivered"] for x in f["broadcasts"]] == [400] * 3, f
        assert 0 < f["last_p50_us"] <= f["last_p99_us"] <= f["last_max_us"], f
        assert f["last_max_us"] == max(x["last_us"] for x in f["broadcasts"]), f

    plot = [
        sys.executable,
        str(ROOT / "bench/plot.py"),
        *("--data", str(tmp_path / "sweeps.jsonl"), "--meta", str(tmp_path / "sweeps-meta.json")),
        *("--outdir", str(tmp_path), "--prefix", "t"),
    ]
    p = subprocess.run(plot, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "t-hundredk.png").stat().st_size > 10_000
    md = (tmp_path / "t-sweeps.md").read_text()
    assert "### 8. 100,000 connections on this machine" in md, md
    for server in ("rust-ws", "python-ws"):
        assert f"| {server} | 2 | 400 / 400 | 0 of 401 | 200/200 | 100% | ok |" in md, md
