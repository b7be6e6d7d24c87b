"""Compose smoke test of the `scaled` profile: the real compose.yaml on a real Docker engine.

It brings up Prometheus and the profile's services (per server kind: its Redis and Redis
exporter, WS_REPLICAS=2 replicas, one HAProxy) with `up -d --build` (the images are the ones
test_compose_smoke.py built, so this is the cache), waits for their healthchecks and for each
balancer to see both replicas ready, then proves, for each kind, through its balancer's host port:

- a room spans two replicas: two clients land on different replicas (their `conn_id`s name
  different nodes, and each replica's own `ws_connections` in Prometheus is 1), and a broadcast
  from one reaches the other;
- Prometheus sees every replica as a target of the kind's job (up == 1, one per replica), and
  scrapes both balancers and both Redis exporters;
- with one replica stopped, new connections through the balancer still succeed, on the other.

Two replicas rather than the default three keep it light on a 2-core machine; the variable is the
one users set. Everything is torn down with `down -v` whatever happened. Run and needs: as
test_compose_smoke.py (WSLAB_SMOKE_KEEP=1 works the same way).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from test_compose_smoke import (
    BUILD_STAND_INS,
    BUILD_UP_TIMEOUT,
    ROOT,
    STAND_INS_TIMEOUT,
    Stack,
    _engine_nofile_limit,
    _eventually,
    _host_ports,
)
from wire import RawWS

REPLICAS = 2
KINDS = {"rust-ws": "8000", "python-ws": "8001"}  # kind: its port inside the network
NODES = {kind: f"{kind}-node" for kind in KINDS}
LBS = {kind: f"{kind}-lb" for kind in KINDS}
REDIS = {kind: f"{kind}-redis" for kind in KINDS}
EXPORTERS = {kind: f"{kind}-redis-exporter" for kind in KINDS}
SCALED_SERVICES = (
    "prometheus",
    *REDIS.values(),
    *EXPORTERS.values(),
    *NODES.values(),
    *LBS.values(),
)
READY_TIMEOUT = 90


@pytest.fixture(scope="module")
def scaled(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("the Docker engine is not running: start dockerd")
    st = Stack(say, services=SCALED_SERVICES, profiles=("scaled",))
    st.project = st.project.replace("wslab-smoke-", "wslab-scaled-")
    started = time.monotonic()
    st.timed(
        "base images (tests/fixtures/images/build.sh)",
        subprocess.run,
        ["bash", str(BUILD_STAND_INS)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=STAND_INS_TIMEOUT,
        check=True,
    )
    st.env["WS_REPLICAS"] = str(REPLICAS)
    st.ports = _host_ports(st.env, SCALED_SERVICES)
    limit = _engine_nofile_limit()
    if limit is not None and limit < 65536:
        st.env["WSLAB_NOFILE"] = str(limit)
    say(f"compose smoke (scaled): project {st.project}, WS_REPLICAS={REPLICAS}, ports {st.ports}")
    try:
        st.timed(
            "scaled: up -d --build",
            st.run,
            ["up", "-d", "--build", *SCALED_SERVICES],
            timeout=BUILD_UP_TIMEOUT,
            capture=False,
        )
        st.timed("scaled: healthchecks", st.wait_healthy)
        yield st
    finally:
        if os.environ.get("WSLAB_SMOKE_KEEP") == "1":
            say(
                f"compose smoke: WSLAB_SMOKE_KEEP=1, left up: {' '.join(st.compose)} "
                f"-p {st.project} --profile scaled down -v"
            )
        else:
            st.timed("scaled: down -v", st.down)
        say(f"compose smoke (scaled): total {time.monotonic() - started:.1f} s")


def lb_servers(st: Stack, kind: str) -> dict[str, dict]:
    """The balancer's own view of its replica slots (its statistics page as CSV): slot name ->
    row, for the slots that hold an address."""
    url = f"http://127.0.0.1:{st.ports[f'{LBS[kind]}:8404']}/stats;csv"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode().lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        r["svname"]: r
        for r in rows
        if r["pxname"] == kind
        and r["svname"] not in ("FRONTEND", "BACKEND")
        and r["addr"] not in ("", "-")
    }


def wait_replicas_up(st: Stack, kind: str, n: int = REPLICAS) -> dict[str, dict]:
    deadline = time.monotonic() + READY_TIMEOUT
    servers: dict[str, dict] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            servers = lb_servers(st, kind)
            if sum(r["status"] == "UP" for r in servers.values()) == n:
                return servers
        time.sleep(1)
    pytest.fail(
        f"{kind}-lb: not {n} replicas UP within {READY_TIMEOUT} s: "
        + json.dumps({k: (r["addr"], r["status"], r["check_status"]) for k, r in servers.items()}),
        pytrace=False,
    )


def connect(st: Stack, kind: str, room: str) -> tuple[RawWS, dict]:
    """A client through the kind's balancer, and its welcome."""
    ws = RawWS(st.ports[f"{LBS[kind]}:{KINDS[kind]}"], f"/ws?room={room}")
    assert ws.status == 101, f"{kind}-lb answered {ws.status}"
    welcome = ws.recv_json()
    assert welcome["type"] == "welcome" and welcome["server"] == kind, welcome
    return ws, welcome


