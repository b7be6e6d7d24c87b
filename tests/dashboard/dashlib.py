"""Shared helpers for the dashboard suite: the repo's compose/Prometheus/Grafana files, the
dashboard's queries with Grafana's variables filled in, and a real Prometheus on 127.0.0.1.

How the real-data proof points Prometheus at native processes (no second, hand-kept config):
`generated_prometheus_config` loads prometheus/prometheus.yml, gives each scrape job the targets
the test started and changes nothing else: a job's static targets are replaced, and its DNS
discovery (`dns_sd_configs`, the scaled profile's replicas, balancers and Redis exporter, found by
Docker's DNS) becomes static targets too, since no Docker DNS answers here; the job's relabelling
stays. It writes the copy into a temporary directory, where a symlink
`rules -> <repo>/prometheus/rules` makes the unchanged `rule_files: [rules/*.yml]` load the
product's rules. The targets become:

- `prometheus` -> the test Prometheus itself;
- `rust-ws`, `python-ws` -> the servers `tests/harness.py` started on 127.0.0.1: the single
  server, and the nodes on Redis that compose's scaled profile runs beside it in the same job;
- `haproxy` -> the balancers' exporters, `redis` -> Debian's prometheus-redis-exporter;
- `cadvisor` -> a closed port on 127.0.0.1 (cAdvisor can't run here; the job stays configured
  and reports up == 0, and no scrape leaves the loopback interface);
- `haproxy`, `redis` -> closed ports on 127.0.0.1 too, until a test runs HAProxy and the Redis
  exporter natively (`CLOSED_PORT_JOBS`).

Any other job in prometheus.yml makes the generator fail, so a new job can't slip past the test.

The scaled lab's other processes run natively too, each on free loopback ports: Debian's
redis-server (tests/harness.py's `running_redis`), prometheus-redis-exporter and HAProxy
(`running_redis_exporter`, `running_haproxy` here). HAProxy runs haproxy/haproxy.cfg itself,
with only what needs Docker replaced (`haproxy_config`): static servers where compose fills slots
from Docker's DNS, and loopback ports.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
import yaml
from harness import Prometheus

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
ENV_FILE = REPO / ".env"
PROM_DIR = REPO / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES_TEST = Path(__file__).resolve().parent / "rules_test.yml"
GRAFANA = REPO / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "wslab.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "wslab.yml"

PROMTOOL = os.environ.get("PROMTOOL", "/usr/bin/promtool")
REDIS_EXPORTER = os.environ.get("REDIS_EXPORTER", "/usr/bin/prometheus-redis-exporter")
HAPROXY = os.environ.get("HAPROXY", "haproxy")
HAPROXY_CFG = REPO / "haproxy" / "haproxy.cfg"
DOCKER_COMPOSE = os.environ.get("DOCKER_COMPOSE", "/usr/bin/docker-compose")

SERVER_JOBS = ("rust-ws", "python-ws")
# k6 tags every sample with server=rust|python; the dashboard's server queries use the job.
K6_SERVER_TAG = {"rust-ws": "rust", "python-ws": "python"}
# Container panels read two cAdvisors: compose's own container labels its series with the compose
# service, a kubelet's (Kubernetes) with the pod spec's container name. Each query selects both
# and names the line by CONTAINER_LABEL (label_replace copies the compose label into it).
CADVISOR_LABEL = "container_label_com_docker_compose_service"
CONTAINER_LABEL = "container"
# Prometheus 2.42 stores native histograms (k6's trends, K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM)
# only with this flag; 3.9 and newer (compose) always do.
NATIVE_HISTOGRAMS_FLAG = "--enable-feature=native-histograms"

# What Grafana substitutes for its built-in interval variables when the datasource's
# timeInterval is 5s (grafana/provisioning/datasources/prometheus.yml) and the panel's step is
# small: $__rate_interval = max(4 * 5s, step + 5s).
RATE_INTERVAL = "20s"
INTERVAL = "5s"


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_compose() -> dict:
    return load_yaml(COMPOSE)


def load_dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


@dataclass(frozen=True)
class Query:
    panel_id: int
    panel_title: str
    panel_type: str
    unit: str | None
    ref_id: str
    expr: str

    @property
    def test_id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.panel_title.lower()).strip("-")[:40]
        return f"{self.panel_id}{self.ref_id}-{slug}"


def dashboard_queries(dashboard: dict | None = None) -> list[Query]:
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in all_panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for t in panel.get("targets", []):
            out.append(
                Query(panel["id"], panel["title"], panel["type"], unit, t["refId"], t["expr"])
            )
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Fill in Grafana's variables as Grafana would for a short range with a small step."""
    builtins = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": INTERVAL,
        "__range": "15m",
    }
    values = {**builtins, **variables}
    # Longest names first, so $__rate_interval is not read as $__rate followed by _interval.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    # `$1` in label_replace's replacement is a regex group, not a variable: Grafana leaves names
    # it doesn't know as they are, and no dashboard variable is a number.
    leftover = re.search(r"\$\{?(?![0-9]+\b)\w+", expr)
    assert leftover is None, f"unsubstituted variable {leftover.group(0)} in {expr}"
    return expr


