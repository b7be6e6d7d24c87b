"""The k6 scripts under k6/scripts/, run by the real k6 1.1.0 against both real servers.

- every script runs every scenario in SMOKE mode and exits 0 with its thresholds enforced, and
  what k6 says it did matches what the server it targeted counted;
- both.js lays the two servers out in consecutive windows by default;
- a script pointed at a dead port exits non-zero and says what to start, and both.js with one
  server down ends its stdout with the verdict naming that server, not thresholds of the other;
- the end-of-test summary leaves out rows that are all zero (per-code error rows and the like);
- `SCENARIO=all SMOKE=1 both.js` is scheduled for at most 40 s, and the durations README.md and
  k6/README.md state are what `k6 inspect` schedules;
- a smoke run pushes to a real Prometheus by remote write, tagged by server, trends as native
  histograms in seconds.

The servers are started once for the module (tests/harness.py); each k6 run takes ~5-20 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import uuid
from datetime import datetime

import pytest
from harness import free_port, http_get, running_prometheus, running_server
from k6run import REPO, k6_binary, run_k6, server_env
from wire import parse_metrics

SCENARIOS = ("sessions", "chat", "echo", "hold")
SCRIPT_SERVERS = {
    "rust.js": ("rust",),
    "python.js": ("python",),
    "both.js": ("rust", "python"),
}
# k6 output that must never appear: a handler threw, or k6 complained about the script.
BAD_OUTPUT = re.compile(r"level=error|GoError|TypeError|ReferenceError|InvalidStateError")


@pytest.fixture(scope="module")
def servers():
    with running_server("rust") as rust, running_server("python") as python:
        yield {"rust": rust, "python": python}


@pytest.fixture()
def smoke_env(servers):
    # A server that died during an earlier test would turn every later run into a setup() abort;
    # say so with its log instead.
    for server in servers.values():
        assert server.proc.poll() is None, (
            f"{server.name} exited with {server.proc.returncode}:\n{server.log()}"
        )
    return {"SMOKE": "1", **server_env(servers["rust"], servers["python"])}


def samples(server, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called name on the server's /metrics, parsed by the
    suite's own Prometheus text parser (tests/wire.py)."""
    found = [
        (labels, value)
        for family in parse_metrics(server.metrics_text()).values()
        for sample_name, labels, value in family.samples
        if sample_name == name
    ]
    assert found, f"{server.name} /metrics has no {name}"
    return found


def counter(server, name: str) -> float:
    """A label-less sample from the server's /metrics."""
    [(labels, value)] = samples(server, name)
    assert labels == {}, (server.name, name, labels)
    return value


