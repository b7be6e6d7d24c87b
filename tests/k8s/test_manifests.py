"""deploy/k8s (the lab) and deploy/k8s/run (the k6-operator TestRun), checked offline.

- Both trees render with plain `kubectl kustomize` (no --load-restrictor flag).
- Every core object validates, strictly (unknown fields are errors), against the schemas of the
  pinned Kubernetes version (k8slib.KUBERNETES_VERSION, kubernetes-validate). A deliberately wrong
  object fails the same check.
- The TestRun uses only the fields k6-operator's API defines (k6.io/v1alpha1 TestRunSpec and its
  Pod type, api/v1alpha1/testrun_types.go), the core types inside it (env, resources, volumes,
  securityContext) validate as the Pod the operator builds from them, and its script, env and
  arguments point at what the lab renders.
- Nothing is a second copy: the dashboard, Grafana's provisioning, the rules and the k6 scripts in
  the ConfigMaps are byte for byte the repo's files, all of them; images, flags and settings match
  compose.yaml; both servers get the same Guaranteed resources and PROTOCOL.md's settings, and
  both real servers start with those settings.

Run: .venv/bin/pytest tests/k8s/test_manifests.py -q (about 10 s).
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from harness import http_get, running_redis, running_server
from k8slib import (
    KUBERNETES_VERSION,
    LAB,
    REPO,
    RUN,
    config_map,
    container,
    objects,
    render,
)

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SERVERS = {"rust-ws": ("rust", 8000), "python-ws": ("python", 8001)}

# k6-operator's TestRun API, k6.io/v1alpha1 (api/v1alpha1/testrun_types.go): the JSON names of
# TestRunSpec's fields and of its Pod type's (used by runner, starter and initializer).
TESTRUN_SPEC_FIELDS = {
    "script", "parallelism", "separate", "arguments", "ports", "initializer", "starter",
    "runner", "quiet", "paused", "scuttle", "cleanup", "cloud", "testRunId", "token",
}  # fmt: skip
TESTRUN_POD_FIELDS = {
    "disabled", "affinity", "automountServiceAccountToken", "env", "image", "imagePullSecrets",
    "imagePullPolicy", "metadata", "nodeSelector", "tolerations", "topologySpreadConstraints",
    "resources", "serviceAccountName", "securityContext", "containerSecurityContext", "envFrom",
    "readinessProbe", "livenessProbe", "initContainers", "volumes", "volumeMounts",
    "priorityClassName", "schedulerName",
}  # fmt: skip
TESTRUN_SCRIPT_FIELDS = {"volumeClaim", "configMap", "localFile"}


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def all_objects() -> list[dict]:
    return [*render(LAB), *render(RUN)]


# ---------------------------------------------------------------- rendering and schemas


def test_trees_render_with_plain_kubectl_kustomize():
    kinds = sorted({o["kind"] for o in render(LAB)})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert sorted(o["kind"] for o in render(RUN)) == ["ConfigMap", "ConfigMap", "TestRun"]
    for o in all_objects():
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "wslab", o["metadata"]["name"]


@pytest.mark.parametrize(
    "obj",
    [o for o in all_objects() if o["kind"] != "TestRun"],
    ids=lambda o: f"{o['kind']}-{o['metadata']['name']}",
)
def test_core_object_validates_against_pinned_kubernetes(obj):
    validate(obj)


def test_validation_rejects_wrong_objects():
    deployment = copy.deepcopy(objects(LAB, "Deployment")["rust-ws"])
    container(deployment)["readinessProbes"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(objects(LAB, "Deployment")["rust-ws"])
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


# ---------------------------------------------------------------- the TestRun


@pytest.fixture(scope="module")
def testrun() -> dict:
    (tr,) = objects(RUN, "TestRun").values()
    return tr


def test_testrun_uses_only_k6_operator_fields(testrun):
    assert testrun["apiVersion"] == "k6.io/v1alpha1" and testrun["kind"] == "TestRun"
    assert set(testrun) == {"apiVersion", "kind", "metadata", "spec"}
    spec = testrun["spec"]
    assert set(spec) <= TESTRUN_SPEC_FIELDS, set(spec) - TESTRUN_SPEC_FIELDS
    assert {"script", "parallelism"} <= set(spec)  # required by the CRD
    assert set(spec["script"]) <= TESTRUN_SCRIPT_FIELDS and len(spec["script"]) == 1
    for pod in ("runner", "initializer"):
        assert set(spec[pod]) <= TESTRUN_POD_FIELDS, set(spec[pod]) - TESTRUN_POD_FIELDS
    assert isinstance(spec["parallelism"], int) and spec["parallelism"] == 4
    assert isinstance(spec["separate"], bool)


def as_pod(name: str, pod: dict) -> dict:
    """The Pod k6-operator builds from a TestRun Pod section (runner.go), to validate the core
    types inside it: env, resources, volumes, volumeMounts, securityContext."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": pod.get("securityContext", {}),
            "volumes": pod.get("volumes", []),
            "containers": [
                {
                    "name": "k6",
                    "image": pod["image"],
                    "env": pod.get("env", []),
                    "resources": pod.get("resources", {}),
                    "volumeMounts": pod.get("volumeMounts", []),
                }
            ],
        },
    }


