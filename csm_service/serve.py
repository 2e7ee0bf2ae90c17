"""``csm-service serve``: engine + gRPC + HTTP/WebSocket edge in one process (the embedded default).

Start-up order: gRPC listens (NOT_SERVING) and the edge listens (``/health`` 503, "loading") at
once; the engine is built, loaded and warmed in a thread; then gRPC health turns SERVING and the
edge serves. The edge reaches the engine over gRPC on loopback, exactly as a separate edge would,
and internal callers can use the same gRPC port. SIGTERM: /health turns 503 and new
sessions are refused, live sessions and calls go on to their end (or ``call_drain_s``), then the
engine drains (``drain_timeout_s``), WebSockets close with 1001, exit 0.
"""

from __future__ import annotations

import logging
import secrets

from prometheus_client import CollectorRegistry

from csm_service.auth import KeyChecker, warn_if_open
from csm_service.config import ServiceConfig, api_key_entries
from csm_service.edge.app import EdgeServer, build_app
from csm_service.engine.runner import pick_device
from csm_service.metrics import EngineMetrics
from csm_service.rpc.auth import grpc_metadata
from csm_service.rpc.client import EngineClient, client_policy
from csm_service.rpc.server import EngineServer, caller_limits, server_policy
from csm_service.rpc.worker import load_engine, stop_event
from csm_service.voices import VoiceStore

log = logging.getLogger(__name__)


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)


async def run_serve(cfg: ServiceConfig) -> int:
    registry = CollectorRegistry()
    keys = api_key_entries(cfg)
    checker = KeyChecker(keys)
    # The edge's own key on the gRPC port: never shown, no tenant's, exempt from per-caller limits
    # (the edge carries every tenant's calls and holds each to its own limits).
    internal = secrets.token_urlsafe(32)
    warn_if_open(checker, cfg.host, "the HTTP/WebSocket edge")
    warn_if_open(checker, cfg.grpc_host, "gRPC")
    grpc_server = EngineServer(
        EngineMetrics(registry),
        f"{cfg.grpc_host}:{cfg.grpc_port}",
        cfg.engine.model,
        KeyChecker(keys, internal=(internal,)),
        VoiceStore(cfg.data_dir),
        limits=caller_limits(cfg),
        **server_policy(cfg),
    )
    await grpc_server.start()
    log.info("gRPC on %s:%d (NOT_SERVING until the model is warm)", cfg.grpc_host, grpc_server.port)
    client = EngineClient(
        f"{_loopback(cfg.grpc_host)}:{grpc_server.port}", metadata=grpc_metadata((internal,)), **client_policy(cfg)
    )
    app = build_app(cfg, client, registry, device_hint=pick_device(cfg.engine.device).type, checker=checker)
    edge = EdgeServer(app, cfg.host, cfg.port, cfg.health_port)
    await edge.start()
    stop = stop_event()
    code = 0
    engine = None
    try:
        engine = await load_engine(grpc_server, cfg.engine, stop)
        if engine is not None:
            log.info("serving: http://%s:%d  gRPC :%d", cfg.host, cfg.port, grpc_server.port)
            await stop.wait()
            log.info("SIGTERM: draining calls (up to %.0f s)", cfg.call_drain_s)
    except Exception:
        log.exception("engine failed to start")
        code = 1
    # The edge first: /health 503 and new sessions refused at once, live calls go on to their end
    # (or the call-drain deadline) on the engine, which keeps serving them; then the engine drains.
    await edge.drain(cfg.call_drain_s if engine is not None else 0.0)
    await grpc_server.drain_and_stop(cfg.drain_timeout_s)
    await edge.stop()
    await client.close()
    log.info("stopped")
    return code
