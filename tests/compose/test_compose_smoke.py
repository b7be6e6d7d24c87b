"""Compose smoke test: the real compose.yaml on a real Docker engine.

It brings up rust-ws, python-ws and prometheus (`up -d --build`), waits for their healthchecks,
runs the k6 service from the `load` profile once with SMOKE=1 (both servers by service name,
remote write to the prometheus container), then asks Prometheus's HTTP API whether it scraped
both servers and received k6's series. Everything is torn down with `down -v`, volumes included,
whatever happened.

Host ports are free ones, through compose.yaml's ${RUST_WS_PORT}, ${PYTHON_WS_PORT} and
${PROMETHEUS_PORT}. Where the Docker engine's open-files limit is below compose.yaml's default
`nofile` of 65536 (this sandbox's dockerd has 20000), WSLAB_NOFILE lowers it, as the README tells
users to. Everything else is compose.yaml as users run it.

Grafana and cAdvisor are not started: where no registry is reachable they can't be stood in (see
tests/fixtures/images/README.md); the dashboard tests cover them with static and real-data checks.

Run: .venv/bin/pytest tests/compose -q        (add -s to see the progress lines as they happen)
Needs: a running Docker engine, `docker compose` (v2) or `docker-compose` (v1.29), and for the
stand-in images debootstrap, rustc and pip (tests/fixtures/images/build.sh says what is missing).
Env: WSLAB_SMOKE_KEEP=1 leaves the stack up for inspection (you then run `down -v` yourself).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD_STAND_INS = ROOT / "tests" / "fixtures" / "images" / "build.sh"
SERVERS = ("rust-ws", "python-ws")
SERVICES = (*SERVERS, "prometheus")
HOST_PORT_VAR = re.compile(r"\$\{(\w+):-(\d+)\}:(\d+)$")

# Every wait is bounded; these are generous for 2 busy cores and a cold Rust release build.
STAND_INS_TIMEOUT = 20 * 60
BUILD_UP_TIMEOUT = 25 * 60
HEALTH_TIMEOUT = 180
K6_TIMEOUT = 5 * 60
QUERY_TIMEOUT = 90
DOWN_TIMEOUT = 180


def _compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (v1.29)."""
    if shutil.which("docker"):
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if v2.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed "
        "(apt-get install docker.io docker-compose)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _host_ports(env: dict[str, str], names=SERVICES) -> dict[str, int]:
    """Pick the host port of every port the named services publish: {"service:container_port":
    host port}, and {"service": host port} for each service's first one.

    Where compose.yaml reads a host port from a variable (`${VAR:-8000}:8000`), the variable is set
    to a free port, so the test runs beside anything already on the defaults. A literal port is
    used as it is and must be free.
    """
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    ports: dict[str, int] = {}
    for name in names:
        for spec in map(str, services[name].get("ports", [])):
            match = HOST_PORT_VAR.search(spec)
            if match:
                env[match.group(1)] = str(_free_port())
                host_port = int(env[match.group(1)])
            else:
                host_port = int(spec.rsplit(":", 2)[-2])
                if not _port_free(host_port):
                    pytest.fail(
                        f"{name}: compose.yaml publishes fixed host port {host_port}, which is "
                        "busy; stop what listens there (or make the port a ${VAR:-default})"
                    )
            ports.setdefault(name, host_port)
            ports[f"{name}:{spec.rsplit(':', 1)[-1]}"] = host_port
    return ports


def _engine_nofile_limit() -> int | None:
    """The open-files hard limit this Docker engine gives containers, or None if unlimited.

    A container can't raise RLIMIT_NOFILE above the engine's own limit: where dockerd runs with,
    say, 20000, a service asking for compose.yaml's default of 65536 fails to start ("error
    setting rlimit type 7"). compose.yaml takes the value from WSLAB_NOFILE for such engines
    (README, Troubleshooting), and the test sets it the same way a user would.
    """
    probe = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", "debian:bookworm-slim", "-c", "ulimit -Hn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = probe.stdout.strip()
    return int(out) if probe.returncode == 0 and out.isdigit() else None