def test_testrun_core_types_validate(testrun):
    for section in ("runner", "initializer"):
        validate(as_pod(f"wslab-{section}", testrun["spec"][section]))


def test_testrun_runner_and_initializer_see_the_same_files_and_env(testrun):
    runner, init = testrun["spec"]["runner"], testrun["spec"]["initializer"]
    for key in ("image", "env", "volumes", "volumeMounts"):
        assert runner[key] == init[key], key
    # The runner image is the k6 compose runs: the same k6 as every other run of the lab.
    assert runner["image"] == SERVICES["k6"]["image"] == "grafana/k6:1.1.0"


def test_testrun_arguments(testrun):
    args = shlex.split(testrun["spec"]["arguments"])
    i = args.index("-o")
    assert args[i + 1] == "experimental-prometheus-rw"
    i = args.index("--tag")
    assert re.fullmatch(r"testid=[a-z0-9-]+", args[i + 1]), args
    # k6-operator adds the execution segments, instance_id and testrun_name tags itself.
    for own in ("--execution-segment", "instance_id", "testrun_name", "--address", "--paused"):
        assert not any(own in a for a in args), own


def test_testrun_script_is_the_repo_script_with_its_lib(testrun):
    spec = testrun["spec"]
    script = Path(spec["script"]["localFile"])
    mounts = {m["mountPath"]: m["name"] for m in spec["runner"]["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in spec["runner"]["volumes"]}
    configmaps = objects(RUN, "ConfigMap")
    files = {}
    for path, volume in mounts.items():
        for key in configmaps[volumes[volume]]["data"]:
            files[Path(path) / key] = configmaps[volumes[volume]]["data"][key]
    assert script in files, f"{script} is not in a mounted ConfigMap"
    # The mounts rebuild k6/'s layout, so '../lib/x.js' imports resolve as in the repo.
    root = script.parent.parent
    for path, text in files.items():
        assert (REPO / "k6" / path.relative_to(root)).read_text() == text, path
    in_repo = {p.relative_to(REPO / "k6") for p in (REPO / "k6").glob("*/*.js")}
    assert {p.relative_to(root) for p in files} == in_repo, "every k6 script and lib file"


def test_testrun_env_points_at_the_lab(testrun):
    env = {e["name"]: e["value"] for e in testrun["spec"]["runner"]["env"]}
    services = objects(LAB, "Service")

    def service_port(url: str) -> tuple[str, int]:
        m = re.fullmatch(r"(?:http|ws)://([a-z0-9-]+):(\d+)/.*", url)
        assert m, url
        return m.group(1), int(m.group(2))

    for var, path in (
        ("K6_PROMETHEUS_RW_SERVER_URL", "/api/v1/write"),
        ("RUST_WS_URL", "/ws"),
        ("PYTHON_WS_URL", "/ws"),
    ):
        name, port = service_port(env[var])
        assert env[var].endswith(path), var
        assert port in [p["port"] for p in services[name]["spec"]["ports"]], var
    assert service_port(env["RUST_WS_URL"])[0] == "rust-ws"
    assert service_port(env["PYTHON_WS_URL"])[0] == "python-ws"
    # The same remote-write settings as the compose k6 service, so both read the same.
    compose_env = SERVICES["k6"]["environment"]
    for key, value in compose_env.items():
        if key.startswith("K6_PROMETHEUS_RW_") and key != "K6_PROMETHEUS_RW_SERVER_URL":
            assert env[key] == str(value), key
    assert env["K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM"] == "true"


def test_non_root_pods_name_their_user_by_number(testrun):
    """A kubelet refuses to start a runAsNonRoot container whose image names its user by name
    (prom/prometheus: USER nobody), so every such pod sets runAsUser."""
    contexts = [
        d["spec"]["template"]["spec"]["securityContext"]
        for d in objects(LAB, "Deployment").values()
    ]
    contexts.append(testrun["spec"]["runner"]["securityContext"])
    for sc in contexts:
        assert sc["runAsNonRoot"] is True
        assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0, sc


def test_testrun_runner_resources(testrun):
    resources = testrun["spec"]["runner"]["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    sysctls = {
        s["name"]: s["value"] for s in testrun["spec"]["runner"]["securityContext"]["sysctls"]
    }
    assert sysctls == {
        "net.ipv4.ip_local_port_range": SERVICES["k6"]["sysctls"]["net.ipv4.ip_local_port_range"]
    }


# ---------------------------------------------------------------- no second copy


def test_configmaps_hold_the_repo_files_all_of_them():
    cases = {
        "wslab-grafana-dashboards": REPO / "grafana" / "dashboards",
        "wslab-grafana-datasources": REPO / "grafana" / "provisioning" / "datasources",
        "wslab-grafana-dashboard-providers": REPO / "grafana" / "provisioning" / "dashboards",
        "wslab-prometheus-rules": REPO / "prometheus" / "rules",
    }
    for prefix, folder in cases.items():
        data = config_map(LAB, prefix)["data"]
        files = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
        assert data == files, prefix


def test_prometheus_rules_in_the_configmap_pass_promtool(tmp_path):
    for name, text in config_map(LAB, "wslab-prometheus-rules")["data"].items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["promtool", "check", "rules", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_matches_compose_but_for_discovery():
    compose_cfg = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    k8s_cfg = yaml.safe_load(config_map(LAB, "wslab-prometheus-config")["data"]["prometheus.yml"])
    for key in ("global", "rule_files"):
        assert k8s_cfg[key] == compose_cfg[key], key
    jobs = {sc["job_name"]: sc for sc in k8s_cfg["scrape_configs"]}
    # Compose's jobs but for cAdvisor (the kubelet's here) and HAProxy (Services balance here).
    compose_jobs = {sc["job_name"] for sc in compose_cfg["scrape_configs"]}
    assert set(jobs) == compose_jobs - {"cadvisor", "haproxy"} | {"kubelet-cadvisor"}
    services = objects(LAB, "Service")
    for job, service_names, port_name in (
        *((job, [job], "http") for job in SERVERS),
        ("redis", [f"{job}-redis" for job in SERVERS], "metrics"),
    ):
        sd = jobs[job]["kubernetes_sd_configs"]
        assert sd == [{"role": "endpointslice", "namespaces": {"own_namespace": True}}]
        keep = [r for r in jobs[job]["relabel_configs"] if r.get("action") == "keep"]
        assert keep, job
        # The keep rule matches exactly the Services of the job, on the port that serves metrics.
        regex = re.compile(keep[0]["regex"])
        for name, service in services.items():
            for port in service["spec"]["ports"]:
                match = bool(regex.fullmatch(f"{name};{port['name']}"))
                assert match == (name in service_names and port["name"] == port_name), (
                    job,
                    name,
                    port["name"],
                )
        assert all(port_name in [p["name"] for p in services[n]["spec"]["ports"]] for n in
                   service_names), job  # fmt: skip
    # The kubelet's cAdvisor keeps exactly what compose's cAdvisor job keeps.
    compose_keep = next(
        r for sc in compose_cfg["scrape_configs"] if sc["job_name"] == "cadvisor"
        for r in sc["metric_relabel_configs"]
    )  # fmt: skip
    cad = jobs["kubelet-cadvisor"]
    assert cad["metric_relabel_configs"] == [compose_keep]
    assert cad["kubernetes_sd_configs"] == [{"role": "node"}]
    assert any(
        r.get("replacement") == "/api/v1/nodes/$1/proxy/metrics/cadvisor"
        for r in cad["relabel_configs"]
    )


def test_prometheus_deployment_matches_compose():
    deployment = objects(LAB, "Deployment")["prometheus"]
    c = container(deployment)
    assert c["image"] == SERVICES["prometheus"]["image"]
    compose_flags = [f.split("=")[0] for f in SERVICES["prometheus"]["command"]]
    assert [f.split("=")[0] for f in c["args"]] == compose_flags
    assert "--web.enable-remote-write-receiver" in c["args"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # prometheus.yml and rules/ side by side, so `rule_files: [rules/*.yml]` finds the rules.
    assert mounts["/etc/prometheus/prometheus.yml"]["subPath"] == "prometheus.yml"
    assert "/etc/prometheus/rules" in mounts
    # Discovery and the kubelet scrape need these, cluster-wide.
    (role,) = objects(LAB, "ClusterRole").values()
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    for need in (("", "nodes/proxy"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")):
        assert need in granted, need
    (binding,) = objects(LAB, "ClusterRoleBinding").values()
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "wslab"}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "prometheus"


def test_grafana_deployment_matches_compose():
    c = container(objects(LAB, "Deployment")["grafana"])
    assert c["image"] == SERVICES["grafana"]["image"]
    env = {e["name"]: e["value"] for e in c["env"]}
    for key, value in SERVICES["grafana"]["environment"].items():
        expected = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))  # compose's default
        assert env[key] == expected, key
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for volume in SERVICES["grafana"]["volumes"]:
        target = volume.split(":")[1]
        assert any(m == target or m.startswith(target + "/") for m in mounts), target
    # The datasource URL is the Prometheus Service, as it is the compose service.
    ds = yaml.safe_load(config_map(LAB, "wslab-grafana-datasources")["data"]["prometheus.yml"])[
        "datasources"
    ][0]
    service = objects(LAB, "Service")["prometheus"]
    assert ds["url"] == f"http://prometheus:{service['spec']['ports'][0]['port']}"


# ---------------------------------------------------------------- the servers


def test_servers_images_ports_and_services():
    deployments, services = objects(LAB, "Deployment"), objects(LAB, "Service")
    for name, (_kind, port) in SERVERS.items():
        c = container(deployments[name])
        assert c["image"] == SERVICES[name]["image"], "the image compose builds and tags"
        assert c["ports"] == [{"name": "http", "containerPort": port}]
        assert services[name]["spec"]["ports"] == [
            {"name": "http", "port": port, "targetPort": "http"}
        ]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env == {
            "WS_HOST": "0.0.0.0",
            "WS_PORT": str(port),
            # Unique per pod (the default could repeat within a ReplicaSet, PROTOCOL.md section 1).
            "WS_NODE_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
            # Its own kind's Redis: one Redis serves one cluster (PROTOCOL.md section 5).
            "WS_BROKER_URL": f"redis://{name}-redis:6379/0",
        }


def test_servers_get_equal_guaranteed_resources():
    deployments = objects(LAB, "Deployment")
    resources = [container(deployments[name])["resources"] for name in SERVERS]
    assert resources[0] == resources[1]
    r = resources[0]
    # Guaranteed QoS: every container has CPU and memory requests equal to its limits.
    assert set(r["limits"]) == {"cpu", "memory"} and r["requests"] == r["limits"]
    for name in SERVERS:
        assert len(deployments[name]["spec"]["template"]["spec"]["containers"]) == 1


def test_servers_probes_and_security():
    for name in SERVERS:
        pod = objects(LAB, "Deployment")[name]["spec"]["template"]["spec"]
        c = container(objects(LAB, "Deployment")[name])
        # Ready with the broker (PROTOCOL.md section 2), alive without it.
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # USER in both Dockerfiles
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    for dockerfile in ("rust-ws/Dockerfile", "python-ws/Dockerfile"):
        assert "USER 10001:10001" in (REPO / dockerfile).read_text()


def test_servers_run_three_replicas_spread_and_budgeted():
    deployments = objects(LAB, "Deployment")
    budgets = objects(LAB, "PodDisruptionBudget")
    for name in SERVERS:
        d = deployments[name]
        assert d["spec"]["replicas"] == 3, name
        labels = d["spec"]["selector"]["matchLabels"]
        # Preferred anti-affinity on the node: spread where there are nodes, still scheduled on one.
        anti = d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert set(anti) == {"preferredDuringSchedulingIgnoredDuringExecution"}, name
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": labels}
        # One replica at a time may go for a drain; the selector is the Deployment's.
        pdb = budgets[name]["spec"]
        assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}, name


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_each_kind_has_one_redis_behind_a_service_with_its_exporter(name):
    deployments, services = objects(LAB, "Deployment"), objects(LAB, "Service")
    d = deployments[f"{name}-redis"]
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
    pod = d["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"redis", "redis-exporter"}
    # The images and arguments compose runs for the same kind.
    assert containers["redis"]["image"] == SERVICES[f"{name}-redis"]["image"]
    assert containers["redis"]["args"] == SERVICES[f"{name}-redis"]["command"]
    assert containers["redis-exporter"]["image"] == SERVICES[f"{name}-redis-exporter"]["image"]
    assert containers["redis"]["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    # The kind's broker URL names this Service and its port; the two kinds' brokers differ.
    env = {e["name"]: e.get("value") for e in container(deployments[name])["env"]}
    m = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/0", env["WS_BROKER_URL"])
    assert m and m.group(1) == f"{name}-redis", env["WS_BROKER_URL"]
    service = services[f"{name}-redis"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["redis"]["port"] == int(m.group(2)) == 6379
    assert ports["metrics"]["port"] == 9121
    assert service["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    # Only the two servers take the shared server resources patch.
    assert "wslab.dev/role" not in d["metadata"]["labels"]


def server_settings() -> dict[str, str]:
    return config_map(LAB, "wslab-server-config")["data"]


def test_server_settings_are_protocol_md_defaults_for_both():
    protocol = (REPO / "PROTOCOL.md").read_text()
    defaults = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", protocol, re.MULTILINE))
    settings = server_settings()
    keepalive_and_limits = {
        "WS_MAX_MESSAGE_BYTES",
        "WS_SEND_QUEUE",
        "WS_PING_INTERVAL_SECS",
        "WS_PING_TIMEOUT_SECS",
        "WS_MAX_CONNECTIONS",
    }
    assert keepalive_and_limits <= set(settings)
    for key, value in settings.items():
        assert value == defaults[key], key
    for name in SERVERS:
        c = container(objects(LAB, "Deployment")[name])
        (ref,) = c["envFrom"]
        assert (
            ref["configMapRef"]["name"]
            == config_map(LAB, "wslab-server-config")["metadata"]["name"]
        )


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_both_real_servers_start_with_the_settings(name):
    """Every setting as rendered, the broker on a real Redis on loopback instead of the Service's
    name (no cluster DNS here): the server starts, and is ready once it has its broker."""
    kind = SERVERS[name][0]
    env = {e["name"]: e.get("value") for e in container(objects(LAB, "Deployment")[name])["env"]}
    assert env["WS_BROKER_URL"].startswith("redis://")
    with running_redis() as redis:
        settings = {**server_settings(), "WS_BROKER_URL": redis.url}
        with running_server(kind, env=settings) as server:
            assert "ws_connections" in server.metrics_text()
            # What the readiness probe asks: 200 once the node has its broker (PROTOCOL.md §5:
            # within 3 s of Redis accepting connections).
            deadline = time.monotonic() + 10
            while (status := http_get(server.http_url + "/readyz")[0]) != 200:
                assert time.monotonic() < deadline, f"/readyz still {status} after 10 s"
                time.sleep(0.1)
