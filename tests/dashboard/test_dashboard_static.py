"""Static checks of compose.yaml, .env, prometheus/ and grafana/: the files parse, the real tools
accept them (docker-compose v1.29 `config`, promtool `check config`, `check rules`, `test rules`),
and they follow the lab's rules (pinned images, a comment and a health check per service, equal
server limits, loopback ports, every metric of PROTOCOL.md §4 on the dashboard). Grafana and
cAdvisor can't run on the test machine, so their configuration is checked here and their queries in
test_dashboard_realdata.py.

Run: .venv/bin/pytest tests/dashboard -q
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dashlib import (
    BALANCER_JOB,
    CADVISOR_LABEL,
    COMPOSE,
    CONTAINER_LABEL,
    DASH_PROVIDERS,
    DASHBOARD,
    DATASOURCES,
    DOCKER_COMPOSE,
    ENV_FILE,
    PROM_CONFIG,
    PROM_DIR,
    PROMTOOL,
    REDIS_JOB,
    REPO,
    RULES_TEST,
    SERVER_JOBS,
    all_panels,
    dashboard_queries,
    expected_servers,
    is_cadvisor,
    load_compose,
    load_dashboard,
    load_yaml,
    metric_names,
    substitute,
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO):
    full_env = dict(os.environ)
    # Don't let the caller's shell decide what the defaults look like.
    for var in (
        "WS_CPUS",
        "WS_MEMORY",
        "WS_REPLICAS",
        "WSLAB_BIND",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_FILE",
    ):
        full_env.pop(var, None)
    full_env.update(env or {})
    return subprocess.run(
        cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


def compose_config(env: dict[str, str] | None = None, profile: str | None = None) -> dict:
    cmd = [DOCKER_COMPOSE] + (["--profile", profile] if profile else []) + ["config"]
    result = run(cmd, env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# ---------------------------------------------------------------- compose.yaml


def test_docker_compose_v1_config_accepts_the_file():
    for cmd in (
        [DOCKER_COMPOSE, "config", "-q"],
        [DOCKER_COMPOSE, "--profile", "load", "config", "-q"],
        [DOCKER_COMPOSE, "--profile", "scaled", "config", "-q"],
    ):
        result = run(cmd)
        assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr}"


def test_project_name_comes_from_env_file_not_a_name_key(compose):
    # docker-compose v1.29 rejects a top-level `name:`; both v1 and v2 read .env.
    assert "name" not in compose
    env = dict(
        line.split("=", 1)
        for line in ENV_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert env.get("COMPOSE_PROJECT_NAME") == "wslab"
    text = COMPOSE.read_text()
    assert "COMPOSE_PROJECT_NAME" in text and ".env" in text, "compose.yaml must say why"


# The scaled profile's replicas and balancers of each server kind.
SCALED_NODES = {"rust-ws": "rust-ws-node", "python-ws": "python-ws-node"}
SCALED_LBS = {"rust-ws": "rust-ws-lb", "python-ws": "python-ws-lb"}
# One Redis per kind (one Redis serves one cluster, PROTOCOL.md section 5), each with its exporter.
SCALED_REDIS = {"rust-ws": "rust-ws-redis", "python-ws": "python-ws-redis"}
SCALED_EXPORTERS = {"rust-ws": "rust-ws-redis-exporter", "python-ws": "python-ws-redis-exporter"}


def test_services_are_the_lab(compose):
    assert set(compose["services"]) == {
        "rust-ws",
        "python-ws",
        "prometheus",
        "cadvisor",
        "grafana",
        "k6",
        # The scaled profile (README, "Scaled lab").
        "rust-ws-redis",
        "python-ws-redis",
        "rust-ws-redis-exporter",
        "python-ws-redis-exporter",
        "rust-ws-node",
        "python-ws-node",
        "rust-ws-lb",
        "python-ws-lb",
    }
    scaled = {n for n, svc in compose["services"].items() if "scaled" in svc.get("profiles", [])}
    assert scaled == {
        *SCALED_REDIS.values(),
        *SCALED_EXPORTERS.values(),
        *SCALED_NODES.values(),
        *SCALED_LBS.values(),
    }


def test_every_service_has_a_one_line_comment():
    lines = COMPOSE.read_text().splitlines()
    services = load_compose()["services"]
    for name in services:
        idx = lines.index(f"  {name}:")
        assert lines[idx - 1].strip().startswith("# "), f"no comment line above service {name}"


PINNED = {
    "prometheus": r"prom/prometheus:v3\.\d+\.\d+",
    "cadvisor": r"ghcr\.io/google/cadvisor:v0\.5\d\.\d+",
    "grafana": r"grafana/grafana:13\.\d+\.\d+",
    "k6": r"grafana/k6:1\.1\.0",
    "rust-ws-redis": r"redis:\d+\.\d+\.\d+-alpine",
    "python-ws-redis": r"redis:\d+\.\d+\.\d+-alpine",
    "rust-ws-redis-exporter": r"oliver006/redis_exporter:v1\.\d+\.\d+",
    "python-ws-redis-exporter": r"oliver006/redis_exporter:v1\.\d+\.\d+",
    "rust-ws-lb": r"haproxy:\d+\.\d+\.\d+-alpine",
    "python-ws-lb": r"haproxy:\d+\.\d+\.\d+-alpine",
}


def test_pulled_images_are_pinned(compose):
    for name, pattern in PINNED.items():
        image = compose["services"][name]["image"]
        assert re.fullmatch(pattern, image), f"{name}: {image!r} is not pinned like {pattern}"
    for name, svc in compose["services"].items():
        assert not str(svc.get("image", "")).endswith(":latest"), name


def test_servers_are_built_from_their_dockerfiles(compose):
    rust = compose["services"]["rust-ws"]["build"]
    assert rust == {"context": ".", "dockerfile": "rust-ws/Dockerfile"}
    assert compose["services"]["python-ws"]["build"]["context"] == "./python-ws"


def test_healthchecks(compose):
    svcs = compose["services"]
    assert svcs["rust-ws"]["healthcheck"]["test"] == [
        "CMD",
        "/usr/local/bin/rust-ws",
        "--healthcheck",
    ]
    assert svcs["python-ws"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-m",
        "python_ws.healthcheck",
    ]
    prom = svcs["prometheus"]["healthcheck"]["test"]
    assert prom[:2] == ["CMD", "wget"] and prom[-1].endswith(":9090/-/healthy")
    assert svcs["cadvisor"]["healthcheck"]["test"][-1].endswith(":8080/healthz")
    assert svcs["grafana"]["healthcheck"]["test"][-1].endswith(":3000/api/health")
    # k6 is a one-shot job, not a service to wait on; the Redis exporter's official image is FROM
    # scratch, with nothing to run a check with (`up{job="redis"}` is its check); everything else
    # has a healthcheck.
    for name, svc in svcs.items():
        if name != "k6" and name not in SCALED_EXPORTERS.values():
            assert "healthcheck" in svc, name


def test_depends_on_waits_for_healthy(compose):
    svcs = compose["services"]
    k6 = svcs["k6"]["depends_on"]
    assert {name: d["condition"] for name, d in k6.items()} == {
        "rust-ws": "service_healthy",
        "python-ws": "service_healthy",
        "prometheus": "service_healthy",
    }
    assert svcs["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_servers_get_equal_overridable_limits(compose):
    rust, python = compose["services"]["rust-ws"], compose["services"]["python-ws"]
    for key in ("cpus", "mem_limit", "ulimits"):
        assert rust[key] == python[key], key
    assert rust["cpus"] == "${WS_CPUS:-1}" and rust["mem_limit"] == "${WS_MEMORY:-1g}"
    # As docker-compose resolves them: defaults, then overrides, always equal.
    resolved = compose_config()["services"]
    assert float(resolved["rust-ws"]["cpus"]) == float(resolved["python-ws"]["cpus"]) == 1.0
    assert resolved["rust-ws"]["mem_limit"] == resolved["python-ws"]["mem_limit"] == "1g"
    resolved = compose_config({"WS_CPUS": "2.5", "WS_MEMORY": "3g"})["services"]
    assert float(resolved["rust-ws"]["cpus"]) == float(resolved["python-ws"]["cpus"]) == 2.5
    assert resolved["rust-ws"]["mem_limit"] == resolved["python-ws"]["mem_limit"] == "3g"


def test_ports_bind_loopback_by_default_and_are_overridable(compose):
    expected = {
        "rust-ws": ("RUST_WS_PORT", 8000),
        "python-ws": ("PYTHON_WS_PORT", 8001),
        "prometheus": ("PROMETHEUS_PORT", 9090),
        "cadvisor": ("CADVISOR_PORT", 8080),
        "grafana": ("GRAFANA_PORT", 3000),
    }
    for name, (var, port) in expected.items():
        assert compose["services"][name]["ports"] == [
            f"${{WSLAB_BIND:-127.0.0.1}}:${{{var}:-{port}}}:{port}"
        ]
    assert "ports" not in compose["services"]["k6"]

    def host_ips(resolved):
        out = set()
        for svc in resolved["services"].values():
            for p in svc.get("ports", []):
                out.add(p.split(":")[0] if isinstance(p, str) else p.get("host_ip"))
        return out

    assert host_ips(compose_config()) == {"127.0.0.1"}
    assert host_ips(compose_config({"WSLAB_BIND": "0.0.0.0"})) == {"0.0.0.0"}
    # Host ports move with their variables (the compose smoke test uses free ones).
    moved = compose_config({"RUST_WS_PORT": "18000"})["services"]["rust-ws"]["ports"][0]
    assert "18000" in str(moved), moved


def test_servers_listen_on_their_protocol_ports(compose):
    assert compose["services"]["rust-ws"]["environment"]["WS_PORT"] == "8000"
    assert compose["services"]["python-ws"]["environment"]["WS_PORT"] == "8001"
    for name in SERVER_JOBS:
        assert compose["services"][name]["environment"]["WS_HOST"] == "0.0.0.0"


# ---------------------------------------------------------------- compose.yaml, --profile scaled


HAPROXY_CFG = REPO / "haproxy" / "haproxy.cfg"


def test_scaled_replicas_are_the_single_servers_on_the_broker(compose):
    """Same image, build, limits, ulimits, restart policy and healthcheck as the single server
    (the anchors state them once), the single server's environment plus WS_BROKER_URL, no host
    port, and WS_REPLICAS replicas (3 by default) as both Compose versions read it."""
    svcs = compose["services"]
    for kind, node in SCALED_NODES.items():
        single, replica = svcs[kind], svcs[node]
        for key in ("build", "image", "cpus", "mem_limit", "ulimits", "restart", "healthcheck"):
            assert replica[key] == single[key], (node, key)
        # Its own kind's Redis: two kinds on one Redis would be one cluster, sharing rooms.
        broker = f"redis://{SCALED_REDIS[kind]}:6379/0"
        assert replica["environment"] == {**single["environment"], "WS_BROKER_URL": broker}
        assert "ports" not in replica and "container_name" not in replica, node
        assert replica["deploy"] == {"replicas": "${WS_REPLICAS:-3}"}
    for env, n in (({}, 3), ({"WS_REPLICAS": "2"}, 2)):
        resolved = compose_config(env, profile="scaled")["services"]
        for node in SCALED_NODES.values():
            assert resolved[node]["deploy"]["replicas"] == n, (node, env)
        for lb in SCALED_LBS.values():
            assert resolved[lb]["environment"]["WS_REPLICAS"] == str(n), (lb, env)


def test_scaled_redis_and_exporter_per_kind(compose):
    svcs = compose["services"]
    first = svcs[SCALED_REDIS["rust-ws"]]
    for kind, name in SCALED_REDIS.items():
        redis = svcs[name]
        assert redis == first, "both kinds' Redis alike (one anchor)"
        assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        assert "ports" not in redis, "no host port unless asked for"
        # Nothing on disk (PROTOCOL.md section 5: a restarted lab Redis starts sequences at 1),
        # and reachable from the other containers.
        cmd = redis["command"]
        assert cmd[0] == "redis-server"
        assert cmd[cmd.index("--save") + 1] == "" and cmd[cmd.index("--appendonly") + 1] == "no"
        assert cmd[cmd.index("--protected-mode") + 1] == "no"
        exporter = svcs[SCALED_EXPORTERS[kind]]
        assert exporter["environment"] == {"REDIS_ADDR": f"redis://{name}:6379"}
        assert exporter["depends_on"] == {name: {"condition": "service_healthy"}}


def test_scaled_balancers_front_their_replicas(compose):
    svcs = compose["services"]
    for kind, lb in SCALED_LBS.items():
        svc = svcs[lb]
        port = svcs[kind]["environment"]["WS_PORT"]
        assert svc["environment"] == {
            "WS_KIND": kind,
            "WS_NODES": SCALED_NODES[kind],
            "WS_PORT": port,
            "WS_REPLICAS": "${WS_REPLICAS:-3}",
        }
        assert "./haproxy:/usr/local/etc/haproxy:ro" in svc["volumes"]
        assert svc["ulimits"] == svcs[kind]["ulimits"], "as many sockets as the servers"
        # The WebSocket port (same number inside as the server's) and the metrics port.
        inside = sorted(p.rsplit(":", 1)[1] for p in svc["ports"])
        assert inside == sorted([port, "8404"]), svc["ports"]
        for p in svc["ports"]:
            assert re.fullmatch(r"\$\{WSLAB_BIND:-127\.0\.0\.1\}:\$\{\w+:-\d+\}:\d+", p), p
        assert svc["healthcheck"]["test"][-1] == "http://127.0.0.1:8404/healthz"
    resolved = compose_config(profile="scaled")["services"]
    host_ports = [p.split(":")[1] for s in resolved.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"a host port is used twice: {host_ports}"


def test_haproxy_config_balances_websockets_on_readiness():
    cfg = HAPROXY_CFG.read_text()
    lines = [line.split("#")[0].strip() for line in cfg.splitlines()]
    for directive in (
        "balance leastconn",
        "timeout tunnel 1h",
        "timeout client-fin 30s",
        'http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host "${WS_KIND}"',
        "http-check expect status 200",
        'server-template node "${WS_REPLICAS}" "${WS_NODES}:${WS_PORT}"',
        "nameserver docker 127.0.0.11:53",
        "http-request use-service prometheus-exporter if { path /metrics }",
        'bind "*:8404"',
    ):
        assert directive in lines, directive
    default_server = next(line for line in lines if line.startswith("default-server "))
    for word in ("check", "resolvers docker", "init-addr none"):
        assert word in default_server, word


@pytest.mark.parametrize("lb", sorted(SCALED_LBS.values()))
def test_haproxy_accepts_the_config_with_each_balancers_environment(compose, lb):
    """`haproxy -c` with the environment compose gives that balancer (Debian's HAProxy 2.6, the
    stand-in's; the config uses nothing 3.2 dropped)."""
    env = {k: str(v) for k, v in compose["services"][lb]["environment"].items()}
    env["WS_REPLICAS"] = "3"
    result = run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_prometheus_finds_every_scaled_service_by_dns(compose):
    """Each DNS name Prometheus looks up is a scaled service, on the port that service serves
    metrics on; the server jobs keep their names, so job="rust-ws" holds every rust-ws replica."""
    jobs = {sc["job_name"]: sc for sc in load_yaml(PROM_CONFIG)["scrape_configs"]}
    looked_up = {}
    for job, sc in jobs.items():
        for sd in sc.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            for name in sd["names"]:
                looked_up[name] = (job, sd["port"])
    svcs = compose["services"]
    expected = {
        **{node: (kind, int(svcs[kind]["environment"]["WS_PORT"])) for kind, node in
           SCALED_NODES.items()},
        **{lb: ("haproxy", 8404) for lb in SCALED_LBS.values()},
        **{exporter: ("redis", 9121) for exporter in SCALED_EXPORTERS.values()},
    }  # fmt: skip
    assert looked_up == expected
    for name in looked_up:
        assert "scaled" in svcs[name]["profiles"], name
    # Every discovered target says which service it was found as.
    for job in {job for job, _ in looked_up.values()}:
        assert {
            "source_labels": ["__meta_dns_name"],
            "regex": "(.+)",
            "target_label": "service",
        } in jobs[job]["relabel_configs"], job


def test_prometheus_service(compose):
    prom = compose["services"]["prometheus"]
    cmd = prom["command"]
    # `command:` replaces the image's defaults, so config and storage paths are repeated.
    assert "--config.file=/etc/prometheus/prometheus.yml" in cmd
    assert "--storage.tsdb.path=/prometheus" in cmd
    assert "--web.enable-remote-write-receiver" in cmd
    # k6's trends arrive as native histograms. Prometheus stores them without a flag from 3.9 on
    # (the flag is a no-op there); an older image needs --enable-feature=native-histograms.
    version = tuple(int(x) for x in re.search(r":v(\d+)\.(\d+)", prom["image"]).groups())
    assert version >= (3, 9) or "--enable-feature=native-histograms" in cmd, prom["image"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    named = [v.split(":")[0] for v in prom["volumes"] if v.endswith(":/prometheus")]
    assert named and named[0] in compose["volumes"], "a named data volume at /prometheus"


def test_cadvisor_service(compose):
    cad = compose["services"]["cadvisor"]
    flags = cad["command"]
    for flag in (
        "--docker_only=true",
        "--allow_dynamic_housekeeping=false",
        "--store_container_labels=false",
        "--whitelisted_container_labels=com.docker.compose.service",
    ):
        assert flag in flags, flag
    assert any(re.fullmatch(r"--housekeeping_interval=\d+s", f) for f in flags)
    # What cAdvisor's README asks for.
    assert cad["privileged"] is True
    assert "/dev/kmsg" in cad["devices"]
    for mount in (
        "/:/rootfs:ro",
        "/var/run:/var/run:ro",
        "/sys:/sys:ro",
        "/var/lib/docker/:/var/lib/docker:ro",
        "/dev/disk/:/dev/disk:ro",
    ):
        assert mount in cad["volumes"], mount


def test_grafana_service(compose):
    graf = compose["services"]["grafana"]
    env = graf["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"  # never Admin or Editor
    assert env.get("GF_AUTH_DISABLE_LOGIN_FORM", "false") == "false"
    assert "GF_AUTH_BASIC_ENABLED" not in env or env["GF_AUTH_BASIC_ENABLED"] == "true"
    mounts = dict(v.rsplit(":", 2)[:2] for v in graf["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    # The home dashboard is the lab dashboard, through the dashboards mount.
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host_dir = next(h for h, c in mounts.items() if home.startswith(c + "/"))
    assert (REPO / host_dir / Path(home).relative_to(mounts[host_dir])) == DASHBOARD
    # The provider loads the same directory.
    provider = load_yaml(DASH_PROVIDERS)["providers"][0]
    assert provider["options"]["path"] == mounts[host_dir]


def test_k6_service(compose):
    k6 = compose["services"]["k6"]
    assert k6["profiles"] == ["load"]
    env = k6["environment"]
    assert env["RUST_WS_URL"] == "ws://rust-ws:8000/ws"
    assert env["PYTHON_WS_URL"] == "ws://python-ws:8001/ws"
    assert env["K6_PROMETHEUS_RW_SERVER_URL"] == "http://prometheus:9090/api/v1/write"
    # Trends as native histograms, as the Kubernetes TestRun's runners send them: the dashboard's
    # percentiles are histogram_quantile over histograms summed across runners.
    assert env["K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM"] == "true"
    assert "K6_PROMETHEUS_RW_TREND_STATS" not in env, "ignored when trends are native histograms"
    # Resolved by compose itself: the default of ${WSLAB_NOFILE:-65536}, as integers.
    for name in ("k6", "rust-ws", "python-ws"):
        nofile = compose_config()["services"][name]["ulimits"]["nofile"]
        assert nofile == {"soft": 65536, "hard": 65536}, (name, nofile)
    low, high = map(int, k6["sysctls"]["net.ipv4.ip_local_port_range"].split())
    assert high - low >= 30000
    cmd = k6["command"]
    assert cmd[0] == "run" and "experimental-prometheus-rw" in cmd
    assert any(c.startswith("testid=") for c in cmd)
    mounts = dict(v.rsplit(":", 2)[:2] for v in k6["volumes"])
    assert mounts["./k6"] == "/k6"
    script = cmd[-1]
    assert script == "/k6/scripts/both.js"
    assert (REPO / "k6" / "scripts" / "both.js").is_file(), "compose's default k6 script"


# ---------------------------------------------------------------- prometheus/


def test_promtool_check_config():
    result = run([PROMTOOL, "check", "config", str(PROM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules():
    files = sorted(str(p) for p in (PROM_DIR / "rules").glob("*.yml"))
    assert files
    result = run([PROMTOOL, "check", "rules", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    result = run([PROMTOOL, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_scrape_jobs_and_interval():
    config = load_yaml(PROM_CONFIG)
    jobs = {sc["job_name"]: sc for sc in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "rust-ws", "python-ws", "cadvisor", "haproxy", "redis"}
    assert jobs["rust-ws"]["static_configs"][0]["targets"] == ["rust-ws:8000"]
    assert jobs["python-ws"]["static_configs"][0]["targets"] == ["python-ws:8001"]
    assert jobs["cadvisor"]["static_configs"][0]["targets"] == ["cadvisor:8080"]
    interval = config["global"]["scrape_interval"]
    assert re.fullmatch(r"\d+s", interval) and int(interval[:-1]) <= 15
    # Grafana's $__rate_interval is derived from the datasource's timeInterval.
    ds = load_yaml(DATASOURCES)["datasources"][0]
    assert ds["jsonData"]["timeInterval"] == interval


def test_cadvisor_keep_filter_keeps_what_the_dashboard_reads():
    config = load_yaml(PROM_CONFIG)
    cad = next(sc for sc in config["scrape_configs"] if sc["job_name"] == "cadvisor")
    keep = next(r for r in cad["metric_relabel_configs"] if r["action"] == "keep")
    used = set()
    for q in dashboard_queries():
        if is_cadvisor(q.expr):
            used |= {m for m in metric_names(q.expr) if m.startswith("container_")}
    assert "container_cpu_usage_seconds_total" in used
    for metric in used:
        assert re.fullmatch(keep["regex"], metric), f"{metric} is dropped by the keep filter"
    assert not re.fullmatch(keep["regex"], "container_fs_reads_total")


def test_recorded_series_used_by_the_dashboard_exist():
    recorded = set()
    for path in (PROM_DIR / "rules").glob("*.yml"):
        for group in load_yaml(path)["groups"]:
            recorded |= {r["record"] for r in group["rules"] if "record" in r}
    used = set()
    for q in dashboard_queries():
        used |= {m for m in metric_names(q.expr) if ":" in m}
    assert used, "the quantile panels read the recording rules"
    assert used <= recorded, used - recorded


# ---------------------------------------------------------------- grafana/


def test_datasource_provisioning():
    doc = load_yaml(DATASOURCES)
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "wslab-prometheus"
    # Reachable by compose service name and port.
    assert ds["url"] == "http://prometheus:9090"
    assert ds["access"] == "proxy" and ds["isDefault"] is True


def test_dashboard_provider_provisioning():
    doc = load_yaml(DASH_PROVIDERS)
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_dashboard_identity(dashboard):
    assert dashboard["uid"] == "wslab-main"
    assert dashboard["title"] == "WebSocket servers: Rust vs Python"
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert "__inputs" not in dashboard


def test_no_import_placeholders():
    assert "${DS_" not in DASHBOARD.read_text()


def test_every_datasource_reference_is_the_provisioned_uid(dashboard):
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    refs = []

    def walk(node, path):
        if isinstance(node, dict):
            if "datasource" in node and path[-1:] != ["annotations-list"]:
                refs.append((path, node["datasource"]))
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, str(i)])

    walk({k: v for k, v in dashboard.items() if k != "annotations"}, [])
    panels = [p for p in all_panels(dashboard) if p["type"] != "row"]
    assert len(refs) == len(panels) + len(dashboard_queries(dashboard)) + 1  # + the variable
    for path, ref in refs:
        assert isinstance(ref, dict), f"{'/'.join(path)}: datasource by name, not uid: {ref!r}"
        assert ref == {"type": "prometheus", "uid": uid}, f"{'/'.join(path)}: {ref}"
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == uid, (panel["title"], t["refId"])


def test_panel_ids_unique_and_layout_does_not_overlap(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_ref_ids_unique_per_panel(dashboard):
    for p in all_panels(dashboard):
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]


def test_testid_variable(dashboard):
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "testid"]
    # No `definition` (the display copy of the query Grafana's editor writes): @grafana/schema's
    # VariableModel has no such field (test_dashboard_types.py); the query itself is `query`.
    assert var["type"] == "query" and "definition" not in var
    assert var["query"]["query"] == "label_values(k6_vus, testid)"
    assert var["includeAll"] and var["allValue"] == ".*"
    for q in dashboard_queries(dashboard):
        if "k6_" in q.expr:
            # Every selector of a k6 series filters on the chosen runs.
            for sel in re.findall(r"k6_\w+\{([^}]*)\}", q.expr):
                assert 'testid=~"$testid"' in sel, q.test_id


def test_servers_selected_by_job_containers_by_service_label(dashboard):
    text = json.dumps(dashboard)
    # Never by compose project or container name: renaming the folder must not break panels.
    for bad in (
        "compose_project",
        "container_name",
        "name=~",
        'name="',
        "wslab-rust",
        "wslab_rust",
    ):
        assert bad not in text, bad
    for q in dashboard_queries(dashboard):
        if is_cadvisor(q.expr):
            # Every cAdvisor metric is read twice: by compose service and by kubelet container.
            sels = re.findall(r"container_\w+\{([^}]*)\}", q.expr)
            # Compose's per-replica panels add the scaled profile's replica services.
            services = (
                '=~"rust-ws|python-ws"',
                '=~"rust-ws|python-ws|rust-ws-node|python-ws-node"',
            )
            compose = [x for x in sels if x in [CADVISOR_LABEL + v for v in services]]
            kubelet = [x for x in sels if x == CONTAINER_LABEL + '=~"rust-ws|python-ws"']
            assert compose and len(compose) == len(kubelet) == len(sels) / 2, (q.test_id, sels)
            assert len(set(compose)) == 1, (q.test_id, sels)
            assert q.expr.startswith(
                ("sum by (container) (", "max by (container) (", "sum by (container, replica) (")
            ), q.test_id
        elif "k6_" not in q.expr:
            for sel in re.findall(r"\b[a-z_:]+\{([^}]*)\}", q.expr):
                assert re.search(r'\bjob=~?"', sel), f"{q.test_id}: {sel}"
            assert expected_servers(q) <= set(SERVER_JOBS), q.test_id
            # Only Redis's panels name no server: one Redis serves both kinds.
            assert expected_servers(q) or q.expr.count(f'job="{REDIS_JOB}"') == len(
                re.findall(r"\b[a-z_:]+\{", q.expr)
            ), q.test_id


def test_time_panels_use_seconds(dashboard):
    timed = 0
    for p in all_panels(dashboard):
        exprs = " ".join(t["expr"] for t in p.get("targets", []))
        if re.search(
            r"_seconds(_bucket)?\b|_seconds:|k6_(ws_connecting|wslab_rtt|wslab_delivery_latency)_",
            exprs,
        ) and not re.search(r"process_cpu_seconds_total|container_cpu_usage_seconds_total", exprs):
            timed += 1
            unit = p["fieldConfig"]["defaults"].get("unit")
            if p["type"] == "heatmap":
                unit = p["options"]["yAxis"]["unit"]
            assert unit == "s", f"{p['title']}: unit {unit!r}; k6 and the servers report seconds"
    assert timed >= 8


REQUIRED_METRICS = {
    "ws_connections",
    "all_ws_connections_total",
    "ws_closed_conns_errors_total",
    "ws_messages_received_total",
    "ws_messages_sent_total",
    "ws_message_handling_duration_seconds_bucket",
    "ws_broadcast_duration_seconds_bucket",
    "job:ws_message_handling_duration_seconds:histogram_quantile_rate30s",
    "job:ws_broadcast_duration_seconds:histogram_quantile_rate30s",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "k6_vus",
    "k6_ws_sessions_total",
    "k6_ws_connecting_seconds",
    "k6_wslab_rtt_seconds",
    "k6_ws_msgs_sent_total",
    "k6_ws_msgs_received_total",
    "k6_checks_rate",
    "k6_wslab_errors_total",
    "k6_wslab_unclean_closes_total",
    # Several nodes (PROTOCOL.md sections 4 and 5).
    "ws_node_info",
    "ws_broker_up",
    "ws_broker_published_total",
    "ws_broker_received_total",
    "ws_broker_publish_failures_total",
    "job:ws_broker_publish_duration_seconds:histogram_quantile_rate30s",
    # Redis, from redis_exporter.
    "redis_cpu_user_seconds_total",
    "redis_cpu_sys_seconds_total",
    "redis_memory_used_bytes",
    "redis_connected_clients",
    "redis_pubsub_channels",
    "redis_pubsub_patterns",
    # The balancers, from HAProxy's own exporter.
    "haproxy_server_current_sessions",
    "haproxy_frontend_connections_total",
    "haproxy_server_sessions_total",
    "haproxy_server_status",
}


def test_dashboard_covers_every_metric_with_heatmaps_and_percentiles(dashboard):
    used = set()
    for q in dashboard_queries(dashboard):
        used |= metric_names(q.expr)
    assert used >= REQUIRED_METRICS, REQUIRED_METRICS - used
    # A heatmap per histogram per server.
    heatmaps = {
        (m, s)
        for p in all_panels(dashboard)
        if p["type"] == "heatmap"
        for t in p["targets"]
        for m in metric_names(t["expr"])
        for s in re.findall(r'job="([^"]+)"', t["expr"])
    }
    assert heatmaps == {
        (f"ws_{h}_duration_seconds_bucket", s)
        for h in ("message_handling", "broadcast")
        for s in SERVER_JOBS
    }
    quantiles = {
        re.search(r'quantile="([^"]+)"', q.expr).group(1)
        for q in dashboard_queries(dashboard)
        if "histogram_quantile" in q.expr and "k6_" not in q.expr
    }
    assert quantiles == {"0.5", "0.95", "0.99"}


# Server series whose sum over a job's nodes hides how the nodes differ: each has a total panel
# (`sum by (job)`) and a per-node view.
PER_NODE = (
    "ws_connections",
    "ws_messages_received_total",
    "ws_messages_sent_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
)
# A per-node query: the series summed per target, named by the node id that ws_node_info gives it.
NODE_JOIN = ' * on (job, instance) group_left (node_id) ws_node_info{job=~"rust-ws|python-ws"'


def test_per_node_views_beside_the_totals(dashboard):
    queries = dashboard_queries(dashboard)
    for metric in PER_NODE:
        reading = [q for q in queries if re.search(rf"\b{metric}\{{", q.expr)]
        totals = [q for q in reading if q.expr.startswith(("sum by (job) (", "sum by (job, "))]
        totals = [q for q in totals if not q.expr.startswith("sum by (job, instance) (")]
        assert totals and all(NODE_JOIN not in q.expr for q in totals), metric
        per_node = [q for q in reading if q.expr.startswith("sum by (job, instance) (")]
        assert per_node, f"{metric}: no per-node view"
        for q in per_node:
            assert NODE_JOIN in q.expr, q.test_id
    # Every per-node line is named by its job and node id.
    for panel in all_panels(dashboard):
        for t in panel.get("targets", []):
            if "group_left (node_id)" in t["expr"]:
                assert t["legendFormat"].startswith("{{job}} {{node_id}}"), panel["title"]
    # The broker's up state only for nodes that have a broker (it is always 0 without one).
    for q in [q for q in queries if "ws_broker_up{" in q.expr]:
        assert 'ws_node_info{job=~"rust-ws|python-ws",broker!="none"}' in q.expr, q.test_id


def test_state_timelines_name_every_value_their_query_gives(dashboard):
    """The timelines' queries give codes, the value mappings name every one: ws_broker_up 0 and 1,
    and HAProxy's server states (each series of haproxy_server_status is 1 for its state)."""
    timelines = [p for p in all_panels(dashboard) if p["type"] == "state-timeline"]
    assert {p["title"] for p in timelines} == {
        "Broker up per node",
        "Balancer health check per replica (/readyz)",
    }
    for panel in timelines:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        named = {int(v) for v in mapping["options"]}
        (target,) = panel["targets"]
        if "haproxy_server_status" in target["expr"]:
            codes = {
                int(code): state
                for code, state in re.findall(
                    r'(\d) \* haproxy_server_status\{[^}]*state="(\w+)"\}', target["expr"]
                )
            }
            # HAProxy 2.6 and 3.x export these five states; every one has a code.
            assert sorted(codes.values()) == ["DOWN", "DRAIN", "MAINT", "NOLB", "UP"]
            assert named == set(codes)
            for code, state in codes.items():
                assert mapping["options"][str(code)]["text"].split()[0] == state.lower()
        else:
            assert named == {0, 1}


def test_balancer_and_redis_panels_read_their_jobs(dashboard):
    for q in dashboard_queries(dashboard):
        if "haproxy_" in q.expr:
            for sel in re.findall(r"haproxy_\w+\{([^}]*)\}", q.expr):
                assert sel.startswith(f'job="{BALANCER_JOB}",proxy=~"rust-ws|python-ws"'), sel
        if "redis_" in q.expr:
            for sel in re.findall(r"redis_\w+\{([^}]*)\}", q.expr):
                assert sel == f'job="{REDIS_JOB}"', sel


def test_every_query_substitutes_cleanly(dashboard):
    for q in dashboard_queries(dashboard):
        expr = substitute(q.expr, {"testid": "x"})
        # Only label_replace's regex group references ("$1") may remain.
        assert not re.search(r"\$(?![0-9])", expr), q.test_id


# ---------------------------------------------------------------- distributed k6 runs

# k6's trends as native histograms (K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM=true): time trends
# are named k6_<trend>_seconds.
K6_HISTOGRAMS = ("k6_ws_connecting_seconds", "k6_wslab_rtt_seconds")


def test_k6_percentiles_come_from_histograms_summed_over_runners(dashboard):
    """A percentile can't be averaged, summed or max'ed over runners: every k6 percentile is
    histogram_quantile over the native histograms summed across runners (instance_id dropped),
    and no panel reads the per-process percentile gauges (k6_*_p95 and friends)."""
    quantile_queries = 0
    for q in dashboard_queries(dashboard):
        if "k6_" not in q.expr:
            continue
        assert not re.search(r"k6_\w+_p\d+\{", q.expr), q.test_id
        assert not re.search(r"k6_(ws_connecting|wslab_\w+)_(avg|min|max|med|count)\{", q.expr)
        for metric in K6_HISTOGRAMS:
            if metric in q.expr:
                quantile_queries += 1
                assert re.fullmatch(
                    r"histogram_quantile\(0\.\d+, sum by \(server\) \(rate\("
                    + metric
                    + r'\{testid=~"\$testid"\}\[\$__rate_interval\]\)\)\)',
                    q.expr,
                ), q.test_id
    assert quantile_queries == 4  # p95 and p99 of ws_connecting and wslab_rtt


def test_k6_counts_are_summed_over_runners(dashboard):
    """Counts and rates from k6 add up over runners: `sum`, never `max`/`avg` of a counter."""
    for q in dashboard_queries(dashboard):
        for counter in re.findall(r"k6_\w+_total", q.expr):
            assert not re.search(r"\b(max|avg|min) by \([^)]*\) \((rate\()?" + counter, q.expr)
            assert re.search(r"sum by \([^)]*\) \((rate\()?" + counter, q.expr), q.test_id


def _container_expr_test(expr: str, eval_time: str, expected: dict[tuple, float]) -> dict:
    """expected: value by (container,) or (container, replica)."""
    names = ("container", "replica")
    return {
        "expr": expr,
        "eval_time": eval_time,
        "exp_samples": [
            {
                "labels": "{"
                + ",".join(f'{n}="{v}"' for n, v in zip(names[: len(key)], key, strict=True))
                + "}",
                "value": value,
            }
            for key, value in sorted(expected.items())
        ],
    }


def test_container_panels_read_compose_and_kubelet_cadvisor(tmp_path, dashboard):
    """The container panels' queries, run by promtool on series labelled as compose's cAdvisor
    labels them and as a kubelet's cAdvisor does (with the pod-level and pause-container series a
    kubelet also exports, which must not count), give one line per server either way, and the
    per-replica panels one line per container: compose's single servers and scaled replicas (by
    container name), the kubelet's pods (by pod name; the totals sum a kind's pods)."""
    # (kind, replica, CPU in cores, working set) per container. Compose's cAdvisor labels a
    # container with its compose service and name (no `container` label): the single servers and
    # two replicas of the scaled profile's rust-ws-node. The kubelet's labels it with container,
    # pod and namespace: two rust-ws pods, one python-ws pod.
    containers = {
        "cadvisor": [
            ("rust-ws", "wslab-rust-ws-1", 0.5, 3e8),
            ("python-ws", "wslab-python-ws-1", 0.25, 2e8),
            ("rust-ws-node", "wslab-rust-ws-node-1", 0.125, 1e8),
            ("rust-ws-node", "wslab-rust-ws-node-2", 0.375, 1.5e8),
        ],
        "kubelet-cadvisor": [
            ("rust-ws", "rust-ws-7d9f", 0.5, 3e8),
            ("rust-ws", "rust-ws-2b7c", 0.125, 1e8),
            ("python-ws", "python-ws-5c4b", 0.25, 2e8),
        ],
    }

    def labels(job: str, kind: str, replica: str) -> str:
        if job == "cadvisor":
            return f'job="cadvisor",{CADVISOR_LABEL}="{kind}",name="{replica}"'
        return f'job="{job}",container="{kind}",pod="{replica}",namespace="wslab"'

    # The kubelet also exports container="" (the pod's cgroup), "POD" (the pause container) and
    # every other container; none may count.
    extra = [
        'job="kubelet-cadvisor",container="",pod="rust-ws-7d9f",namespace="wslab"',
        'job="kubelet-cadvisor",container="POD",pod="rust-ws-7d9f",namespace="wslab"',
        'job="kubelet-cadvisor",container="grafana",pod="grafana-1",namespace="wslab"',
    ]
    input_series = {}
    for job, rows in containers.items():
        series = []
        for kind, replica, cpu, mem in rows:
            lab = labels(job, kind, replica)
            # 5 s scrapes over 2 minutes: CPU seconds grow by cpu*5 each step.
            series += [
                {
                    "series": f"container_cpu_usage_seconds_total{{{lab}}}",
                    "values": f"0+{cpu * 5}x24",
                },
                {"series": f"container_spec_cpu_quota{{{lab}}}", "values": "150000x24"},
                {"series": f"container_spec_cpu_period{{{lab}}}", "values": "100000x24"},
                {
                    "series": f"container_memory_working_set_bytes{{{lab}}}",
                    "values": f"{mem:.0f}x24",
                },
                {
                    "series": f"container_spec_memory_limit_bytes{{{lab}}}",
                    "values": "1073741824x24",
                },
            ]
        if job == "kubelet-cadvisor":
            for lab in extra:
                series += [
                    {"series": f"container_cpu_usage_seconds_total{{{lab}}}", "values": "0+9x24"},
                    {"series": f"container_memory_working_set_bytes{{{lab}}}", "values": "7e9x24"},
                ]
        input_series[job] = series
    cadvisor_queries = [q for q in dashboard_queries(dashboard) if is_cadvisor(q.expr)]
    assert len(cadvisor_queries) == 8
    tests = []
    for job, rows in containers.items():
        exprs = []
        for q in cadvisor_queries:
            expr = substitute(q.expr, {})
            replicas = "by (container, replica)" in expr
            # The totals read the single servers (compose) or every pod of a kind (kubelet); the
            # per-replica panels add compose's replica services.
            rows_read = [r for r in rows if "rust-ws-node" in expr or r[0] in SERVER_JOBS]
            expected: dict[tuple, float] = {}
            for kind, replica, cpu, mem in rows_read:
                key = (kind, replica) if replicas else (kind,)
                if "cpu_usage" in expr:
                    expected[key] = expected.get(key, 0) + cpu
                elif "cpu_quota" in expr:
                    expected[(kind,)] = 1.5
                elif "working_set" in expr:
                    expected[key] = expected.get(key, 0) + mem
                else:
                    expected[(kind,)] = 1073741824
            exprs.append(_container_expr_test(expr, "100s", expected))
        tests.append(
            {"interval": "5s", "input_series": input_series[job], "promql_expr_test": exprs}
        )
    test_file = tmp_path / "container_panels_test.yml"
    # evaluation_interval as in prometheus.yml; promtool's default (1m) would thin the samples.
    doc = {"rule_files": [], "evaluation_interval": "5s", "tests": tests}
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run([PROMTOOL, "test", "rules", test_file.name], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