def is_cadvisor(expr: str) -> bool:
    return re.search(r"\bcontainer_\w+", expr) is not None


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by { or [ or a space/paren
    that are not functions, keywords or label names. Good enough for this dashboard's style,
    where every selector carries a {...} matcher."""
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


# The scaled lab's other jobs: HAProxy's exporter (one balancer per server kind, named by its
# `proxy` label) and Redis's exporter (one Redis for both kinds).
BALANCER_JOB = "haproxy"
REDIS_JOB = "redis"


def expected_servers(q: Query) -> set[str]:
    """Which servers a panel query must show data for, from how it selects and groups.

    - `job="rust-ws"` (a per-server heatmap): that server;
    - `job=~"rust-ws|python-ws"`: both;
    - the balancers' `proxy=~"rust-ws|python-ws"`: both;
    - k6 series grouped `by (server...)`: both (k6 tags server=rust|python);
    - anything else: none named (test-wide k6 gauges such as k6_vus, and Redis, which serves both).
    """
    if f'job="{BALANCER_JOB}"' in q.expr:
        m = re.search(r'proxy=~"([^"]+)"', q.expr)
        return set(m.group(1).split("|")) if m else set()
    exact = set(re.findall(r'job="([^"]+)"', q.expr)) - {REDIS_JOB}
    if exact:
        return exact
    m = re.search(r'job=~"([^"]+)"', q.expr)
    if m:
        return set(m.group(1).split("|"))
    if "k6_" in q.expr and re.search(r"by \(server\b", q.expr):
        return set(SERVER_JOBS)
    return set()


def series_server(metric: dict) -> str | None:
    """The server a result series belongs to: its job, its balancer's proxy, or its k6 server
    tag."""
    if metric.get("job") in SERVER_JOBS:
        return metric["job"]
    if metric.get("proxy") in SERVER_JOBS:
        return metric["proxy"]
    for job, tag in K6_SERVER_TAG.items():
        if metric.get("server") == tag:
            return job
    return None


def finite_values(series: dict) -> list[float]:
    out = []
    for _, v in series.get("values", []):
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


# ---------------------------------------------------------------- Prometheus


def generated_prometheus_config(targets: dict[str, str | list[str]]) -> dict:
    """prometheus.yml with each job's targets targets[job_name] (one, or a list): static targets
    replaced, DNS discovery turned into those static targets."""
    config = load_yaml(PROM_CONFIG)
    jobs = [sc["job_name"] for sc in config["scrape_configs"]]
    assert sorted(jobs) == sorted(targets), (
        f"prometheus.yml has jobs {jobs}; the generator knows {sorted(targets)}: "
        "teach tests/dashboard/dashlib.py where the new job's target runs natively"
    )
    out = copy.deepcopy(config)
    for sc in out["scrape_configs"]:
        static = sc.get("static_configs", [])
        dns = sc.pop("dns_sd_configs", [])
        known = {"job_name", "static_configs", "relabel_configs", "metric_relabel_configs"}
        assert set(sc) <= known, f"{sc['job_name']}: teach the generator {set(sc) - known}"
        assert len(static) <= 1 and (static or dns), sc
        first = static[0] if static else {}
        job_targets = targets[sc["job_name"]]
        job_targets = [job_targets] if isinstance(job_targets, str) else list(job_targets)
        sc["static_configs"] = [{**first, "targets": job_targets}]
    return out


# Jobs whose targets a test that doesn't start the scaled lab can't run natively: it points them
# at a closed port on 127.0.0.1, where they report up == 0 and no scrape leaves the loopback
# interface.
CLOSED_PORT_JOBS = ("cadvisor", "haproxy", "redis")


def without_targets(config: dict) -> dict:
    """The config with every way of naming targets removed (static targets, DNS discovery), so
    a generated config and the product's compare equal in everything else (labels included)."""
    c = copy.deepcopy(config)
    for sc in c["scrape_configs"]:
        sc.pop("dns_sd_configs", None)
        rest = [
            {k: v for k, v in st.items() if k != "targets"} for st in sc.pop("static_configs", [])
        ]
        if any(rest):
            sc["static_configs"] = [st for st in rest if st]
    return c


@contextlib.contextmanager
def running_prometheus(port: int, targets: dict[str, str | list[str]]) -> Iterator[Prometheus]:
    """A real Prometheus on 127.0.0.1:port with the generated config and the remote-write
    receiver on, started with the same flags compose gives it (paths aside), plus native
    histograms, which Prometheus 2.42 keeps behind a feature flag."""
    config = (
        "# Generated by tests/dashboard/dashlib.py from prometheus/prometheus.yml; only the\n"
        "# targets differ.\n"
        + yaml.safe_dump(generated_prometheus_config(targets), sort_keys=False)
    )

    def link_rules(workdir: Path) -> None:
        (workdir / "rules").symlink_to(PROM_DIR / "rules", target_is_directory=True)

    with harness.running_prometheus(
        config, port=port, prepare=link_rules, flags=[NATIVE_HISTOGRAMS_FLAG]
    ) as prom:
        yield prom


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- the scaled lab, natively


@contextlib.contextmanager
def running_process(
    name: str,
    cmd: list[str],
    ready: Callable[[], bool],
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Start cmd (with extra env), yield it once ready() is true, stop it afterwards; its output
    goes to a temporary log that is printed if it fails to start or the test fails while it
    runs."""
    binary = shutil.which(cmd[0])
    if not binary:
        raise RuntimeError(f"{cmd[0]} not found (Debian: apt-get install {name})")
    # Kept open for the process's lifetime and removed in `finally`, so no `with` block.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix=f"wslab-{name}-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        [binary, *cmd[1:]], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )

    def text() -> str:
        return Path(log.name).read_text(errors="replace")

    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{text()}")
            with contextlib.suppress(OSError):
                if ready():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready within {timeout}s:\n{text()}")
            time.sleep(0.1)
        yield proc
    except BaseException:
        sys.stderr.write(f"--- {name} log ---\n{text()}\n")
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)


def http_ok(url: str, contains: str = "") -> bool:
    status, _, body = harness.http_get(url, timeout=1.0)
    return status == 200 and contains in body


@contextlib.contextmanager
def running_redis_exporter(port: int, redis_port: int) -> Iterator[subprocess.Popen]:
    """Debian's prometheus-redis-exporter (compose runs oliver006/redis_exporter, the same
    program) on 127.0.0.1:port, reading the Redis on redis_port."""
    cmd = [
        REDIS_EXPORTER,
        f"--redis.addr=redis://127.0.0.1:{redis_port}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    metrics = f"http://127.0.0.1:{port}/metrics"
    with running_process(
        "prometheus-redis-exporter", cmd, lambda: http_ok(metrics, "redis_up 1")
    ) as proc:
        yield proc


def haproxy_config(port: int, metrics_port: int, replicas: list[int]) -> str:
    """haproxy/haproxy.cfg, the balancer compose runs for each kind, with what only Docker has
    replaced and nothing else: the replicas become static servers node1..N on 127.0.0.1 (compose
    fills the same slots from Docker's DNS, whose `resolvers` section and options go), and the
    two binds move to free loopback ports. Each change must apply exactly once, so a reshaped
    haproxy.cfg fails here instead of being tested half-changed. The kind comes from WS_KIND in
    the environment, as compose gives it."""
    lines, skipping = [], False
    for line in HAPROXY_CFG.read_text().splitlines():
        if line.startswith("resolvers "):
            skipping = True
            continue
        if skipping and (not line.strip() or line[0].isspace()):
            continue
        skipping = False
        lines.append(line)
    text = "\n".join(lines) + "\n"
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{p}" for i, p in enumerate(replicas, start=1)
    )
    for old, new in (
        (" resolvers docker resolve-prefer ipv4 init-addr none", ""),
        ('    server-template node "${WS_REPLICAS}" "${WS_NODES}:${WS_PORT}"', servers),
        ('bind "*:${WS_PORT}"', f'bind "127.0.0.1:{port}"'),
        ('bind "*:8404"', f'bind "127.0.0.1:{metrics_port}"'),
    ):
        assert text.count(old) == 1, f"{HAPROXY_CFG}: expected {old!r} once"
        text = text.replace(old, new)
    config_lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in config_lines if "resolve" in line], text
    return "# Generated by tests/dashboard/dashlib.py from haproxy/haproxy.cfg.\n" + text


@contextlib.contextmanager
def running_haproxy(kind: str, replicas: list[int], metrics_port: int) -> Iterator[int]:
    """Debian's HAProxy in front of replicas, its exporter on metrics_port; yields its WebSocket
    port once every replica passes its /readyz check."""
    port = harness.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wslab-haproxy-"))
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, metrics_port, replicas))
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"

    def all_up() -> bool:
        _, _, body = harness.http_get(metrics, timeout=1.0)
        up = re.findall(r'haproxy_server_status\{[^}]*state="UP"\} (\d)', body)
        return len(up) == len(replicas) and set(up) == {"1"}

    try:
        cmd = [HAPROXY, "-db", "-f", str(config)]
        with running_process("haproxy", cmd, all_up, env={"WS_KIND": kind}):
            yield port
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
