"""The engine worker's grpc.aio server: csm.v1.TextToSpeechService (:mod:`csm_service.rpc.servicer`) +
grpc.health.v1 + reflection, and its connection policy.

Start-up: the server listens at once with health NOT_SERVING, the engine is built and warmed in a
thread, then health turns SERVING. SIGTERM: NOT_SERVING, refuse new work, let running utterances
finish up to the drain deadline, stop.

Connection policy (docs/deploy.md, "gRPC keepalive and connection age"): clients may ping every
``min_ping_interval_s`` (5 s, half the edge's 10 s keepalive), with calls or without, and a ping
that comes sooner is never punished with GOAWAY ``too_many_pings`` unless ``max_ping_strikes`` is
set above 0: that GOAWAY closes the connection and every utterance streaming on it. A connection
older than ``max_connection_age_s`` (300 s) gets a GOAWAY so that clients reconnect and re-resolve
DNS (new engine pods get traffic); its calls in flight then have ``max_connection_age_grace_s``
(600 s, above the edge's 300 s request deadline) to finish before it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from csm_service.auth import KeyChecker
from csm_service.config import ServiceConfig
from csm_service.engine.engine import Engine
from csm_service.metrics import EngineMetrics
from csm_service.rpc.auth import CallerLimits, GrpcKeyInterceptor
from csm_service.rpc.client import KEEPALIVE_TIME_S, KEEPALIVE_TIMEOUT_S, keepalive_options
from csm_service.rpc.formats import SERVICE_NAME
from csm_service.rpc.gen.csm.v1 import tts_pb2_grpc
from csm_service.rpc.servicer import TextToSpeechServiceServicer
from csm_service.voices import VoiceStore

log = logging.getLogger(__name__)


# The defaults live in ServiceConfig (one definition); these names are the constructors' defaults.
MIN_PING_INTERVAL_S: float = ServiceConfig.grpc_min_ping_interval_s
MAX_PING_STRIKES: int = ServiceConfig.grpc_max_ping_strikes
MAX_CONNECTION_AGE_S: float = ServiceConfig.grpc_max_connection_age_s
MAX_CONNECTION_AGE_GRACE_S: float = ServiceConfig.grpc_max_connection_age_grace_s


def server_options(
    keepalive_time_s: float = KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    min_ping_interval_s: float = MIN_PING_INTERVAL_S,
    max_ping_strikes: int = MAX_PING_STRIKES,
    max_connection_age_s: float = MAX_CONNECTION_AGE_S,
    max_connection_age_grace_s: float = MAX_CONNECTION_AGE_GRACE_S,
) -> list[tuple[str, int]]:
    """gRPC core arguments of the engine's server: its ping policy, its own pings, connection age."""
    if min_ping_interval_s < 0 or max_ping_strikes < 0 or max_connection_age_s < 0 or max_connection_age_grace_s < 0:
        raise ValueError("gRPC ping interval, strikes and connection age must be >= 0")
    options = [
        ("grpc.so_reuseport", 0),
        # The ping policy: pings are welcome every min_ping_interval_s, with or without calls open
        # (keepalive_options' grpc.keepalive_permit_without_calls). gRPC's defaults: every 5 minutes
        # while no data flows, never without calls, GOAWAY after 2 early ones.
        ("grpc.http2.min_ping_interval_without_data_ms", round(min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", max_ping_strikes),  # 0: early pings never close the connection
        # The server's own pings: a client that vanished (no FIN, no RST) is dropped and its streams
        # cancelled, which frees their batch slots, in keepalive_time_s + keepalive_timeout_s.
        *keepalive_options(keepalive_time_s, keepalive_timeout_s),
    ]
    if max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", round(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(max_connection_age_grace_s * 1000)),
        ]
    return options


def server_policy(cfg: ServiceConfig) -> dict[str, float]:
    """EngineServer's connection-policy keywords from the service configuration."""
    return {
        "keepalive_time_s": cfg.grpc_keepalive_time_s,
        "keepalive_timeout_s": cfg.grpc_keepalive_timeout_s,
        "min_ping_interval_s": cfg.grpc_min_ping_interval_s,
        "max_ping_strikes": cfg.grpc_max_ping_strikes,
        "max_connection_age_s": cfg.grpc_max_connection_age_s,
        "max_connection_age_grace_s": cfg.grpc_max_connection_age_grace_s,
    }


def caller_limits(cfg: ServiceConfig) -> CallerLimits:
    """The gRPC port's per-caller limits: ``grpc_max_inflight_per_key`` (-1: the engine's
    ``max_batch + max_queue // 2``, so one caller leaves half the queue to the others) and the
    edge's request rate (``rate_limit_per_s``, ``rate_limit_burst``)."""
    cap = cfg.grpc_max_inflight_per_key
    if cap < 0:
        cap = cfg.engine.max_batch + cfg.engine.max_queue // 2
    return CallerLimits(max_inflight=cap, rate_per_s=cfg.rate_limit_per_s, burst=cfg.rate_limit_burst)


class EngineServer:
    """The grpc.aio server around one engine, with health and reflection."""

    def __init__(
        self,
        metrics: EngineMetrics,
        address: str,
        model: str = "",
        checker: KeyChecker | None = None,
        voices: VoiceStore | None = None,
        *,
        options: list[tuple[str, int]] | None = None,
        limits: CallerLimits | None = None,
        **policy: float,
    ) -> None:
        """``policy``: :func:`server_options`' keywords (:func:`server_policy` gives them from the
        configuration). ``options`` replaces the gRPC arguments built from them (tests use it).
        ``limits``: what one caller may hold (:func:`caller_limits` gives them from the configuration)."""
        self.servicer = TextToSpeechServiceServicer(metrics, model, voices)
        self.health = HealthServicer()
        checker = checker or KeyChecker(())
        limits = limits or CallerLimits()
        needed = checker.enabled or limits.active  # keys off and no limits: nothing to check
        interceptors = [GrpcKeyInterceptor(checker, limits)] if needed else []
        if options is None:
            options = server_options(**policy)  # type: ignore[arg-type]
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        tts_pb2_grpc.add_TextToSpeechServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        self.metrics = metrics
        self.engine: Engine | None = None  # set once loaded and warmed

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def attach(self, engine: Engine) -> None:
        """The engine is loaded and warm: serve."""
        self.engine = engine
        self.servicer.attach(engine)
        self.metrics.bind(engine)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC engine serving on port %d", self.port)

    async def drain_and_stop(self, deadline_s: float, on_drain: Callable[[], None] | None = None) -> None:
        """NOT_SERVING, refuse new work, let running utterances finish up to ``deadline_s``, stop."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        engine = self.engine
        if engine is not None:
            engine.drain()
            loop = asyncio.get_running_loop()
            end = loop.time() + deadline_s
            while not engine.is_idle() and loop.time() < end:
                await asyncio.sleep(0.05)
        if on_drain:
            on_drain()
        await self.server.stop(grace=1.0)
        if engine is not None:
            engine.stop()
