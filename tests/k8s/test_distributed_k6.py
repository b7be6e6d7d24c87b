"""A distributed k6 run, as k6-operator makes it, into one real Prometheus, read by the dashboard.

There is no cluster here, so the part that decides whether a distributed run reads right is run
for real: the same script (k6/scripts/both.js, SMOKE=1, SCENARIO=sessions,echo, against both
servers) as three k6 processes started together with exactly the flags k6-operator gives runner
i of 3 (pkg/segmentation, pkg/resources/jobs/runner.go):

    --execution-segment=(i-1)/3:i/3  --execution-segment-sequence=0,1/3,2/3,1
    --tag instance_id=i  --tag testrun_name=wslab

plus the TestRun's `arguments` (-o experimental-prometheus-rw --tag testid=...) and the runner
env of deploy/k8s/run/testrun.yaml (K6_PROMETHEUS_RW_*), each remote-writing on its own into one
Prometheus 2.42 (native histograms on) that also scrapes both real servers with the product's
config and rules (tests/dashboard/dashlib.py). Then the same script once more as one process with
no segment and no instance tag, the way compose or a host runs it.

For each run, every k6 panel query of grafana/dashboards/wslab.json is evaluated at the end of
the run with its `rate(X[$__rate_interval])` replaced by `X`: k6 sends running totals (counters
and native histograms both), so that is the panel's aggregation applied to the whole run. Each
must equal what the runners' own output adds up to (the samples each k6 process wrote with
--out json, cross-checked against its --summary-export):
- sessions, messages, errors, unclean closes, VUs: exactly the sum over runners;
- checks: the lowest runner's pass ratio (k6 exports a ratio, not counts, per runner);
- p95 and p99 of ws_connecting and wslab_rtt: in the same native-histogram bucket as the exact
  percentile over all runners' samples pooled, i.e. within one bucket's width (2^(1/8), 9%).
And the panels as Grafana runs them (range queries, $__rate_interval = 20s) show both servers.

About a minute and a half: two k6 runs of ~20 s each plus start-up.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import free_port, running_server
from k8slib import RUN, objects

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k6"))

from dashlib import (
    CLOSED_PORT_JOBS,
    SERVER_JOBS,
    dashboard_queries,
    finite_values,
    running_prometheus,
    series_server,
    substitute,
    wait_until,
)
from k6run import run_k6

SCRIPT = "both.js"
RUNNERS = 3
K6_QUERIES = [q for q in dashboard_queries() if "k6_" in q.expr]
SERVERS = ("rust", "python")


def operator_flags(index: int, total: int) -> list[str]:
    """What k6-operator adds for runner `index` (1-based) of `total` (pkg/segmentation)."""
    if total == 1:
        return []  # parallelism 1: no segment flags
    part = {0: "0", total: "1"}

    def edge(i: int) -> str:
        return part.get(i, f"{i}/{total}")

    sequence = ",".join(edge(i) for i in range(total + 1))
    return [
        f"--execution-segment={edge(index - 1)}:{edge(index)}",
        f"--execution-segment-sequence={sequence}",
    ]


def the_testrun_spec() -> dict:
    (testrun,) = objects(RUN, "TestRun").values()
    return testrun["spec"]


def runner_env(spec: dict, prom_url: str, rust, python) -> dict[str, str]:
    """The TestRun's runner env, with the in-cluster URLs pointed at this machine's processes."""
    env = {e["name"]: e["value"] for e in spec["runner"]["env"]}
    assert env["K6_PROMETHEUS_RW_SERVER_URL"] == "http://prometheus:9090/api/v1/write"
    assert env["RUST_WS_URL"] == "ws://rust-ws:8000/ws"
    assert env["PYTHON_WS_URL"] == "ws://python-ws:8001/ws"
    env.update(
        {
            "K6_PROMETHEUS_RW_SERVER_URL": f"{prom_url}/api/v1/write",
            "RUST_WS_URL": rust.ws_url,
            "PYTHON_WS_URL": python.ws_url,
            # A smoke-sized run of two scenarios: sessions (arrival rate: sessions and connects)
            # and echo (closed loop: thousands of round trips for the percentiles).
            "SCENARIO": "sessions,echo",
            "SMOKE": "1",
            # Six echo connections on six VUs, so each of three runners gets two: a runner whose
            # segment holds no VU of a scenario does none of it, and fails that scenario's
            # thresholds (k6 evaluates them per process).
            "ECHO_CONNECTIONS": "6",
            "ECHO_SOCKETS_PER_VU": "1",
            # Several samples per series within a short run (k6's default is 5 s).
            "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
        }
    )
    return env


def run_processes(spec: dict, env: dict, testid: str, total: int) -> list:
    """`total` k6 processes started together, as k6-operator's starter does; their results."""
    arguments = shlex.split(spec["arguments"])
    arguments = [a if not a.startswith("testid=") else f"testid={testid}" for a in arguments]

    def one(index: int):
        args = [*operator_flags(index, total), *arguments, "--address", ""]
        if total > 1:
            args += ["--tag", f"instance_id={index}", "--tag", "testrun_name=wslab"]
        return run_k6(SCRIPT, env, args=args, timeout=240, json_out=True)

    with ThreadPoolExecutor(max_workers=total) as pool:
        results = list(pool.map(one, range(1, total + 1)))
    for i, result in enumerate(results, 1):
        assert result.returncode == 0, f"runner {i} of {total} failed:\n{result.output}"
        assert result.points, f"runner {i} wrote no samples"
    return results


