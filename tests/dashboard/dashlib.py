"""Shared helpers for the dashboard suite: the repo's compose/Prometheus/Grafana files, the
dashboard's queries with Grafana's variables filled in, and a real Prometheus on 127.0.0.1.

How the real-data proof points Prometheus at native servers (no second, hand-kept config):
`generated_prometheus_config` loads prometheus/prometheus.yml, gives each scrape job one static
target and nothing else changes, and writes the copy into a temporary directory: a job's static
targets are replaced, and its DNS discovery (`dns_sd_configs`, the scaled profile's replicas,
balancers and Redis exporter, found by Docker's DNS) becomes that static target, since no Docker
DNS answers here; the job's relabelling stays. There, a
symlink `rules -> <repo>/prometheus/rules` makes the unchanged `rule_files: [rules/*.yml]` load
the product's recording rules. The targets become:

- `prometheus` -> the test Prometheus itself;
- `rust-ws`, `python-ws` -> the servers `tests/harness.py` started on 127.0.0.1;
- `cadvisor` -> a closed port on 127.0.0.1 (cAdvisor can't run here; the job stays configured
  and reports up == 0, and no scrape leaves the loopback interface);
- `haproxy`, `redis` -> closed ports on 127.0.0.1 too, until a test runs HAProxy and the Redis
  exporter natively (`CLOSED_PORT_JOBS`).

Any other job in prometheus.yml makes the generator fail, so a new job can't slip past the test.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import time
from collections.abc import Iterator
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


def expected_servers(q: Query) -> set[str]:
    """Which servers a panel query must show data for, from how it selects and groups.

    - `job="rust-ws"` (a per-server heatmap): that server;
    - `job=~"rust-ws|python-ws"`: both;
    - k6 series grouped `by (server...)`: both (k6 tags server=rust|python);
    - anything else: none named (test-wide k6 gauges such as k6_vus).
    """
    exact = set(re.findall(r'job="([^"]+)"', q.expr))
    if exact:
        return exact
    m = re.search(r'job=~"([^"]+)"', q.expr)
    if m:
        return set(m.group(1).split("|"))
    if "k6_" in q.expr and re.search(r"by \(server\b", q.expr):
        return set(SERVER_JOBS)
    return set()


def series_server(metric: dict) -> str | None:
    """The server a result series belongs to: its job, or its k6 server tag."""
    if metric.get("job") in SERVER_JOBS:
        return metric["job"]
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


def generated_prometheus_config(targets: dict[str, str]) -> dict:
    """prometheus.yml with each job's one target targets[job_name]: static targets replaced,
    DNS discovery turned into that static target."""
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
        sc["static_configs"] = [{**first, "targets": [targets[sc["job_name"]]]}]
    return out


# Jobs whose target can't run natively yet: the caller points them at a closed port on 127.0.0.1,
# where they report up == 0 and no scrape leaves the loopback interface.
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
def running_prometheus(port: int, targets: dict[str, str]) -> Iterator[Prometheus]:
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
