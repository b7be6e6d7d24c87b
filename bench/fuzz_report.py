"""Writes bench/results/fuzz-<date>.md from one bench/fuzz.sh run: the libFuzzer logs of both
fuzzers, their corpora and crash artifacts, and the differences between the twins that the live
differential (python-ws/fuzz/fuzz_protocol.py) and the corpus replay (python-ws/fuzz/twins.py)
recorded. bench/fuzz.sh runs it last; see bench/README.md, "Fuzzing".

Every number is read from the run's own output; nothing here is typed in.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# libFuzzer's status lines: "#123 pulse  cov: 45 ft: 67 corp: 8/1024b ...".
STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", re.M)
STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
SHOW_BYTES = 300


def run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError as err:
        return f"unavailable ({err})"


def locked(lock: Path, name: str) -> str:
    m = re.search(rf'name = "{re.escape(name)}"\nversion = "([^"]+)"', lock.read_text())
    return m.group(1) if m else "?"


def show(data: bytes) -> str:
    """A reproducer for a Markdown table: Python's repr of the bytes, cut to SHOW_BYTES."""
    text = repr(data[:SHOW_BYTES]) + (f" … ({len(data)} bytes)" if len(data) > SHOW_BYTES else "")
    return "`" + text.replace("`", "\\x60").replace("|", "\\x7c") + "`"


def fuzzer_row(name: str, log: Path, corpus: Path, artifacts: Path, rc: int) -> dict:
    text = log.read_text(errors="replace") if log.exists() else ""
    statuses = STATUS.findall(text)
    inited = next((s for s in statuses if s[1] == "INITED"), None)
    last = statuses[-1] if statuses else None
    stats = {k: int(v) for k, v in STAT.findall(text)}
    files = [p for p in corpus.iterdir() if p.is_file()] if corpus.exists() else []
    crashes = sorted(p for p in artifacts.iterdir()) if artifacts.exists() else []
    return {
        "name": name,
        "rc": rc,
        "execs": stats.get("number_of_executed_units", int(last[0]) if last else 0),
        "exec_s": stats.get("average_exec_per_sec", 0),
        "cov0": inited[2] if inited else "?",
        "ft0": inited[3] if inited else "?",
        "cov": last[2] if last else "?",
        "ft": last[3] if last else "?",
        "corpus_files": len(files),
        "corpus_bytes": sum(p.stat().st_size for p in files),
        "new_units": stats.get("new_units_added", 0),
        "rss_mb": stats.get("peak_rss_mb", 0),
        "crashes": crashes,
        "panic": next(
            (ln.strip() for ln in text.splitlines() if "panicked at" in ln or "Traceback" in ln),
            None,
        ),
    }


def findings(folder: Path) -> list[dict]:
    out = []
    for p in sorted(folder.glob("*.json")) if folder.exists() else []:
        rec = json.loads(p.read_text())
        rec["data"] = p.with_suffix(".txt").read_bytes()
        out.append(rec)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--minutes", required=True)
    ap.add_argument("--rust-rc", type=int, default=0)
    ap.add_argument("--python-rc", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    w = a.work
    rows = [
        fuzzer_row(
            "rust-ws (cargo-fuzz, libFuzzer + ASan)",
            w / "rust.log",
            w / "corpus-rust",
            w / "artifacts-rust",
            a.rust_rc,
        ),
        fuzzer_row(
            "python-ws (atheris)",
            w / "python.log",
            w / "corpus-python",
            w / "artifacts-python",
            a.python_rc,
        ),
    ]
    lock = ROOT / "rust-ws/fuzz/Cargo.lock"
    seeds = len(list((w / "seeds").iterdir()))
    lines = [
        f"# Fuzzing the twins' message path, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f'Written by `bench/fuzz.sh` (`MINUTES={a.minutes}`); see bench/README.md, "Fuzzing".',
        f"Each fuzzer ran for up to {a.minutes} min at `nice -n 10` on a shared 2-core machine, so",
        "executions per second are low and not a measure of either server.",
        "",
        "Versions: "
        + "; ".join(
            [
                run("rustc", "--version"),
                run("cargo", "fuzz", "--version"),
                f"libfuzzer-sys {locked(lock, 'libfuzzer-sys')}",
                f"serde_json {locked(lock, 'serde_json')}",
                f"Python {platform.python_version()}",
                f"atheris {metadata.version('atheris')}",
                f"orjson {metadata.version('orjson')}",
            ]
        )
        + ".",
        "",
        f"Seeds: {seeds} message texts from tests/conformance/test_errors.py, given to both.",
        "",
        "| fuzzer | executions | exec/s | cov (edges) seeds → end | features seeds → end "
        "| corpus | crashes | exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['execs']:,} | {r['exec_s']:,} | {r['cov0']} → {r['cov']} "
            f"| {r['ft0']} → {r['ft']} | {r['corpus_files']} files, {r['corpus_bytes']:,} B "
            f"| {len(r['crashes'])} | {r['rc']} |"
        )
    lines += [
        "",
        "cov and features are libFuzzer's counters: for rust-ws, LLVM edges of rust-ws's protocol",
        "module, serde_json and the harness; for python-ws, atheris's Python bytecode edges of",
        "python_ws/protocol.py only (orjson is a native extension and is not instrumented).",
        "",
        "## Crashes",
        "",
    ]
    any_crash = False
    for r in rows:
        for c in r["crashes"]:
            any_crash = True
            lines.append(f"- {r['name']}: `{c.name}`: {show(c.read_bytes())}")
            if r["panic"]:
                lines.append(f"  - first report line: `{r['panic']}`")
    if not any_crash:
        lines.append("None: no oracle failed, nothing panicked, ASan reported nothing.")

    live, replay = findings(w / "findings-python"), findings(w / "findings-replay")
    probes = findings(w / "findings-probes")
    lines += ["", "## Differences between the twins", ""]
    diffs = {}
    for source, recs in (("live", live), ("replay", replay), ("probes", probes)):
        for rec in recs:
            if "rust" in rec:
                d = diffs.setdefault(rec["kind"], {"sources": [], "rec": rec})
                d["sources"].append(source)
                if len(rec["data"]) < len(d["rec"]["data"]):
                    d["rec"] = rec
    if diffs:
        lines += [
            "Each row is one kind of difference (rust-ws's answer vs python-ws's), with the",
            "shortest input that shows it; `live` = atheris asked rust-ws's `classify` about every",
            "input it tried, `replay` = both corpora replayed through both twins, `probes` = the",
            "hand-written inputs in python-ws/fuzz/probes/ (not found by fuzzing).",
            "",
            "| difference | found by | shortest reproducer | rust-ws | python-ws |",
            "|---|---|---|---|---|",
        ]
        for kind, d in sorted(diffs.items()):
            rec = d["rec"]
            lines.append(
                f"| {kind} | {', '.join(d['sources'])} | {show(rec['data'])} "
                f"| `{json.dumps(rec['rust'])[:200]}` | `{json.dumps(rec['python'])[:200]}` |"
            )
    else:
        lines.append("None: every input classified the same by both twins.")
    for name, log in (("Replay", "replay.log"), ("Probes", "probes.log")):
        if (w / log).exists():
            lines += ["", f"{name}: " + (w / log).read_text().splitlines()[0] + "."]

    other = [rec for rec in live if "rust" not in rec]
    lines += ["", "## Other findings", ""]
    if other:
        for rec in other:
            info = {k: v for k, v in rec.items() if k not in ("kind", "input", "data")}
            lines.append(f"- {rec['kind']}: {show(rec['data'])}: `{json.dumps(info)[:300]}`")
    else:
        lines.append("None.")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