# ---------------------------------------------------------------- what the runners say


def counter_sums(results, metric: str, by: tuple[str, ...]) -> dict[tuple, float]:
    out: dict[tuple, float] = defaultdict(float)
    for r in results:
        for p in r.points:
            if p["metric"] == metric:
                out[tuple(p["tags"].get(k) for k in by)] += p["value"]
    return dict(out)


def last_gauge_sum(results, metric: str) -> float:
    """Sum over runners of each one's last value of a gauge (VUs)."""
    total = 0.0
    for r in results:
        values = [p for p in r.points if p["metric"] == metric]
        assert values, metric
        total += max(values, key=lambda p: p["time"])["value"]
    return total


def lowest_check_ratio(results) -> dict[tuple, float]:
    """min over runners (and other tags) of the pass ratio, by (server, check)."""
    per: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, r in enumerate(results):
        for p in r.points:
            if p["metric"] == "checks":
                tags = tuple(sorted(p["tags"].items()))
                per[(i, tags)][0] += p["value"]
                per[(i, tags)][1] += 1
    out: dict[tuple, float] = {}
    for (_i, tags), (passed, n) in per.items():
        t = dict(tags)
        key = (t.get("server"), t.get("check"))
        out[key] = min(out.get(key, 1.0), passed / n)
    return out


def pooled_samples(results, metric: str) -> dict[str, list[float]]:
    """Every sample of a trend from all runners, by server, in seconds."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for p in r.points:
            if p["metric"] == metric:
                out[p["tags"]["server"]].append(p["value"] / 1000)
    return out


def exact_quantile(samples: list[float], q: float) -> float:
    """The sample of rank ceil(q*n): the one whose bucket Prometheus's histogram_quantile picks
    (the first bucket whose cumulative count reaches q * count)."""
    s = sorted(samples)
    return s[max(math.ceil(q * len(s)), 1) - 1]


# ---------------------------------------------------------------- what the dashboard says


def whole_run(expr: str, testid: str) -> str:
    """The panel query over the whole run: rate(X[$__rate_interval]) -> X (running totals)."""
    expr = re.sub(r"rate\((k6_\w+\{[^}]*\})\[\$__rate_interval\]\)", r"\1", expr)
    assert "rate(" not in expr, expr
    return substitute(expr, {"testid": testid})


def panel_values(prom, q, testid: str, at: float) -> dict[tuple, float]:
    body = prom.api("query", {"query": whole_run(q.expr, testid), "time": f"{at:.3f}"})
    assert body["status"] == "success", (q.test_id, body)
    out = {}
    for s in body["data"]["result"]:
        key = tuple(sorted(s["metric"].items()))
        out[key] = float(s["value"][1])
    return out


def by_label(values: dict[tuple, float], *labels: str) -> dict[tuple, float]:
    return {tuple(dict(k).get(label) for label in labels): v for k, v in values.items()}


def bucket_factor(prom, metric: str, testid: str, at: float) -> float:
    """Growth factor of the native histogram's buckets, read from the stored histogram."""
    body = prom.api("query", {"query": f'{metric}{{testid="{testid}"}}', "time": f"{at:.3f}"})
    (sample, *_rest) = body["data"]["result"]
    _ts, hist = sample["histogram"]
    ratios = {round(float(b[2]) / float(b[1]), 9) for b in hist["buckets"] if float(b[1]) > 0}
    assert len(ratios) == 1, ratios
    return ratios.pop()


