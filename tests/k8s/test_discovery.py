"""deploy/k8s's Prometheus scrapes every server pod on its own, under the job the dashboard reads.

On a cluster, Prometheus's EndpointSlice discovery turns each ready pod behind a Service into one
target carrying `__meta_kubernetes_*` labels, and the job's relabel_configs keep the ones of its
Service and port and copy the pod's name. This test runs that second half for real, on the
rendered config (the wslab-prometheus-config ConfigMap, byte for byte but for where targets come
from):

- what discovery would hand Prometheus is written out as static target groups, one per endpoint
  of every Service `kubectl kustomize deploy/k8s` renders (servers at their Deployments' 3
  replicas, each kind's Redis, Prometheus, Grafana), with the labels Prometheus's endpointslice
  role sets (https://prometheus.io/docs/prometheus/latest/configuration/configuration/#endpointslice);
  Debian's Prometheus is built without Kubernetes discovery, and there is no cluster here;
- each server pod is a real rust-ws or python-ws process on its own loopback port, the other
  endpoints closed loopback ports, so every scrape stays on 127.0.0.1;
- a real Prometheus applies the rendered relabel_configs unchanged and scrapes.

Then: one target per pod in job "rust-ws" / "python-ws" (and one per Redis in "redis"), told apart
by `pod`; no
endpoint of another Service slips into a job; and with clients spread unevenly over the pods, the
dashboard's server queries still give one line per job, whose open connections are the pods' sum.
The kubelet-cadvisor job (role node, through the API server) is left out: it has no pods to
count, and test_manifests.py checks its rules.

Run: .venv/bin/pytest tests/k8s/test_discovery.py -q (about 30 s).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import free_port, running_prometheus, running_server
from k8slib import LAB, REPO, config_map, objects
from wire import RawWS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))

from dashlib import dashboard_queries, is_cadvisor, substitute

SERVERS = {"rust-ws": "rust", "python-ws": "python"}
NAMESPACE = "wslab"
# Pods as a ReplicaSet names them: <deployment>-<pod-template-hash>-<5 characters>.
POD_SUFFIXES = ("x7k2p", "q9m4d", "b3n8w")
TIMEOUT = 60


def endpoints() -> list[dict]:
    """Every endpoint the rendered Services have once their Deployments run: Service, port name,
    port, pod name, and the Deployment's container."""
    deployments = objects(LAB, "Deployment")
    out = []
    for service in objects(LAB, "Service").values():
        selector = service["spec"]["selector"]
        (deployment,) = [
            d
            for d in deployments.values()
            if d["spec"]["selector"]["matchLabels"].items() <= selector.items()
        ]
        name = deployment["metadata"]["name"]
        for i in range(deployment["spec"]["replicas"]):
            for port in service["spec"]["ports"]:
                out.append(
                    {
                        "service": service["metadata"]["name"],
                        "port_name": port["name"],
                        "port": port["port"],
                        "pod": f"{name}-5d7f9c8b6-{POD_SUFFIXES[i]}",
                        "container": deployment["spec"]["template"]["spec"]["containers"][0][
                            "name"
                        ],
                    }
                )
    return out


def discovered_group(ep: dict, address: str) -> dict:
    """One endpoint as a static target group with the labels the endpointslice role sets."""
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_endpointslice_name": f"{ep['service']}-abcde",
            "__meta_kubernetes_endpointslice_address_type": "IPv4",
            "__meta_kubernetes_endpointslice_address_target_kind": "Pod",
            "__meta_kubernetes_endpointslice_address_target_name": ep["pod"],
            "__meta_kubernetes_endpointslice_endpoint_conditions_ready": "true",
            "__meta_kubernetes_endpointslice_port": str(ep["port"]),
            "__meta_kubernetes_endpointslice_port_name": ep["port_name"],
            "__meta_kubernetes_endpointslice_port_protocol": "TCP",
            "__meta_kubernetes_service_name": ep["service"],
            "__meta_kubernetes_pod_name": ep["pod"],
            "__meta_kubernetes_pod_container_name": ep["container"],
            "__meta_kubernetes_pod_ready": "true",
        },
    }


