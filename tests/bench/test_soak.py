"""bench/soak.py end to end at a toy size: the real servers, the real ws-bench, real sockets.

The soak's figures come from a 30-minute run (bench/results/soak-<date>.md); this checks the
command works from a fresh clone: both servers soaked at once, a sample every 10 s, baselines with
only the holders open, the servers back to their idle descriptors after, the report and the plot
written, and no ws-bench run failing."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOLDERS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_short_soak_of_both_servers(tmp_path: Path) -> None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    cmd = [
        sys.executable,
        str(ROOT / "bench/soak.py"),
        "--minutes",
        "0.9",
        "--out",
        str(tmp_path),
        "--bench",
        str(target / "ws-bench"),
        "--rust-bin",
        str(target / "rust-ws"),
        "--python",
        sys.executable,
        "--rust-port",
        str(free_port()),
        "--py-port",
        str(free_port()),
        "--holders",
        str(HOLDERS),
        "--churn-n",
        "60",
        "--workers",
        "2",
        "--bcast-c",
        "12",
        "--step-secs",
        "4",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    (md,) = tmp_path.glob("soak-*.md")
    assert (tmp_path / f"{md.stem}.png").stat().st_size > 10_000
    rows = [json.loads(line) for line in (tmp_path / f"{md.stem}.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "meta" and rows[0]["holders"] == HOLDERS
    assert not [r for r in rows if r["kind"] in ("bench-error", "bench-timeout")], rows
    for server in ("rust-ws", "python-ws"):
        mine = [r for r in rows if r["target"] == server]
        idle = next(r for r in mine if r["kind"] == "idle")
        samples = [r for r in mine if r["kind"] == "sample"]
        assert len(samples) >= 5, samples
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(samples)]
        assert all(9.0 <= g <= 11.5 for g in gaps), gaps
        baselines = [r for r in mine if r["kind"] == "baseline"]
        assert baselines, mine
        assert all(b["ws_connections"] == HOLDERS for b in baselines), baselines
        after = next(r for r in mine if r["kind"] == "after")
        assert after["ws_connections"] == 0 and after["fds"] == idle["fds"], (idle, after)
        benches = [r for r in mine if r["kind"] == "bench"]
        assert {"sessions", "broadcast", "holders"} <= {b["label"] for b in benches}
        assert any(b["label"].startswith("hold-") for b in benches)
        assert all(not b["connect_failures"] for b in benches), benches
    text = md.read_text()
    assert "| rust-ws |" in text and "| python-ws |" in text and f"{md.stem}.png" in text
