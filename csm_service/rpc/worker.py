"""``csm-service engine``: the gRPC worker process (build -> load -> warm up -> SERVING)."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry, start_http_server

from csm_service.auth import KeyChecker, warn_if_open
from csm_service.config import EngineConfig, ServiceConfig, api_key_entries
from csm_service.engine.build import build_engine
from csm_service.engine.engine import Engine
from csm_service.metrics import EngineMetrics
from csm_service.rpc.server import EngineServer, caller_limits, server_policy
from csm_service.voices import VoiceStore

log = logging.getLogger(__name__)


def stop_event() -> asyncio.Event:
    """Set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def load_engine(server: EngineServer, cfg: EngineConfig, stop: asyncio.Event) -> Engine | None:
    """Build, load and warm the engine in a thread, then serve it; None if stopped while loading.

    Raises whatever the build raised (the caller logs it and exits non-zero).
    """
    build = asyncio.ensure_future(asyncio.to_thread(build_engine, cfg))
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({build, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if build not in done:
        log.info("stopped while loading")
        return None
    stopped.cancel()
    engine = build.result()
    await server.attach(engine)
    return engine


async def run_engine_worker(cfg: ServiceConfig) -> int:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    checker = KeyChecker(api_key_entries(cfg))
    warn_if_open(checker, cfg.grpc_host, "the gRPC engine worker")
    server = EngineServer(
        metrics,
        f"{cfg.grpc_host}:{cfg.grpc_port}",
        cfg.engine.model,
        checker,
        VoiceStore(cfg.data_dir),
        limits=caller_limits(cfg),
        **server_policy(cfg),
    )
    await server.start()  # health: NOT_SERVING while the model loads
    log.info("gRPC listening on %s:%d (NOT_SERVING until the model is warm)", cfg.grpc_host, server.port)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, registry=registry)
        log.info("metrics on :%d/metrics", cfg.metrics_port)
    stop = stop_event()
    try:
        engine = await load_engine(server, cfg.engine, stop)
    except Exception:
        log.exception("engine failed to start")
        await server.server.stop(grace=0)
        return 1
    if engine is None:
        await server.server.stop(grace=0)
        return 0
    await stop.wait()
    log.info("SIGTERM: draining (up to %.0f s)", cfg.drain_timeout_s)
    await server.drain_and_stop(cfg.drain_timeout_s)
    log.info("stopped")
    return 0