# ---------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def stack():
    spec = the_testrun_spec()
    with running_server("rust") as rust, running_server("python") as python:
        prom_port = free_port()
        targets = {
            "prometheus": f"127.0.0.1:{prom_port}",
            "rust-ws": f"127.0.0.1:{rust.port}",
            "python-ws": f"127.0.0.1:{python.port}",
            # nothing listens: those jobs stay configured and on loopback
            **{job: f"127.0.0.1:{free_port()}" for job in CLOSED_PORT_JOBS},
        }
        with running_prometheus(prom_port, targets) as prom:

            def servers_up():
                up = prom.query('up{job=~"rust-ws|python-ws"} == 1')
                return {r["metric"]["job"] for r in up} == set(SERVER_JOBS)

            wait_until(servers_up, timeout=30, what="Prometheus to scrape both servers")
            yield {"spec": spec, "prom": prom, "env": runner_env(spec, prom.url, rust, python)}


def do_run(stack, total: int) -> dict:
    testid = f"k8sproof-{total}-{uuid.uuid4().hex[:6]}"
    start = time.time()
    results = run_processes(stack["spec"], stack["env"], testid, total)
    end = time.time()
    prom = stack["prom"]
    # Every runner's last push has landed once the session counts match the runners' own.
    want = sum(counter_sums(results, "ws_sessions", ()).values())
    wait_until(
        lambda: (
            prom.query(f'sum(k6_ws_sessions_total{{testid="{testid}"}})')
            and float(prom.query(f'sum(k6_ws_sessions_total{{testid="{testid}"}})')[0]["value"][1])
            == want
        ),
        timeout=20,
        what="the runners' last remote write",
    )
    at = time.time()
    return {"testid": testid, "results": results, "start": start, "end": end, "at": at}


@pytest.fixture(scope="module")
def runs(stack):
    return {RUNNERS: do_run(stack, RUNNERS), 1: do_run(stack, 1)}


MODES = [RUNNERS, 1]
MODE_IDS = [f"{RUNNERS}-runners", "1-process"]


def query_by_title(title_start: str) -> list:
    found = [q for q in K6_QUERIES if q.panel_title.startswith(title_start)]
    assert found, title_start
    return found


# ---------------------------------------------------------------- the proof


def test_every_k6_panel_is_covered():
    titles = {q.panel_title for q in K6_QUERIES}
    assert titles == {
        "k6 virtual users",
        "WebSocket sessions started per second",
        "Connecting time p95 / p99 (ws_connecting, all runners)",
        "Round trip p95 / p99 (wslab_rtt, all runners)",
        "k6 messages sent and received per second",
        "Checks passed",
        "k6 errors by code (count so far in the run)",
        "Unclean closes by reason (count so far in the run)",
    }, "a new k6 panel needs its expected value in this test"


def test_operator_flags_are_k6_operators():
    assert operator_flags(1, 3) == [
        "--execution-segment=0:1/3",
        "--execution-segment-sequence=0,1/3,2/3,1",
    ]
    assert operator_flags(3, 3)[0] == "--execution-segment=2/3:1"
    assert operator_flags(2, 4)[0] == "--execution-segment=1/4:2/4"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_runners_split_the_work(runs, mode):
    """Each runner did part of the work, and the summary agrees with the samples it wrote."""
    results = runs[mode]["results"]
    for r in results:
        sessions = counter_sums([r], "ws_sessions", ())
        assert sum(sessions.values()) > 0, "a runner with nothing to do proves nothing"
        for server in SERVERS:
            for scenario in ("sessions", "echo"):
                name = f"wslab_messages_received{{server:{server},scenario:{scenario}}}"
                summary = r.metric(name)
                pts = counter_sums([r], "wslab_messages_received", ("server", "scenario"))
                assert summary["count"] == pts.get((server, scenario), 0), name


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize(
    "title, metric, by",
    [
        ("WebSocket sessions started", "ws_sessions", ("server",)),
        ("k6 messages sent and received", "ws_msgs_sent", ("server",)),
        ("k6 messages sent and received", "ws_msgs_received", ("server",)),
        ("k6 errors by code", "wslab_errors", ("server", "code")),
        ("Unclean closes by reason", "wslab_unclean_closes", ("server", "reason")),
    ],
)
def test_count_panels_equal_the_runners_sums(stack, runs, mode, title, metric, by):
    run = runs[mode]
    (q,) = [q for q in query_by_title(title) if f"k6_{metric}_total" in q.expr]
    got = by_label(panel_values(stack["prom"], q, run["testid"], run["at"]), *by)
    want = counter_sums(run["results"], metric, by)
    if len(by) == 2 and not want:
        # No error at all: the panel shows an explicit 0 per server ("none").
        want = {(s, "none"): 0.0 for s in SERVERS}
    print(f"{mode} process(es), {metric}: dashboard {got}, runners {want}")
    assert got == want, f"{q.test_id}: dashboard {got} != runners {want}"
    if metric == "ws_sessions":
        assert set(want) == {(s,) for s in SERVERS} and all(v > 0 for v in want.values())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_vus_panel_equals_the_runners_sum(stack, runs, mode):
    run = runs[mode]
    for q in query_by_title("k6 virtual users"):
        metric = re.search(r"k6_(vus(?:_max)?)\{", q.expr).group(1)
        got = by_label(panel_values(stack["prom"], q, run["testid"], run["at"]), "testid")
        assert got == {(run["testid"],): last_gauge_sum(run["results"], metric)}, q.test_id


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_checks_panel_is_the_lowest_runner(stack, runs, mode):
    run = runs[mode]
    (q,) = query_by_title("Checks passed")
    got = by_label(panel_values(stack["prom"], q, run["testid"], run["at"]), "server", "check")
    want = lowest_check_ratio(run["results"])
    assert got == pytest.approx(want, abs=1e-12), q.test_id
    assert {s for s, _c in want} == set(SERVERS)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("trend", ["ws_connecting", "wslab_rtt"])
