"""Proof on real data: every query of grafana/dashboards/wslab.json, run against a real Prometheus
that scraped real servers, real nodes on a real Redis, Redis's exporter and real balancers, while
real clients and a real k6 run drove them.

The setup (module fixture `proof`, one Prometheus for the whole module, about a minute):
1. rust-ws and python-ws start natively through tests/harness.py on free loopback ports: the
   single servers of the plain lab. Debian's Prometheus 2.42 starts on a free loopback port with
   --web.enable-remote-write-receiver and a copy of prometheus/prometheus.yml in which only the
   scrape targets differ (generated, never hand-kept: see tests/dashboard/dashlib.py). It already
   knows every target below; those not started yet report up == 0.
2. Window "one target per job": once Prometheus scrapes both single servers, a WebSocket client
   opens a few sessions on each (welcome, broadcasts, echoes) and the window lasts three scrapes.
   Each job has one live target, as in the plain lab (compose without a profile).
3. The scaled lab: Debian's redis-server, two nodes of each kind with WS_BROKER_URL on it (their
   jobs now hold three targets: the single server and two nodes, as compose's scaled profile
   has them), Debian's prometheus-redis-exporter, and one Debian HAProxy per kind in front of its
   two nodes (haproxy/haproxy.cfg itself, static servers in place of Docker's DNS: see dashlib).
4. Once Prometheus scrapes every target, k6 (the pinned .venv/bin/k6) runs k6/scripts/both.js
   through the balancers in smoke mode (SMOKE=1, the default `sessions` scenario, rust then
   python) with `-o experimental-prometheus-rw`, the compose service's remote-write settings
   (trends as native histograms; Prometheus gets --enable-feature=native-histograms) and a unique
   `--tag testid=...`. The push interval is 1 s instead of k6's 5 s so a few-second smoke window
   leaves several samples per series. Every broadcast goes through Redis to all four nodes.
5. After two more scrapes, each panel query is run as Grafana would: through /api/v1/query_range,
   $testid set to this run's id and $__rate_interval to 20s (what Grafana derives from the
   datasource's 5 s timeInterval).

The checks: every query parses; every query that doesn't read cAdvisor returns finite values for
each server it selects (both, or the one a heatmap is for), and Redis's for Redis; queries that
read cAdvisor (which can't run here) parse and select by the compose service label; the panels
that show load show a value above zero for both servers; the server panels work with one target
per job and with three, the per-node views with a line per target named by its node id; the
recording rules and alerts load, evaluate, and none fires on a healthy lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid

import pytest
from dashlib import (
    BALANCER_JOB,
    CADVISOR_LABEL,
    COMPOSE,
    CONTAINER_LABEL,
    PROM_CONFIG,
    REDIS_JOB,
    REPO,
    SERVER_JOBS,
    dashboard_queries,
    expected_servers,
    finite_values,
    generated_prometheus_config,
    is_cadvisor,
    load_yaml,
    running_haproxy,
    running_prometheus,
    running_redis_exporter,
    series_server,
    substitute,
    wait_until,
    without_targets,
)
from harness import KINDS, SERVER_NAMES, free_port, http_get, running_redis, running_server
from websockets.sync.client import connect

K6 = os.environ.get("K6_BIN", str(REPO / ".venv" / "bin" / "k6"))
K6_SCRIPT = REPO / "k6" / "scripts" / "both.js"
QUERIES = dashboard_queries()


def compose_k6_env() -> dict[str, str]:
    """The remote-write settings the compose k6 service uses, so the proof sees the same series."""
    env = load_yaml(COMPOSE)["services"]["k6"]["environment"]
    return {k: str(v) for k, v in env.items() if k.startswith("K6_PROMETHEUS_RW_")}


NODES_PER_KIND = 2


def drive_sessions(ws_url: str, sessions: int = 4, messages: int = 10) -> None:
    """A few real WebSocket sessions: welcome, broadcasts and echoes, each answered."""
    for n in range(sessions):
        with connect(f"{ws_url}?room=dashproof-{n % 2}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            for i in range(messages):
                kind = "broadcast" if i % 2 else "echo"
                ws.send(json.dumps({"type": kind, "user": "dash", "text": f"m{i}"}))
                while json.loads(ws.recv(timeout=10))["type"] != kind:
                    pass  # another session's broadcast in the same room


def wait_ready(url: str) -> None:
    wait_until(lambda: http_get(url + "/readyz")[0] == 200, timeout=30, what=f"{url}/readyz")


@pytest.fixture(scope="module")
def proof():
    testid = f"dashproof-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        single = {kind: stack.enter_context(running_server(kind)) for kind in KINDS}
        prom_port, redis_port, exporter_port = free_port(), free_port(), free_port()
        # The nodes' ports are chosen now, so Prometheus knows every target from the start.
        node_ports = {kind: [free_port() for _ in range(NODES_PER_KIND)] for kind in KINDS}
        targets = {
            "prometheus": [f"127.0.0.1:{prom_port}"],
            **{
                SERVER_NAMES[kind]: [
                    f"127.0.0.1:{single[kind].port}",
                    *(f"127.0.0.1:{p}" for p in node_ports[kind]),
                ]
                for kind in KINDS
            },
            # The balancers' metrics ports are known once they start: filled in below.
            BALANCER_JOB: [],
            REDIS_JOB: [f"127.0.0.1:{exporter_port}"],
            # Nothing listens here: the job stays configured, reports up == 0, stays on loopback.
            "cadvisor": [f"127.0.0.1:{free_port()}"],
        }
        lb_metrics = {kind: free_port() for kind in KINDS}
        targets[BALANCER_JOB] = [f"127.0.0.1:{lb_metrics[kind]}" for kind in KINDS]
        prom = stack.enter_context(running_prometheus(prom_port, targets))

        def singles_scraped():
            up = prom.query('up{job=~"rust-ws|python-ws"} == 1')
            return {r["metric"]["job"] for r in up} == set(SERVER_JOBS)

        wait_until(singles_scraped, timeout=30, what="Prometheus to scrape both single servers")
        one_start = time.time()
        for server in single.values():
            drive_sessions(server.ws_url)
        # Three scrapes after the sessions: every rate() window holds them.
        time.sleep(max(0.0, one_start + 16 - time.time()))
        one_end = time.time()

        broker = stack.enter_context(running_redis(redis_port)).url
        nodes = {kind: [] for kind in KINDS}
        for kind in KINDS:
            for i, port in enumerate(node_ports[kind], start=1):
                env = {"WS_BROKER_URL": broker}
                env["WS_NODE_ID"] = f"{SERVER_NAMES[kind]}-node{i}"
                nodes[kind].append(stack.enter_context(running_server(kind, env, port=port)))
        for kind in KINDS:
            for node in nodes[kind]:
                wait_ready(node.http_url)
        stack.enter_context(running_redis_exporter(exporter_port, redis_port))
        lb_port = {
            kind: stack.enter_context(
                running_haproxy(SERVER_NAMES[kind], node_ports[kind], lb_metrics[kind])
            )
            for kind in KINDS
        }

        def everything_scraped():
            up = prom.query("up == 1")
            return len(up) == sum(len(t) for t in targets.values()) - 1  # all but cAdvisor

        wait_until(everything_scraped, timeout=30, what="Prometheus to scrape every target")
        scaled_start = time.time()
        env = dict(os.environ)
        env.update(compose_k6_env())
        env.update(
            {
                "K6_PROMETHEUS_RW_SERVER_URL": f"{prom.url}/api/v1/write",
                "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
                "RUST_WS_URL": f"ws://127.0.0.1:{lb_port['rust']}/ws",
                "PYTHON_WS_URL": f"ws://127.0.0.1:{lb_port['python']}/ws",
                "SMOKE": "1",
                "SCENARIO": "sessions",
                "K6_NO_USAGE_REPORT": "true",
            }
        )
        k6 = subprocess.run(
            # --address "": no REST API, whose fixed port other k6 runs may hold.
            [
                K6,
                "run",
                "--quiet",
                "--no-color",
                "--address",
                "",
                "-o",
                "experimental-prometheus-rw",
                "--tag",
                f"testid={testid}",
                str(K6_SCRIPT),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            cwd=REPO,
            check=False,
        )
        assert k6.returncode == 0, f"k6 failed ({k6.returncode}):\n{k6.stdout}\n{k6.stderr}"
        # Two more scrapes (5 s interval) so rate() windows ending now hold the whole run.
        time.sleep(11)
        end = time.time()
        yield {
            "prom": prom,
            "testid": testid,
            "start": one_start - 10,
            "end": end,
            "one": (one_start, one_end),
            "scaled": (scaled_start, end),
            "targets": targets,
            "single": single,
            "nodes": nodes,
            "k6": k6,
        }


def run_query(proof, q, window: tuple[float, float] | None = None):
    # The id is [a-z0-9-]: no regex metacharacters, so it goes into =~"..." as is.
    expr = substitute(q.expr, {"testid": proof["testid"]})
    start, end = window or (proof["start"], proof["end"])
    return expr, proof["prom"].query_range(expr, start, end)


def test_generated_config_differs_from_the_product_config_only_in_targets(proof):
    original = load_yaml(PROM_CONFIG)
    generated = generated_prometheus_config(proof["targets"])
    assert without_targets(generated) == without_targets(original)
    assert generated != original


def test_prometheus_scraped_every_job(proof):
    up = {}
    for r in proof["prom"].query("up"):
        up.setdefault(r["metric"]["job"], []).append(r["value"][1])
    assert up == {
        "prometheus": ["1"],
        "rust-ws": ["1"] * (1 + NODES_PER_KIND),
        "python-ws": ["1"] * (1 + NODES_PER_KIND),
        BALANCER_JOB: ["1", "1"],
        REDIS_JOB: ["1"],
        "cadvisor": ["0"],
    }
    # The product's rules loaded, through the unchanged rule_files path, and evaluate.
    rules = proof["prom"].api("rules")["data"]["groups"]
    assert [g["name"] for g in rules] == ["wslab-latency", "wslab-nodes"]
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), [
        (r["name"], r.get("lastError")) for g in rules for r in g["rules"]
    ]


def test_k6_pushed_its_series_tagged_by_server(proof):
    series = proof["prom"].query(f'k6_ws_sessions_total{{testid="{proof["testid"]}"}}')
    assert {r["metric"]["server"] for r in series} == {"rust", "python"}


@pytest.mark.parametrize("q", QUERIES, ids=[q.test_id for q in QUERIES])
def test_panel_query(proof, q):
    expr, body = run_query(proof, q)
    assert body["status"] == "success", f"{q.test_id} does not run: {body.get('error')}\n{expr}"
    result = body["data"]["result"]
    if is_cadvisor(q.expr):
        # No cAdvisor here: the query must parse (above) and select containers by compose service
        # and by kubelet container name (test_dashboard_static proves it on both label sets).
        assert re.search(f'{CADVISOR_LABEL}=~"rust-ws\\|python-ws(\\|[a-z|-]+)?"', expr), expr
        assert f'{CONTAINER_LABEL}=~"rust-ws|python-ws"' in expr
        assert re.search(f"by \\({CONTAINER_LABEL}(, replica)?\\)", expr), "a line per container"
        assert result == [], "nothing listens on the cadvisor target"
        return
    assert result, f"{q.test_id} returned no data:\n{expr}"
    want = expected_servers(q)
    finite = {}
    for series in result:
        server = series_server(series["metric"])
        if server is None and len(want) == 1:
            server = next(iter(want))  # a per-server heatmap: `sum by (le)` drops the job
        finite.setdefault(server, []).extend(finite_values(series))
    if not want:
        # Test-wide k6 gauges (VUs) carry no server tag, and one Redis serves both kinds.
        assert q.panel_title == "k6 virtual users" or f'job="{REDIS_JOB}"' in q.expr, (
            f"{q.test_id} names no server"
        )
        assert any(finite.values()), f"{q.test_id}: no finite value"
        return
    for server in want:
        assert finite.get(server), f"{q.test_id}: no finite value for {server}:\n{expr}"


# Panels that must show the load itself, not just exist: a value above 0 for both servers.
# Not "Process CPU": rust-ws's process_cpu_seconds_total counts whole seconds (the prometheus
# crate 0.13 makes it an IntCounter, tikv/rust-prometheus#451), and a smoke run uses less than
# one CPU second, so its rate is legitimately 0 here. test_panel_query still requires its data.
LOADED = [
    "Connections accepted per second",
    "Messages handled per second",
    "Message handling p50 / p95 / p99",
    "Broadcast fan-out p50 / p95 / p99",
    "Process resident memory (process_resident_memory_bytes)",
    "WebSocket sessions started per second",
    "Connecting time p95 / p99 (ws_connecting, all runners)",
    "Round trip p95 / p99 (wslab_rtt, all runners)",
    "k6 messages sent and received per second",
    "Checks passed",
    "Messages handled per second per node",
    "Broker broadcasts published and received per second, per node",
    "Broker publish round trip p50 / p95 / p99",
    "Balancer connections per second",
]


@pytest.mark.parametrize("title", LOADED)
def test_panel_shows_the_load_for_both_servers(proof, title):
    queries = [q for q in QUERIES if q.panel_title == title]
    assert queries, f"no panel titled {title!r}"
    peak = {}
    for q in queries:
        _expr, body = run_query(proof, q)
        assert body["status"] == "success", body
        for series in body["data"]["result"]:
            server = series_server(series["metric"])
            peak[server] = max([peak.get(server, 0.0), *finite_values(series)])
    for server in SERVER_JOBS:
        assert peak.get(server, 0.0) > 0, f"{title}: {server} never above 0 ({peak})"


def test_heatmaps_have_buckets_with_observations(proof):
    heatmaps = [q for q in QUERIES if q.panel_type == "heatmap"]
    assert len(heatmaps) == 4
    for q in heatmaps:
        _expr, body = run_query(proof, q)
        les = {s["metric"].get("le") for s in body["data"]["result"]}
        assert "+Inf" in les and len(les) == 19, f"{q.test_id}: buckets {sorted(les)}"
        assert any(v > 0 for s in body["data"]["result"] for v in finite_values(s)), q.test_id


# ---------------------------------------------------------------- one target per job, and many

PER_NODE = [q for q in QUERIES if "group_left (node_id)" in q.expr]
# Server queries (not the balancers', Redis's, k6's or cAdvisor's).
SERVER_QUERIES = [
    q
    for q in QUERIES
    if expected_servers(q)
    and not is_cadvisor(q.expr)
    and "k6_" not in q.expr
    and f'job="{BALANCER_JOB}"' not in q.expr
]
# What a lone server without a broker legitimately has no data for: a broker's up state (shown
# only for nodes with a broker) and the publish round trip (no publish without a broker).
NEEDS_A_BROKER = ("ws_broker_up", "ws_broker_publish_duration")


@pytest.mark.parametrize("q", SERVER_QUERIES, ids=[q.test_id for q in SERVER_QUERIES])
def test_server_query_with_one_target_per_job(proof, q):
    """The plain lab: while each job had one live target, every server query shows both servers
    (per-node ones exactly one line each, the single server's)."""
    expr, body = run_query(proof, q, proof["one"])
    assert body["status"] == "success", body
    result = body["data"]["result"]
    if any(m in q.expr for m in NEEDS_A_BROKER):
        assert all(not finite_values(s) for s in result), f"{q.test_id}: no broker, no data"
        return
    finite = {}
    for series in result:
        server = series_server(series["metric"]) or next(iter(expected_servers(q)))
        finite.setdefault(server, []).extend(finite_values(series))
    for server in expected_servers(q):
        assert finite.get(server), f"{q.test_id}: no finite value for {server}:\n{expr}"
    if q in PER_NODE:
        lines = {(s["metric"]["job"], s["metric"]["node_id"]) for s in result}
        assert len(lines) == len(SERVER_JOBS), f"{q.test_id}: {sorted(lines)}"


@pytest.mark.parametrize("q", PER_NODE, ids=[q.test_id for q in PER_NODE])
def test_per_node_view_has_a_line_per_target(proof, q):
    """The scaled lab: a line for every target of each job (the single server and both nodes,
    or only the nodes where the query is for nodes with a broker), named by its node id."""
    _expr, body = run_query(proof, q, proof["scaled"])
    assert body["status"] == "success", body
    lines = {}
    for series in body["data"]["result"]:
        m = series["metric"]
        assert finite_values(series), f"{q.test_id}: {m} has no finite value"
        lines.setdefault(m["job"], set()).add(m["node_id"])
    for kind in KINDS:
        job = SERVER_NAMES[kind]
        node_ids = {f"{job}-node{i}" for i in range(1, NODES_PER_KIND + 1)}
        if 'broker!="none"' in q.expr:
            assert lines.get(job) == node_ids, (q.test_id, lines)
        else:
            assert len(lines.get(job, ())) == 1 + NODES_PER_KIND, (q.test_id, lines)
            assert node_ids < lines[job], (q.test_id, lines)


def _per_node(proof, title: str, ref: str) -> dict[tuple[str, str], float]:
    """Peak of one per-node query over the scaled window, by (job, node id)."""
    (q,) = [q for q in QUERIES if q.panel_title == title and q.ref_id == ref]
    _expr, body = run_query(proof, q, proof["scaled"])
    return {
        (s["metric"]["job"], s["metric"]["node_id"]): max(finite_values(s), default=0.0)
        for s in body["data"]["result"]
    }


def test_every_node_received_every_kinds_broadcasts_through_redis(proof):
    title = "Broker broadcasts published and received per second, per node"
    published, received = _per_node(proof, title, "A"), _per_node(proof, title, "B")
    for kind in KINDS:
        job = SERVER_NAMES[kind]
        nodes = [(job, f"{job}-node{i}") for i in range(1, NODES_PER_KIND + 1)]
        assert all(received[n] > 0 for n in nodes), received
        assert any(published[n] > 0 for n in nodes), published
        # The single server (its default node id) has no broker: its counters stay at 0.
        (single,) = [n for n in received if n[0] == job and n not in nodes]
        assert received[single] == 0 == published[single], single


def test_broker_up_and_balancer_checks_show_every_node_up(proof):
    for title, up in (
        ("Broker up per node", 1),
        ("Balancer health check per replica (/readyz)", 2),
    ):
        (q,) = [q for q in QUERIES if q.panel_title == title]
        _expr, body = run_query(proof, q, proof["scaled"])
        result = body["data"]["result"]
        assert len(result) == len(KINDS) * NODES_PER_KIND, (title, result)
        # Up at the end of the run: every node kept its broker and passed its checks.
        for series in result:
            assert finite_values(series)[-1] == up, (title, series["metric"])


def test_redis_panels_read_the_brokers_redis(proof):
    def last(title, ref):
        (q,) = [q for q in QUERIES if q.panel_title == title and q.ref_id == ref]
        _expr, body = run_query(proof, q, proof["scaled"])
        (series,) = body["data"]["result"]
        return finite_values(series)

    # Two connections per node (publish and subscription) and the exporter's own.
    clients = last("Redis connected clients and pub/sub", "A")
    assert clients[-1] >= 2 * len(KINDS) * NODES_PER_KIND + 1, clients
    assert last("Redis connected clients and pub/sub", "B")[-1] == 0  # no per-room SUBSCRIBE
    assert last("Redis connected clients and pub/sub", "C")[-1] == 1  # wslab:room:*
    assert max(last("Redis CPU (redis_exporter, user + system)", "A")) > 0
    assert last("Redis memory used", "A")[-1] > 0


def test_rules_evaluate_on_the_nodes_and_no_alert_fires(proof):
    prom = proof["prom"]
    nodes = prom.query("instance:ws_connections:node")
    per_job = {}
    for r in nodes:
        per_job.setdefault(r["metric"]["job"], set()).add(r["metric"]["broker"])
    assert per_job == {job: {"none", "redis"} for job in SERVER_JOBS}, per_job
    assert len(nodes) == len(SERVER_JOBS) * (1 + NODES_PER_KIND)
    # Each node on Redis has one peer; the single server (broker="none") has none (NaN).
    peers = prom.query("instance:ws_connections:peer_avg >= 0")
    assert sorted(r["metric"]["node_id"] for r in peers) == sorted(
        f"{job}-node{i}" for job in SERVER_JOBS for i in range(1, NODES_PER_KIND + 1)
    )
    alerts = prom.api("alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["state"] == "firing"], alerts
    names = {r["name"] for g in prom.api("rules")["data"]["groups"] for r in g["rules"]}
    assert {"WsBrokerDown", "WsNodeNotReady", "WsReplicaImbalance"} <= names
    # Their expressions select real series here (not a typo that matches nothing): the nodes'
    # broker state, the balancers' checks, the scrapes, the per-node connections.
    for expr in (
        'ws_broker_up{job=~"rust-ws|python-ws"} * on (job, instance) group_left (node_id)'
        ' ws_node_info{job=~"rust-ws|python-ws",broker!="none"}',
        'haproxy_server_status{job="haproxy",proxy=~"rust-ws|python-ws",state="DOWN"}',
        'up{job=~"rust-ws|python-ws"}',
    ):
        assert prom.query(expr), expr
