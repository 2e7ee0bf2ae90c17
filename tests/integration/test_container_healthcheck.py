"""The image's HEALTHCHECK (``python -m csm_service.healthcheck``): it finds the container's
command in PID 1's command line and checks that server where its configuration puts it: HTTP
``/health`` for serve and edge, gRPC health for an engine worker."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from csm_service.healthcheck import check, pid1_argv, server_argv, target
from csm_service.metrics import EngineMetrics
from csm_service.rpc.formats import SERVICE_NAME
from csm_service.rpc.server import EngineServer
from tests.integration.servers import free_port


def test_finds_the_server_command_in_pid1():
    engine = ["/opt/venv/bin/python", "/opt/venv/bin/csm-service", "engine", "--grpc-port", "6000"]
    assert server_argv(engine) == ["engine", "--grpc-port", "6000"]
    assert server_argv(["/sbin/docker-init", "--", "csm-service", "serve"]) == ["serve"]  # docker run --init
    assert server_argv(["python", "/opt/csm/runpod/handler.py"]) is None  # no server: nothing to check
    assert any("pytest" in arg for arg in pid1_argv("/proc/self/cmdline"))  # this process: NUL-separated args


def test_follows_flags_then_environment():
    assert target(["engine"], {}) == ("grpc", "127.0.0.1:50051")
    assert target(["engine"], {"CSM_GRPC_PORT": "7000"}) == ("grpc", "127.0.0.1:7000")
    assert target(["engine", "--grpc-port", "6000"], {"CSM_GRPC_PORT": "7000"}) == ("grpc", "127.0.0.1:6000")
    assert target(["serve"], {"CSM_PORT": "9000"}) == ("http", "http://127.0.0.1:9000/health")
    assert target(["edge", "--port", "8100"], {"CSM_PORT": "9000"}) == ("http", "http://127.0.0.1:8100/health")
    assert target(["edge", "--host", "10.1.2.3"], {}) == ("http", "http://10.1.2.3:8000/health")
    assert target(["serve"], {"CSM_HOST": "::"}) == ("http", "http://[::1]:8000/health")


def test_http_health_of_a_serving_edge(served):
    assert check(["serve", "--port", str(served.port)], {}) == (True, f"{served.url}/health: 200")
    ok, why = check(["edge"], {"CSM_PORT": str(free_port())})  # nothing listens there
    assert not ok and "refused" in why.lower()


async def test_grpc_health_of_an_engine_worker():
    server = EngineServer(EngineMetrics(CollectorRegistry()), "127.0.0.1:0", "tiny-random")
    await server.start()  # NOT_SERVING until an engine is attached
    command = ["engine", "--grpc-port", str(server.port)]
    try:
        ok, why = await asyncio.to_thread(check, command, {})
        assert not ok and why.endswith("not serving")
        await server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(check, command, {}) == (True, f"gRPC health at 127.0.0.1:{server.port}: SERVING")
    finally:
        await server.server.stop(grace=0)
    ok, _ = await asyncio.to_thread(check, command, {})  # stopped: no answer
    assert not ok
