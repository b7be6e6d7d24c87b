"""Shared helpers for tests/k8s: render the kustomize trees with the real kubectl, and the pinned
Kubernetes version their objects are validated against.

There is no cluster on the test machine. What can be proved offline is proved here: the trees
render with plain `kubectl kustomize` (default load restrictor, no flags), every core object
validates against the pinned Kubernetes version's OpenAPI schemas (the kubernetes-validate
package, strict: unknown fields are errors), and the k6-operator TestRun carries only fields that
k6-operator's API (k6.io/v1alpha1, TestRunSpec) defines. test_distributed_k6.py runs the k6 side
of a distributed run for real.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "deploy" / "k8s"
RUN = LAB / "run"

# The Kubernetes version whose schemas the objects must satisfy (a version kubernetes-validate
# 1.37.0, pinned in tests/requirements.txt, ships). 1.33: current enough for the fields used here
# (EndpointSlice discovery, the safe ip_local_port_range sysctl), old enough for most clusters.
KUBERNETES_VERSION = "1.33.0"

KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"


@functools.cache
def render(path: Path) -> tuple[dict, ...]:
    """`kubectl kustomize PATH` as it would be applied: the list of objects, in order."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(path: Path, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(path) if o["kind"] == kind}


def config_map(path: Path, prefix: str) -> dict:
    """The generated ConfigMap whose name is PREFIX-<hash>."""
    found = [
        o
        for o in render(path)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].rsplit("-", 1)[0] == prefix
    ]
    assert len(found) == 1, f"{len(found)} ConfigMaps named {prefix}-<hash> in {path}"
    return found[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c