def node_of(welcome: dict) -> str:
    """The node a client landed on: the `NODE_ID` of its `NODE_ID:N` conn_id (PROTOCOL.md §3)."""
    node, sep, n = welcome["conn_id"].rpartition(":")
    assert sep and node and n.isdigit(), f"not a cluster conn_id: {welcome['conn_id']!r}"
    return node


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_balancer_sees_every_replica_ready(scaled, kind):
    """Every replica found by DNS and passing its /readyz check: each has its broker."""
    servers = scaled.timed(
        f"scaled: {kind}-lb sees {REPLICAS} ready", wait_replicas_up, scaled, kind
    )
    assert len({r["addr"] for r in servers.values()}) == REPLICAS


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_prometheus_sees_every_replica(scaled, kind):
    result = _eventually(
        scaled,
        f'up{{job="{kind}", service="{NODES[kind]}"}}',
        lambda r: len(r) == REPLICAS and all(s["value"][1] == "1" for s in r),
        f"{REPLICAS} {kind} replicas scraped",
    )
    assert len({s["metric"]["instance"] for s in result}) == REPLICAS
    # Each replica reports a node of its own, on the broker.
    info = _eventually(
        scaled,
        f'ws_node_info{{job="{kind}", service="{NODES[kind]}"}}',
        lambda r: len(r) == REPLICAS,
        f"{kind} ws_node_info",
    )
    assert {s["metric"]["broker"] for s in info} == {"redis"}
    assert len({s["metric"]["node_id"] for s in info}) == REPLICAS


def test_prometheus_scrapes_the_balancers_and_both_redis(scaled):
    _eventually(
        scaled,
        'up{job="haproxy"} == 1',
        lambda r: {s["metric"]["service"] for s in r} == set(LBS.values()),
        "both balancers scraped",
    )
    # One Redis per kind, each through its own exporter.
    _eventually(
        scaled,
        'redis_up{job="redis"} == 1',
        lambda r: {s["metric"]["service"] for s in r} == set(EXPORTERS.values()),
        "both exporters scraped and reaching their Redis",
    )
    # HAProxy's view of every replica slot, per kind: what the dashboard's balancer row reads.
    for kind in KINDS:
        _eventually(
            scaled,
            f'haproxy_server_check_status{{proxy="{kind}"}}',
            lambda r: len({s["metric"]["server"] for s in r}) == REPLICAS,
            f"{kind}-lb's {REPLICAS} replica slots",
        )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_room_spans_two_replicas_through_the_balancer(scaled, kind):
    wait_replicas_up(scaled, kind)
    room = f"scaled-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        ann, ann_welcome = connect(scaled, kind, room)
        stack.callback(ann.close)
        bob, bob_welcome = connect(scaled, kind, room)
        stack.callback(bob.close)
        # leastconn: the second client goes to the replica that has none.
        assert node_of(ann_welcome) != node_of(bob_welcome), (ann_welcome, bob_welcome)
        # Each replica's own count, as Prometheus scrapes it: one client on each.
        _eventually(
            scaled,
            f'ws_connections{{job="{kind}", service="{NODES[kind]}"}}',
            lambda r: sorted(s["value"][1] for s in r) == ["1"] * REPLICAS,
            f"one client on each {kind} replica",
        )
        ann.send_json({"type": "broadcast", "user": "ann", "text": "across nodes", "ref": "a1"})
        for who, ws in (("bob", bob), ("ann", ann)):
            msg = ws.recv_json()
            assert msg["type"] == "broadcast", (who, msg)
            assert (msg["text"], msg["user"], msg["from"]) == (
                "across nodes",
                "ann",
                ann_welcome["conn_id"],
            ), msg
        assert msg["ref"] == "a1"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stopping_one_replica_leaves_the_others_serving(scaled, kind):
    before = wait_replicas_up(scaled, kind)
    victim = scaled.containers(NODES[kind])[0]
    subprocess.run(["docker", "stop", "-t", "5", victim], check=True, timeout=60)
    # The balancer notices within its check interval (2 s, fall 2), or DNS drops the address.
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        up = {k: r for k, r in lb_servers(scaled, kind).items() if r["status"] == "UP"}
        if len(up) == REPLICAS - 1:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{kind}-lb still sees {REPLICAS} replicas UP after one was stopped")
    (survivor,) = up.values()
    assert survivor["addr"] in {r["addr"] for r in before.values()}
    nodes = set()
    with contextlib.ExitStack() as stack:
        for i in range(4):
            ws, welcome = connect(scaled, kind, f"after-stop-{i}")
            stack.callback(ws.close)
            nodes.add(node_of(welcome))
            ws.send_json({"type": "echo", "user": "cy", "text": f"still here {i}"})
            assert ws.recv_json()["text"] == f"still here {i}"
    assert len(nodes) == 1, f"new clients on one node, the one left: {nodes}"