class Stack:
    """One compose project, named uniquely, with its own commands and timings: `services` are the
    ones it starts and waits for, `profiles` the compose profiles every command enables."""

    def __init__(self, say, services=SERVICES, profiles=()):
        self.say = say
        self.services = tuple(services)
        self.profiles = tuple(profiles)
        self.compose = _compose_command()
        self.project = f"wslab-smoke-{os.getpid()}-{int(time.time())}"
        self.testid = f"smoke-{self.project}"
        self.env = {**os.environ, "WSLAB_BIND": "127.0.0.1", "SMOKE": "1", "K6_TESTID": self.testid}
        self.env.pop("COMPOSE_PROJECT_NAME", None)
        self.files = [ROOT / "compose.yaml"]
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def run(
        self,
        args: list[str],
        timeout: float,
        check: bool = True,
        capture: bool = True,
        profiles: bool = False,
    ) -> subprocess.CompletedProcess:
        cmd = [*self.compose, "-p", self.project]
        for file in self.files:
            cmd += ["-f", str(file)]
        for profile in (*self.profiles, *(["load"] if profiles else [])):
            cmd += ["--profile", profile]
        proc = subprocess.run(
            [*cmd, *args],
            cwd=ROOT,
            env=self.env,
            timeout=timeout,
            text=True,
            capture_output=capture,
            check=False,
        )
        if check and proc.returncode != 0:
            out = (proc.stdout or "")[-4000:] + (proc.stderr or "")[-4000:]
            pytest.fail(f"`{' '.join(args)}` exited {proc.returncode}:\n{out}", pytrace=False)
        return proc

    def timed(self, label: str, fn, *args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[label] = time.monotonic() - start
            self.say(f"compose smoke: {label}: {self.timings[label]:.1f} s")

    def containers(self, service: str) -> list[str]:
        ids = self.run(["ps", "-q", service], timeout=60).stdout.split()
        assert ids, f"{service}: no container"
        return ids

    def container(self, service: str) -> str:
        return self.containers(service)[0]

    def wait_healthy(self) -> None:
        """Every container of every service running, and healthy where it has a healthcheck."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
        ids = {
            f"{service}/{cid[:12]}": (cid, "healthcheck" in compose[service])
            for service in self.services
            for cid in self.containers(service)
        }
        want = {name: "running/healthy" if checked else "running/" for name, (_, checked) in
                ids.items()}  # fmt: skip
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            for name, (cid, _) in ids.items():
                status[name] = subprocess.run(
                    [
                        "docker",
                        "inspect",
                        "-f",
                        "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                        cid,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                ).stdout.strip()
            if status == want:
                return
            if any(s.startswith(("exited", "dead")) for s in status.values()):
                break
            time.sleep(2)
        pytest.fail(
            f"not healthy within {HEALTH_TIMEOUT} s: {status}\n{self.logs()}", pytrace=False
        )

    def logs(self) -> str:
        try:
            proc = self.run(
                ["logs", "--no-color", "--tail", "40", *self.services], timeout=60, check=False
            )
            return (proc.stdout or "") + (proc.stderr or "")
        except subprocess.TimeoutExpired:
            return "(compose logs timed out)"

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def down(self) -> None:
        self.run(
            ["down", "-v", "--remove-orphans", "--timeout", "10"],
            timeout=DOWN_TIMEOUT,
            check=False,
            profiles=True,
        )


@pytest.fixture(scope="module")
def stack(request):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        """A progress line on the terminal as it happens, even under output capture."""
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    if shutil.which("docker") is None:
        pytest.fail("docker is not installed (apt-get install docker.io docker-compose)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.fail("the Docker engine is not running: start dockerd")

    st = Stack(say)
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
    st.ports = _host_ports(st.env)
    limit = _engine_nofile_limit()
    if limit is not None and limit < 65536:
        st.env["WSLAB_NOFILE"] = str(limit)
        say(f"compose smoke: this engine allows nofile {limit}: WSLAB_NOFILE={limit}")
    say(f"compose smoke: project {st.project}, {' '.join(st.compose)}, ports {st.ports}")
    try:
        st.timed(
            "up -d --build",
            st.run,
            ["up", "-d", "--build", *SERVICES],
            timeout=BUILD_UP_TIMEOUT,
            capture=False,
        )
        st.timed("healthchecks", st.wait_healthy)
        k6 = st.timed(
            "k6 both.js (SMOKE=1)",
            st.run,
            ["run", "--rm", "-e", "SMOKE=1", "k6"],
            timeout=K6_TIMEOUT,
            check=False,
            profiles=True,
        )
        st.k6 = k6
        if k6.returncode != 0:
            pytest.fail(_k6_failure(k6), pytrace=False)
        yield st
    finally:
        if os.environ.get("WSLAB_SMOKE_KEEP") == "1":
            say(
                f"compose smoke: WSLAB_SMOKE_KEEP=1, left up: {' '.join(st.compose)} "
                f"-p {st.project} --profile load down -v"
            )
        else:
            st.timed("down -v", st.down)
        say(f"compose smoke: total {time.monotonic() - started:.1f} s")


def _k6_failure(k6: subprocess.CompletedProcess) -> str:
    """k6's failure as a message: first its own diagnosis (k6/lib/summary.js ends stdout with
    one "wslab:" line per crossed threshold, failed check by server and scenario, and wslab_errors
    code or unclean-close reason by server), then the end of its output."""
    output = (k6.stdout or "") + "\n" + (k6.stderr or "")
    found = re.findall(r"^wslab: .*$", output, re.MULTILINE)
    lines = [f"k6 exited {k6.returncode}"]
    if found:
        lines += ["what failed (k6/lib/summary.js):", *(f"  {line}" for line in found)]
    else:
        lines.append("k6 printed no diagnosis (it failed before its end-of-test summary)")
    lines += ["--- k6 stdout (end) ---", (k6.stdout or "")[-6000:]]
    lines += ["--- k6 stderr (end) ---", (k6.stderr or "")[-6000:]]
    return "\n".join(lines)


def _eventually(st: Stack, promql: str, ok, what: str) -> list[dict]:
    """Query until `ok(result)` holds; scrapes come every 5 s, so allow a few."""
    deadline = time.monotonic() + QUERY_TIMEOUT
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = st.query(promql)
        if ok(result):
            return result
        time.sleep(2)
    pytest.fail(f"{what}: `{promql}` gave {result} for {QUERY_TIMEOUT} s", pytrace=False)


@pytest.mark.parametrize("job", SERVERS)
def test_prometheus_scrapes_server(stack, job):
    """`up == 1` for the server's job: Prometheus reached it by service name."""
    result = _eventually(
        stack,
        f'up{{job="{job}"}}',
        lambda r: len(r) == 1 and r[0]["value"][1] == "1",
        f"{job} scraped",
    )
    assert result[0]["metric"]["job"] == job


@pytest.mark.parametrize("job", SERVERS)
def test_ws_connections_scraped(stack, job):
    """The server's own metrics arrived, not just the scrape's `up`."""
    _eventually(
        stack, f'ws_connections{{job="{job}"}}', lambda r: len(r) == 1, f"{job} ws_connections"
    )


def test_k6_remote_write_arrived(stack):
    """k6 pushed its series to the prometheus container, tagged with this run's testid."""
    result = _eventually(
        stack,
        f'count({{__name__=~"k6_.+", testid="{stack.testid}"}})',
        lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0,
        "k6 series",
    )
    stack.say(f"compose smoke: {result[0]['value'][1]} k6_ series from testid {stack.testid}")
