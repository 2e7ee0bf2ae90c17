"""The engine worker's grpc.aio server: csm.v1.TextToSpeech + grpc.health.v1 + reflection.

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
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from csm_service import __version__
from csm_service.audio.encoder import StreamEncoder
from csm_service.auth import CURRENT_PRINCIPAL, CallerLimits, GrpcKeyInterceptor, KeyChecker
from csm_service.config import ServiceConfig
from csm_service.engine.engine import Engine
from csm_service.engine.request import (
    AudioChunk,
    EngineUnavailable,
    Finished,
    InvalidRequest,
    Overloaded,
)
from csm_service.metrics import EngineMetrics
from csm_service.rpc.client import KEEPALIVE_TIME_S, KEEPALIVE_TIMEOUT_S, keepalive_options
from csm_service.rpc.convert import codes_to_proto, to_engine_request
from csm_service.rpc.formats import ENCODING_FORMATS, FINISH_REASONS, SERVICE_NAME
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.rpc.gen.csm.v1 import tts_pb2_grpc
from csm_service.voices import DEFAULT_VOICE, MAX_PROMPT_RATE, MIN_PROMPT_RATE, VoiceStore

log = logging.getLogger(__name__)

MAX_PROMPT_SECONDS = 60.0


def _timings(finished: Finished) -> pb.Timings:
    t = finished.timings
    return pb.Timings(
        time_to_first_audio_ms=t.first_audio_s * 1000,
        generation_time_ms=t.total_s * 1000,
        real_time_factor=t.real_time_factor,
        queue_ms=t.queued_s * 1000,
        prefill_ms=t.prefill_s * 1000,
        prompt_positions=t.prompt_positions,
        prefix_cache_hit=t.prefix_cache_hit,
        context_segments=t.context_segments,
    )


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, metrics: EngineMetrics, model: str = "", voices: VoiceStore | None = None) -> None:
        self.engine: Engine | None = None  # set once loaded and warmed
        self.metrics = metrics
        self.model = model
        self.voices = voices  # profiles for voice_profile_id (None: only "default")

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.EngineInfo:
        return _engine_info(self.engine, self.model)

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, outcome: str
    ) -> None:
        self.metrics.requests.labels(outcome).inc()
        await context.abort(code, message)

    async def _serving_engine(self, context: grpc.aio.ServicerContext) -> Engine:
        """The engine, or UNAVAILABLE while it loads, warms up or drains."""
        engine = self.engine
        if engine is None or not engine.is_serving:
            await self._abort(
                context, grpc.StatusCode.UNAVAILABLE, "engine not ready (loading or draining)", "unavailable"
            )
        return engine

    async def _apply_voice(self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext) -> None:
        """Put the stored profile's prompt first in the context, as the cached prefix. The caller's
        tenant must be allowed to use it (GrpcKeyInterceptor sets the principal; an edge's admin or
        internal key sees every profile, and the edge has checked the tenant itself)."""
        scope = CURRENT_PRINCIPAL.get().voice_scope
        voice = await asyncio.to_thread(self.voices.get, request.voice_profile_id, scope) if self.voices else None
        if voice is None:
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"voice_profile_id: no voice profile {request.voice_profile_id[:80]!r}",
                "invalid",
            )
        rest = list(request.context)
        del request.context[:]
        request.context.extend([voice.context_segment(), *rest])
        request.prefix_segments += 1

    async def _encoder(self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext) -> StreamEncoder:
        """A fresh per-utterance encoder for the requested format, or INVALID_ARGUMENT."""
        fmt = ENCODING_FORMATS.get(request.encoding)
        if fmt is None:
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"encoding: unknown value {request.encoding}", "invalid"
            )
        return StreamEncoder(fmt)

    async def _events(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk | Finished]:
        """Submit to the engine and yield its events; aborts with the right status on failure."""
        engine = await self._serving_engine(context)
        if request.voice_profile_id not in ("", DEFAULT_VOICE):
            await self._apply_voice(request, context)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[AudioChunk | Finished] = asyncio.Queue()
        try:
            handle = engine.submit(
                to_engine_request(request), lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
            )
        except InvalidRequest as exc:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid")
        except Overloaded as exc:
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "overloaded")
        except EngineUnavailable as exc:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), "unavailable")
        try:
            while True:
                event = await events.get()
                if isinstance(event, AudioChunk):
                    yield event
                    continue
                if event.reason == "error":
                    await self._abort(context, grpc.StatusCode.INTERNAL, event.error or "synthesis failed", "error")
                if event.reason == "cancelled":  # not by this client: the engine is stopping
                    await self._abort(
                        context, grpc.StatusCode.UNAVAILABLE, event.error or "engine stopped", "unavailable"
                    )
                self.metrics.requests.labels(event.reason).inc()
                self.metrics.audio_seconds.inc(event.timings.audio_s)
                if event.num_frames:
                    self.metrics.ttfa.observe(event.timings.first_audio_s)
                    self.metrics.rtf.observe(event.timings.real_time_factor)
                yield event
                return
        finally:
            if not handle.cancelled.is_set():
                handle.cancel()  # client went away (cancel / deadline): free the slot now
            if context.cancelled():
                self.metrics.requests.labels("cancelled").inc()

    async def SynthesizeStream(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AudioChunk]:
        encoder = await self._encoder(request, context)
        fmt = encoder.format
        common = {
            "encoding": request.encoding or pb.PCM16_24KHZ,
            "sample_rate": fmt.sample_rate,
            "request_id": request.request_id,
        }
        sequence = 0
        async for event in self._events(request, context):
            if isinstance(event, AudioChunk):
                data = encoder.encode(event.pcm)  # a replayed chunk too: the encoder's state must follow
                if sequence >= request.resume_from_sequence:
                    yield pb.AudioChunk(
                        audio=data, sequence=sequence, duration_ms=encoder.duration_ms(len(data)) * 1.0, **common
                    )
                sequence += 1
            else:
                tail = encoder.encode(np.zeros(0, np.float32), last=True)
                yield pb.AudioChunk(
                    audio=tail,
                    sequence=sequence,
                    duration_ms=encoder.duration_ms(len(tail)) * 1.0,
                    final=True,
                    finish_reason=FINISH_REASONS[event.reason],
                    seed=event.seed,
                    timings=_timings(event),
                    num_frames=event.num_frames,
                    codes=codes_to_proto(event.codes),
                    **common,
                )

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SynthesizeResponse:
        encoder = await self._encoder(request, context)
        fmt = encoder.format
        parts: list[bytes] = []
        async for event in self._events(request, context):
            if isinstance(event, AudioChunk):
                parts.append(encoder.encode(event.pcm))
            else:
                parts.append(encoder.encode(np.zeros(0, np.float32), last=True))
                audio = b"".join(parts)
                return pb.SynthesizeResponse(
                    audio=audio,
                    encoding=request.encoding or pb.PCM16_24KHZ,
                    sample_rate=fmt.sample_rate,
                    duration_ms=float(encoder.duration_ms(len(audio))),
                    num_frames=event.num_frames,
                    finish_reason=FINISH_REASONS[event.reason],
                    seed=event.seed,
                    timings=_timings(event),
                    codes=codes_to_proto(event.codes),
                    request_id=request.request_id,
                )
        raise AssertionError("engine ended a request without a Finished event")

    async def EncodePrompt(
        self, request: pb.EncodePromptRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodePromptResponse:
        engine = await self._serving_engine(context)
        problem = None
        if not request.transcript.strip():
            problem = "transcript: must be non-empty"
        elif not MIN_PROMPT_RATE <= request.sample_rate <= MAX_PROMPT_RATE:
            problem = f"sample_rate: must be {MIN_PROMPT_RATE}..{MAX_PROMPT_RATE} Hz, got {request.sample_rate}"
        elif not request.audio or len(request.audio) % 2:
            problem = "audio: must be non-empty PCM16 (an even number of bytes)"
        elif len(request.audio) / 2 / request.sample_rate > MAX_PROMPT_SECONDS:
            problem = (
                f"audio: {len(request.audio) / 2 / request.sample_rate:.1f} s is longer than {MAX_PROMPT_SECONDS:.0f} s"
            )
        elif request.speaker < 0:
            problem = f"speaker: must be >= 0, got {request.speaker}"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        pcm = np.frombuffer(request.audio, dtype="<i2").astype(np.float32) / 32768.0
        codes = await asyncio.to_thread(engine.encode_prompt, pcm, request.sample_rate)
        return pb.EncodePromptResponse(
            codes=codes_to_proto(codes),
            num_frames=codes.shape[1],
            speaker=request.speaker,
            transcript=request.transcript,
            duration_ms=len(pcm) / request.sample_rate * 1000,
        )


def _engine_info(engine: Engine | None, model: str) -> pb.EngineInfo:
    if engine is None:
        return pb.EngineInfo(ready=False, state="loading", model=model, version=__version__)
    info = engine.describe()
    return pb.EngineInfo(ready=engine.is_serving, version=__version__, **info)


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
        self.servicer = TextToSpeechServicer(metrics, model, voices)
        self.health = HealthServicer()
        checker = checker or KeyChecker(())
        limits = limits or CallerLimits()
        needed = checker.enabled or limits.active  # keys off and no limits: nothing to check
        interceptors = [GrpcKeyInterceptor(checker, limits)] if needed else []
        if options is None:
            options = server_options(**policy)  # type: ignore[arg-type]
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        tts_pb2_grpc.add_TextToSpeechServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        self.metrics = metrics

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def attach(self, engine: Engine) -> None:
        """The engine is loaded and warm: serve."""
        self.servicer.engine = engine
        self.metrics.bind(
            lambda: engine.queue_depth, lambda: engine.num_active, lambda: float(engine.is_serving), engine.stats
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC engine serving on port %d", self.port)

    async def drain_and_stop(self, deadline_s: float, on_drain: Callable[[], None] | None = None) -> None:
        """NOT_SERVING, refuse new work, let running utterances finish up to ``deadline_s``, stop."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        engine = self.servicer.engine
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