def wait_connections_zero(server, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    value = counter(server, "ws_connections")
    while value != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        value = counter(server, "ws_connections")
    return value


def epoch(rfc3339: str) -> float:
    """k6's JSON timestamps (nanosecond fractions, Z or an offset) as Unix seconds."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    base, frac, zone = match.groups()
    when = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return when.timestamp() + float(frac or 0)


def server_counts(servers) -> dict[str, dict[str, float]]:
    """Each server's connections accepted and abnormal ends so far (PROTOCOL.md section 4)."""
    counts = {}
    for kind, server in servers.items():
        counts[kind] = {
            "accepted": counter(server, "all_ws_connections_total"),
            "abnormal": sum(v for _, v in samples(server, "ws_closed_conns_errors_total")),
        }
    return counts


def assert_clean_run(result, servers_run, scenarios=SCENARIOS, servers=None, before=None):
    """Exit 0, every check passed, nothing went wrong; with `servers` and `before` (server_counts()
    taken before the run), also what each server counted agrees with k6."""
    assert result.returncode == 0, result.report()
    assert not BAD_OUTPUT.search(result.output), result.report()
    for server in servers_run:
        for scenario in scenarios:
            tag = f"{{server:{server},scenario:{scenario}}}"
            checks = result.metric(f"checks{tag}")
            assert checks and checks["passes"] > 0, (tag, checks, result.report())
            assert checks["fails"] == 0, (tag, checks, result.report())
            received = result.metric(f"wslab_messages_received{tag}")
            assert received and received["count"] > 0, (tag, received, result.report())
            rtt = result.metric(f"wslab_rtt{tag}")
            assert rtt and rtt["count"] > 0 and 0 < rtt["p(95)"] < 1000, (tag, rtt, result.report())
        if "chat" in scenarios:
            delivery = result.metric(f"wslab_delivery_latency{{server:{server},scenario:chat}}")
            assert delivery and delivery["count"] > 0, delivery
        # Nothing went wrong: no error of any code but k6_dropped_welcome (k6 1.1.0's own defect,
        # which a busy host can trigger in chat/echo/hold; accounted for below).
        errors = result.count(f"wslab_errors{{server:{server}}}")
        dropped = result.count(f"wslab_errors{{server:{server},code:k6_dropped_welcome}}")
        assert errors == dropped, result.report()
        if servers is not None:
            after = server_counts({server: servers[server]})[server]
            accepted = after["accepted"] - before[server]["accepted"]
            # Every connection the server accepted had its welcome seen by k6, or k6 dropped it
            # and the server answered that connection's echo probe: no welcome is unaccounted.
            welcomes = result.count(f"wslab_messages_received{{server:{server},type:welcome}}")
            assert welcomes + dropped == accepted, (server, welcomes, dropped, accepted)
            # k6's defect loses ~1 welcome in 200-1,500 on a busy host; a server that skipped its
            # welcome would look like a drop to the client, on every fleet connection.
            assert dropped <= 0.1 * accepted, (server, dropped, accepted, result.report())
            # Every close was a close handshake for the server too: no abnormal end of any reason.
            abnormal = after["abnormal"] - before[server]["abnormal"]
            assert abnormal == 0, (server, abnormal, result.report())
    # Every close a clean handshake.
    assert result.count("wslab_unclean_closes") == 0, result.report()


# A per-server, per-code row of the end-of-test summary (k6/lib/summary.js), e.g.
# "      {server:rust,code:bad_welcome} ....... 3 (0.5/s)".
CODE_ROW = re.compile(r"^\s+\{server:(\w+),code:(\w+)\} \.* ?(\S+)", re.MULTILINE)


def assert_no_zero_code_rows(result):
    """The summary prints a wslab_errors{server,code} row only for a code that moved."""
    for server, code, shown in CODE_ROW.findall(result.output):
        count = result.count(f"wslab_errors{{server:{server},code:{code}}}")
        assert count > 0, (f"an all-zero row was printed: {server} {code} {shown}", result.output)


def assert_tagged(points, servers_run, scenarios):
    lab_points = [
        p for p in points if p["metric"].startswith(("wslab_", "ws_")) or p["metric"] == "checks"
    ]
    assert lab_points
    bad = [
        p
        for p in lab_points
        if p["tags"].get("server") not in servers_run or p["tags"].get("scenario") not in scenarios
    ]
    assert not bad, bad[:5]
    assert {p["tags"]["server"] for p in lab_points} == set(servers_run)
    assert {p["tags"]["scenario"] for p in lab_points} == set(scenarios)


@pytest.mark.parametrize("script", ["rust.js", "python.js"])
def test_single_server_script_runs_every_scenario(script, servers, smoke_env):
    (kind,) = SCRIPT_SERVERS[script]
    other = "python" if kind == "rust" else "rust"
    before = server_counts(servers)

    result = run_k6(script, {**smoke_env, "SCENARIO": "all", "PARALLEL": "1"}, timeout=120)

    assert_clean_run(result, (kind,), servers=servers, before=before)
    assert_no_zero_code_rows(result)
    assert f"{{server:{kind},code:connect_failed}}" not in result.output, result.output
    # k6's count of sessions is the number of connections the targeted server accepted, and the
    # other server saw none: the numbers are about the server the script names.
    sessions = result.metric("ws_sessions")["count"]
    assert counter(servers[kind], "all_ws_connections_total") - before[kind]["accepted"] == sessions
    assert counter(servers[other], "all_ws_connections_total") == before[other]["accepted"]
    assert wait_connections_zero(servers[kind]) == 0


def test_both_parallel_runs_every_scenario_tagged(servers, smoke_env):
    before = server_counts(servers)
    result = run_k6(
        "both.js",
        {**smoke_env, "SCENARIO": "all", "PARALLEL": "1"},
        timeout=120,
        json_out=True,
    )
    assert_clean_run(result, ("rust", "python"), servers=servers, before=before)
    assert_tagged(result.points, ("rust", "python"), SCENARIOS)
    for server in servers.values():
        assert wait_connections_zero(server) == 0


def test_both_defaults_to_consecutive_windows(servers, smoke_env):
    before = server_counts(servers)
    result = run_k6("both.js", smoke_env, timeout=120, json_out=True)

    assert_clean_run(
        result, ("rust", "python"), scenarios=("sessions",), servers=servers, before=before
    )
    assert_tagged(result.points, ("rust", "python"), ("sessions",))
    times = {"rust": [], "python": []}
    for p in result.points:
        if p["metric"].startswith(("wslab_", "ws_")) or p["metric"] == "checks":
            times[p["tags"]["server"]].append(epoch(p["time"]))
    # Rust's window is over before Python's begins.
    assert max(times["rust"]) < min(times["python"]), (
        max(times["rust"]),
        min(times["python"]),
    )


@pytest.mark.parametrize(
    "script,kind,var",
    [("rust.js", "rust", "RUST_WS_URL"), ("both.js", "python", "PYTHON_WS_URL")],
)
def test_dead_server_fails_fast_saying_what_to_start(script, kind, var, smoke_env):
    port = free_port()
    env = {**smoke_env, var: f"ws://127.0.0.1:{port}/ws"}
    started = time.monotonic()
    result = run_k6(script, env, timeout=60)

    assert result.returncode != 0
    assert time.monotonic() - started < 30
    name = {"rust": "rust-ws", "python": "python-ws"}[kind]
    assert f"{name} is not answering at http://127.0.0.1:{port}/healthz" in result.output
    assert "start it with" in result.output
    # It failed in setup(): no load was generated.
    assert result.metric("ws_sessions") is None or result.metric("ws_sessions")["count"] == 0


def test_one_server_down_ends_with_the_verdict_naming_it(servers, smoke_env):
    """both.js with python-ws down and rust-ws up: the last lines of stdout are the verdict, and it
    names python-ws, what to start and nothing about rust-ws (whose thresholds no load could meet);
    no all-zero error-code row in the summary above it."""
    port = free_port()
    env = {**smoke_env, "PYTHON_WS_URL": f"ws://127.0.0.1:{port}/ws"}
    result = run_k6("both.js", env, timeout=60, apart=True)

    assert result.returncode != 0, result.report()
    lines = result.stdout.rstrip("\n").splitlines()
    verdict = []
    for line in reversed(lines):
        if not line.startswith("wslab: "):
            break
        verdict.insert(0, line)
    assert verdict, f"stdout does not end with wslab: lines:\n{result.stdout}"
    assert verdict[-1].startswith(
        f"wslab: python-ws is not answering at http://127.0.0.1:{port}/healthz "
        f"(PYTHON_WS_URL=ws://127.0.0.1:{port}/ws)"
    ), verdict
    assert "start it with" in verdict[-1], verdict
    assert not [v for v in verdict if "rust" in v or "threshold crossed" in v], verdict
    # No row for any of the ~22 error codes per server: none of them moved.
    assert_no_zero_code_rows(result)
    assert "code:" not in result.stdout, result.stdout


def prom_query(url: str, query: str) -> list[dict]:
    status, _, body = http_get(url + "/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_remote_write_reaches_prometheus_tagged_by_server(smoke_env):
    """With the lab's remote-write settings (compose, deploy/k8s/run): trends as native
    histograms, in seconds; counters as running totals; every series tagged by server."""
    testid = uuid.uuid4().hex[:12]
    # Prometheus 2.42 stores native histograms only behind this flag (3.9+ always does).
    with running_prometheus(
        "global:\n  scrape_interval: 15s\n", flags=["--enable-feature=native-histograms"]
    ) as p:
        prom = p.url
        env = {
            **smoke_env,
            "SCENARIO": "echo",
            "PARALLEL": "1",
            "K6_PROMETHEUS_RW_SERVER_URL": prom + "/api/v1/write",
            "K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM": "true",
        }
        result = run_k6(
            "both.js",
            env,
            args=("-o", "experimental-prometheus-rw", "--tag", f"testid={testid}"),
            timeout=120,
        )
        assert_clean_run(result, ("rust", "python"), scenarios=("echo",))

        sel = f'testid="{testid}"'
        series = prom_query(prom, f'group by (__name__, server) ({{__name__=~"k6_.+", {sel}}})')
        names_by_server: dict[str, set[str]] = {}
        for s in series:
            names_by_server.setdefault(s["metric"].get("server", ""), set()).add(
                s["metric"]["__name__"]
            )
        assert {"rust", "python"} <= set(names_by_server), names_by_server
        for server in ("rust", "python"):
            names = names_by_server[server]
            for name in (
                "k6_wslab_rtt_seconds",
                "k6_ws_connecting_seconds",
                "k6_wslab_messages_received_total",
                "k6_checks_rate",
            ):
                assert name in names, (server, sorted(names))
            assert not any(re.search(r"_p\d+$", n) for n in names), "no percentile gauges"

            # Trends arrive as native histograms in seconds: the histogram holds every round
            # trip of the run, and their sum is the summary's (milliseconds) divided by 1000.
            rtt = result.metric(f"wslab_rtt{{server:{server},scenario:echo}}")
            hist = f'sum(k6_wslab_rtt_seconds{{server="{server}", {sel}}})'
            count = prom_query(prom, f"histogram_count({hist})")
            assert count and float(count[0]["value"][1]) == rtt["count"], (count, rtt)
            total = prom_query(prom, f"histogram_sum({hist})")
            assert float(total[0]["value"][1]) == pytest.approx(
                rtt["avg"] * rtt["count"] / 1000, rel=1e-6
            )

            # Counters arrive as running totals: the last value is the summary's count.
            received = result.metric(f"wslab_messages_received{{server:{server},scenario:echo}}")
            got = prom_query(
                prom,
                "sum(max_over_time(k6_wslab_messages_received_total"
                f'{{server="{server}", {sel}}}[1h]))',
            )
            assert got and float(got[0]["value"][1]) == received["count"], (
                got,
                received,
            )


def test_sessions_on_k6_ws_never_lose_a_welcome(servers, smoke_env):
    # SESSIONS_MODULE=ws: k6/ws registers the handlers before it reads, so no welcome can be
    # dropped (no probe, no k6_dropped_welcome). Its close() resets TCP without waiting for the
    # server's close frame, so the only abnormal end a server may count is send_failed.
    before = server_counts(servers)
    env = {**smoke_env, "SCENARIO": "sessions", "PARALLEL": "1", "SESSIONS_MODULE": "ws"}
    result = run_k6("both.js", env, timeout=120)

    assert_clean_run(result, ("rust", "python"), scenarios=("sessions",))
    for kind, server in servers.items():
        accepted = counter(server, "all_ws_connections_total") - before[kind]["accepted"]
        welcomes = result.count(f"wslab_messages_received{{server:{kind},type:welcome}}")
        assert welcomes == accepted > 0, (kind, welcomes, accepted, result.report())
        assert result.count(f"wslab_errors{{server:{kind},code:k6_dropped_welcome}}") == 0
        reasons = {
            labels["reason"]: v for labels, v in samples(server, "ws_closed_conns_errors_total")
        }
        moved = {r for r, v in reasons.items() if v > 0}
        assert moved <= {"send_failed"}, (kind, reasons)


def test_failing_run_says_which_check_server_and_code(servers, smoke_env):
    # rust.js pointed at python-ws: every welcome names the wrong server, so `welcome received`
    # fails for server=rust with bad_welcome. The output must say that, not only that a
    # threshold was crossed.
    env = {**smoke_env, "SCENARIO": "sessions", "RUST_WS_URL": servers["python"].ws_url}
    result = run_k6("rust.js", env, timeout=120)

    assert result.returncode != 0, result.report()
    failed = result.metric("checks{server:rust,scenario:sessions}")["fails"]
    assert failed > 0, result.report()
    said = [
        "wslab: threshold crossed: checks{server:rust,scenario:sessions} 'rate>=0.99'",
        f"wslab: server=rust scenario=sessions: check 'welcome received' failed {failed} of",
        f"wslab: server=rust: wslab_errors by code: bad_welcome={failed}",
    ]
    for line in said:
        assert line in result.output, (line, result.output)
    report = result.report()
    assert f"server=rust scenario=sessions: check 'welcome received' failed {failed} of" in report
    assert f"server=rust: wslab_errors{{code=bad_welcome}} = {failed}" in report


# --- scheduled durations: what the docs say against what k6 schedules ----------------------------

SMOKE_ALL_BOUND_S = 40  # SCENARIO=all SMOKE=1 both.js: two windows, not eight


def k6_duration_s(text: str) -> float:
    """k6's Go duration ("2m26.1s", "13.05s", "1h2m") in seconds."""
    parts = re.findall(r"([\d.]+)(h|ms|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def scheduled_s(script: str, env: dict[str, str]) -> float:
    """What `k6 inspect` schedules for `script` with `env`: its totalDuration, in seconds."""
    args = [k6_binary(), "inspect", "--execution-requirements"]
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    out = subprocess.run(
        [*args, str(REPO / "k6" / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    ).stdout
    return k6_duration_s(json.loads(out)["totalDuration"])


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the first table whose header row starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def seconds(cell: str) -> int:
    m = re.fullmatch(r"(\d+) s", cell)
    assert m, f"not a duration in seconds: {cell!r}"
    return int(m[1])


def test_smoke_of_every_scenario_is_scheduled_within_the_bound():
    took = scheduled_s("both.js", {"SCENARIO": "all", "SMOKE": "1"})
    assert took <= SMOKE_ALL_BOUND_S, took


def test_documented_durations_match_k6_inspect():
    """k6/README.md's table (every scenario x script x SMOKE) and README.md's window column and
    both.js figures say what `k6 inspect` schedules, to the second."""
    k6_readme = (REPO / "k6" / "README.md").read_text()
    rows = table_rows(k6_readme, "| scenario | rust.js or python.js |")
    assert [r[0] for r in rows] == [f"`{s}`" for s in (*SCENARIOS, "all")], rows
    checked = 0
    for row in rows:
        scenario = row[0].strip("`")
        for cell, script, smoke in [
            (row[1], "rust.js", "0"),
            (row[2], "rust.js", "1"),
            (row[3], "both.js", "0"),
            (row[4], "both.js", "1"),
        ]:
            took = scheduled_s(script, {"SCENARIO": scenario, "SMOKE": smoke})
            assert abs(took - seconds(cell)) < 1, (scenario, script, smoke, took, cell)
            checked += 1
    assert checked == 20

    readme = (REPO / "README.md").read_text()
    for row in table_rows(readme, "| scenario | what it does |"):
        scenario = re.match(r"`(\w+)`", row[0])[1]
        default, smoke = (seconds(c.strip()) for c in row[3].split("/"))
        for cell, flag in [(default, "0"), (smoke, "1")]:
            took = scheduled_s("rust.js", {"SCENARIO": scenario, "SMOKE": flag})
            assert abs(took - cell) < 1, (scenario, flag, took, cell)
    said = re.search(r"`k6 run k6/scripts/both.js` is scheduled for (\d+) s", readme)
    assert said, "README.md no longer states the default both.js duration"
    assert abs(scheduled_s("both.js", {}) - int(said[1])) < 1
    said = re.search(r"`SCENARIO=all SMOKE=1 both.js` is scheduled for (\d+) s", readme)
    assert said, "README.md no longer states the SCENARIO=all SMOKE=1 both.js duration"
    assert abs(scheduled_s("both.js", {"SCENARIO": "all", "SMOKE": "1"}) - int(said[1])) < 1
