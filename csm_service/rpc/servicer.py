"""csm.v1.TextToSpeechService over the in-process speech service: the gRPC adapter of the engine worker.

Each call converts its csm.v1 request to core types (:mod:`csm_service.rpc.convert`), runs it on
the :class:`~csm_service.speech.local.LocalSpeechService` and converts back; core errors become
status codes with the error's text as the details. Until the engine is attached (loading) and
while it drains, calls are answered UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from csm_service import __version__
from csm_service.core.errors import EngineUnavailable, InvalidRequest, Overloaded, SpeechError
from csm_service.core.events import SpeechChunk
from csm_service.core.request import SpeechRequest
from csm_service.core.service import EngineInfo
from csm_service.engine.engine import Engine
from csm_service.metrics import EngineMetrics
from csm_service.rpc.auth import CURRENT_PRINCIPAL
from csm_service.rpc.convert import (
    chunk_to_proto,
    encoded_prompt_to_proto,
    encoding_from_proto,
    info_to_proto,
    prompt_audio_from_proto,
    request_from_proto,
    response_to_proto,
)
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.rpc.gen.csm.v1 import tts_pb2_grpc
from csm_service.speech.local import LocalSpeechService, audio_duration_ms
from csm_service.voices import VoiceStore

NOT_READY = "engine not ready (loading or draining)"
# Core errors -> status codes, most specific first (WorkerLost is an EngineUnavailable).
STATUS_CODES: tuple[tuple[type[SpeechError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (EngineUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_code(exc: SpeechError) -> grpc.StatusCode:
    """The status a core error is answered with (SynthesisFailed and anything else: INTERNAL)."""
    return next((code for kind, code in STATUS_CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


def _caller_voice_scope() -> str | None:
    """The voice profiles this call's caller may use (GrpcKeyInterceptor sets the principal)."""
    return CURRENT_PRINCIPAL.get().voice_scope


class TextToSpeechServiceServicer(tts_pb2_grpc.TextToSpeechServiceServicer):
    def __init__(self, metrics: EngineMetrics, model: str = "", voices: VoiceStore | None = None) -> None:
        self.metrics = metrics
        self.model = model
        self.voices = voices  # profiles for voice_profile_id (None: only "default")
        self.service: LocalSpeechService | None = None  # set once the engine is loaded and warm

    def attach(self, engine: Engine) -> None:
        self.service = LocalSpeechService(engine, self.voices, self.metrics, voice_scope=_caller_voice_scope)

    async def _reject(self, context: grpc.aio.ServicerContext, exc: SpeechError, outcome: str) -> None:
        """Answer with ``exc``'s status, counting the request's ``outcome``."""
        self.metrics.requests.labels(outcome).inc()
        await context.abort(status_code(exc), str(exc))

    async def _serving(self, context: grpc.aio.ServicerContext) -> LocalSpeechService:
        """The speech service, or UNAVAILABLE while the engine loads, warms up or drains."""
        service = self.service
        if service is None or not service.ready:
            await self._reject(context, EngineUnavailable(NOT_READY), "unavailable")
        return service

    async def _accept(
        self, msg: pb.SynthesizeRequest, context: grpc.aio.ServicerContext, resume_from_sequence: int = 0
    ) -> tuple[LocalSpeechService, SpeechRequest]:
        """The format first, then readiness, then the rest of the request (INVALID_ARGUMENT naming the field)."""
        try:
            encoding_from_proto(msg.encoding)
            service = await self._serving(context)
            return service, request_from_proto(msg, resume_from_sequence)
        except InvalidRequest as exc:
            await self._reject(context, exc, "invalid")
            raise  # not reached: abort raises

    async def _chunks(
        self, service: LocalSpeechService, request: SpeechRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[SpeechChunk]:
        """The utterance's chunks; a core error aborts the call (the service has counted it)."""
        try:
            async with aclosing(service.stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except SpeechError as exc:
            await context.abort(status_code(exc), str(exc))

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        if self.service is None:
            return info_to_proto(EngineInfo(ready=False, state="loading", model=self.model, version=__version__))
        return info_to_proto(await self.service.info())

    async def SynthesizeStream(
        self, request: pb.SynthesizeStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SynthesizeStreamResponse]:
        service, speech = await self._accept(request.request, context, request.resume_from_sequence)
        async with aclosing(self._chunks(service, speech, context)) as chunks:
            async for chunk in chunks:
                yield chunk_to_proto(chunk)

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SynthesizeResponse:
        service, speech = await self._accept(request, context)
        parts: list[bytes] = []
        async with aclosing(self._chunks(service, speech, context)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.audio)
        audio = b"".join(parts)
        duration_ms = float(audio_duration_ms(chunk.encoding, len(audio)))
        return response_to_proto(audio, duration_ms, chunk)

    async def EncodePrompt(
        self, request: pb.EncodePromptRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodePromptResponse:
        service = await self._serving(context)
        try:
            encoded = await service.encode_prompt(prompt_audio_from_proto(request))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return encoded_prompt_to_proto(encoded)