def test_percentile_panels_match_all_samples_pooled(stack, runs, mode, trend):
    run = runs[mode]
    prom = stack["prom"]
    factor = bucket_factor(prom, f"k6_{trend}_seconds", run["testid"], run["at"])
    # Schema 3 (k6 asks for a bucket factor of 1.1; client_golang picks 2^(1/8)).
    assert factor == pytest.approx(2 ** (1 / 8), rel=1e-6)
    pooled = pooled_samples(run["results"], trend)
    report = []
    for q in query_by_title({"ws_connecting": "Connecting", "wslab_rtt": "Round trip"}[trend]):
        quantile = float(re.search(r"histogram_quantile\(([0-9.]+),", q.expr).group(1))
        got = by_label(panel_values(prom, q, run["testid"], run["at"]), "server")
        assert set(got) == {(s,) for s in SERVERS}, q.test_id
        for server in SERVERS:
            exact = exact_quantile(pooled[server], quantile)
            estimate = got[(server,)]
            report.append(f"{server} p{quantile * 100:g}: {estimate:.6f} vs {exact:.6f}")
            # Same bucket: within one bucket's growth factor of the exact percentile.
            assert exact / factor <= estimate <= exact * factor, (q.test_id, server, report)
    print(f"{mode} process(es), {trend}: " + "; ".join(report))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_panels_as_grafana_runs_them_show_both_servers(stack, runs, mode):
    run = runs[mode]
    for q in K6_QUERIES:
        expr = substitute(q.expr, {"testid": run["testid"]})
        body = stack["prom"].query_range(expr, run["start"] - 5, run["at"], step="2s")
        assert body["status"] == "success", (q.test_id, body)
        servers = {series_server(s["metric"]) for s in body["data"]["result"] if finite_values(s)}
        if q.panel_title == "k6 virtual users":
            assert body["data"]["result"], q.test_id
        else:
            assert set(SERVER_JOBS) <= servers, (q.test_id, servers)


def test_one_process_and_three_runners_offer_the_same_load(runs):
    """Execution segments split the work without adding or losing any. The echo fleet (fixed VUs
    and sockets) is exactly the same. The sessions scenario (ramping arrival rate) schedules the
    same iterations, but each k6 process may or may not start one due at the very instant its
    scenario ends (one process alone gives 24 or 25 of the 25 due in this shape, seen here), so
    the counts agree to within one iteration per process."""
    three = counter_sums(runs[RUNNERS]["results"], "ws_sessions", ("server", "scenario"))
    one = counter_sums(runs[1]["results"], "ws_sessions", ("server", "scenario"))
    print(f"sessions: {RUNNERS} runners {three}, 1 process {one}")
    assert set(three) == set(one) == {(s, c) for s in SERVERS for c in ("sessions", "echo")}
    for server in SERVERS:
        assert three[(server, "echo")] == one[(server, "echo")] == 6
        assert abs(three[(server, "sessions")] - one[(server, "sessions")]) <= RUNNERS


def test_runner_env_comes_from_the_testrun():
    env = {e["name"]: e["value"] for e in the_testrun_spec()["runner"]["env"]}
    assert env["K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM"] == "true"
    assert os.path.basename(the_testrun_spec()["script"]["localFile"]) == SCRIPT