def discovered_config(addresses: dict[tuple[str, str], str], prom_port: int) -> dict:
    """The rendered prometheus.yml with discovery's output in place of kubernetes_sd_configs."""
    config = yaml.safe_load(config_map(LAB, "wslab-prometheus-config")["data"]["prometheus.yml"])
    jobs = []
    for sc in config["scrape_configs"]:
        if sc["job_name"] == "prometheus":
            sc["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        elif sc["job_name"] == "kubelet-cadvisor":
            continue
        else:
            (sd,) = sc.pop("kubernetes_sd_configs")
            assert sd == {"role": "endpointslice", "namespaces": {"own_namespace": True}}
            sc["static_configs"] = [
                discovered_group(ep, addresses[ep["pod"], ep["port_name"]]) for ep in endpoints()
            ]
        jobs.append(sc)
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def cluster():
    eps = endpoints()
    with contextlib.ExitStack() as stack:
        addresses: dict[tuple[str, str], str] = {}
        pods: dict[str, list[tuple[str, object]]] = {job: [] for job in SERVERS}
        for ep in eps:
            kind = SERVERS.get(ep["service"])
            if kind and ep["port_name"] == "http":
                server = stack.enter_context(running_server(kind))
                pods[ep["service"]].append((ep["pod"], server))
                addresses[ep["pod"], ep["port_name"]] = f"127.0.0.1:{server.port}"
            else:
                # Nothing listens here: a target that survives relabelling shows up as up == 0.
                addresses[ep["pod"], ep["port_name"]] = f"127.0.0.1:{free_port()}"
        prom_port = free_port()
        config = discovered_config(addresses, prom_port)

        def link_rules(workdir: Path) -> None:
            (workdir / "rules").symlink_to(REPO / "prometheus" / "rules", target_is_directory=True)

        prom = stack.enter_context(
            running_prometheus(
                yaml.safe_dump(config, sort_keys=False), port=prom_port, prepare=link_rules
            )
        )
        yield {"prom": prom, "pods": pods, "endpoints": eps}


def eventually(prom, expr: str, ok, what: str) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = prom.query(expr)
        if ok(result):
            return result
        time.sleep(1)
    pytest.fail(f"{what}: `{expr}` gave {result} for {TIMEOUT} s\n{prom.log()[-3000:]}")


def test_the_rendered_servers_have_three_pods_each(cluster):
    for job in SERVERS:
        assert len(cluster["pods"][job]) == 3, job


@pytest.mark.parametrize("job", sorted(SERVERS))
def test_every_pod_is_a_target_of_its_servers_job(cluster, job):
    pods = {name for name, _ in cluster["pods"][job]}
    up = eventually(
        cluster["prom"],
        f'up{{job="{job}"}}',
        lambda r: len(r) == 3 and all(s["value"][1] == "1" for s in r),
        f"three {job} pods scraped",
    )
    assert {s["metric"]["pod"] for s in up} == pods
    assert len({s["metric"]["instance"] for s in up}) == 3, "one target per pod"


def test_no_other_endpoint_slips_into_a_job(cluster):
    prom = cluster["prom"]
    eventually(prom, 'up{job="redis"}', lambda r: len(r) == 2, "the Redis exporters' targets")
    targets = prom.api("targets")["data"]["activeTargets"]
    by_job: dict[str, set[str]] = {}
    for t in targets:
        by_job.setdefault(t["labels"]["job"], set()).add(t["labels"].get("pod", ""))
    redis_pods = {ep["pod"] for ep in cluster["endpoints"] if ep["service"].endswith("-redis")}
    assert by_job == {
        "prometheus": {""},
        **{job: {name for name, _ in cluster["pods"][job]} for job in SERVERS},
        # Only the exporters' port of each kind's Redis pod, not Redis's own.
        "redis": redis_pods,
    }
    redis_targets = [t for t in targets if t["labels"]["job"] == "redis"]
    assert {t["labels"]["service"] for t in redis_targets} == {f"{j}-redis" for j in SERVERS}
    for t in redis_targets:
        assert t["discoveredLabels"]["__meta_kubernetes_endpointslice_port_name"] == "metrics"


def test_dashboard_queries_read_one_line_per_job_summed_over_pods(cluster):
    """Clients on two of a job's three pods (1 and 2): each pod's own series says so, the
    dashboard's "Open connections" says 3 for the job, no server query shows a line per pod but
    the per-node views, and those show one line per pod at most, each with its node id."""
    prom = cluster["prom"]
    with contextlib.ExitStack() as stack:
        for job in SERVERS:
            (_, first), (_, second), _ = cluster["pods"][job]
            for server, n in ((first, 1), (second, 2)):
                for _ in range(n):
                    ws = RawWS(server.port)
                    assert ws.status == 101
                    stack.callback(ws.sock.close)
        for job in SERVERS:
            names = [name for name, _ in cluster["pods"][job]]
            per_pod = eventually(
                prom,
                f'ws_connections{{job="{job}"}}',
                lambda r, names=names: (
                    {s["metric"]["pod"]: s["value"][1] for s in r}
                    == {names[0]: "1", names[1]: "2", names[2]: "0"}
                ),
                f"{job}'s connections per pod",
            )
            assert len(per_pod) == 3
        (open_connections,) = [
            q for q in dashboard_queries() if q.panel_title == "Open connections"
        ]
        result = eventually(
            prom,
            open_connections.expr,
            lambda r: (
                {s["metric"]["job"]: s["value"][1] for s in r} == {job: "3" for job in SERVERS}
            ),
            "the dashboard's open connections, summed over pods",
        )
        assert all(set(s["metric"]) == {"job"} for s in result)
        for q in dashboard_queries():
            if "job=" not in q.expr or is_cadvisor(q.expr):
                continue
            series = prom.query(substitute(q.expr, {}))
            if "per node" in q.panel_title:
                # The per-node views exist to split a job by pod: one line per pod, each named
                # by its node id (ws_node_info), and never more.
                for job in SERVERS:
                    lines = [s["metric"] for s in series if s["metric"].get("job") == job]
                    # Gauges have a line for every pod at once; rates may still lack a window.
                    if q.panel_title == "Open connections per node":
                        assert len(lines) == 3, (q.panel_title, lines)
                    assert len(lines) <= 3, (q.panel_title, lines)
                    assert all("node_id" in m for m in lines), (q.panel_title, lines)
                continue
            for s in series:
                assert not {"pod", "instance"} & set(s["metric"]), (q.panel_title, s["metric"])
