"""The client's side of the boundary: core requests -> csm.v1 messages, and csm.v1 replies and
status codes -> core chunks, info and errors (the engine's side is :mod:`csm_service.rpc.convert`)."""

from __future__ import annotations

import dataclasses

import grpc

from csm_service.core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from csm_service.core.errors import (
    EngineUnavailable,
    InvalidRequest,
    Overloaded,
    SpeechError,
    SynthesisFailed,
    TimedOut,
    WorkerLost,
)
from csm_service.core.events import SpeechChunk, Timings
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest
from csm_service.core.service import EncodedPrompt, EngineInfo, PromptAudio
from csm_service.rpc.convert import codes_from_proto, codes_to_proto
from csm_service.rpc.formats import ENCODING_FROM_PROTO, ENCODING_TO_PROTO, FINISH_REASON_NAMES
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb


def segment_to_proto(segment: Segment) -> pb.ContextSegment:
    codes = codes_to_proto(segment.codes) if segment.codes is not None else []
    return pb.ContextSegment(speaker=segment.speaker, text=segment.text, codes=codes)


def request_to_proto(request: SpeechRequest) -> pb.SynthesizeRequest:
    """A speech request as ``SynthesizeRequest``. Temperature and top_k at their defaults and no
    seed are left unset: the worker applies its defaults (and draws the seed). A replay point
    (``resume_from_sequence``) is not part of it: it goes in the ``SynthesizeStreamRequest``."""
    if request.encoding not in ENCODING_TO_PROTO:
        raise InvalidRequest("encoding", f"{request.encoding.value} is not available over gRPC")
    msg = pb.SynthesizeRequest(
        text=request.text,
        speaker=request.speaker,
        max_audio_length_ms=request.max_audio_length_ms,
        context=[segment_to_proto(s) for s in request.context],
        encoding=ENCODING_TO_PROTO[request.encoding],
        request_id=request.request_id,
        prefix_segments=request.prefix_segments,
        max_context_positions=request.max_context_positions,
        raw_text=not request.normalize_text,
        voice_profile_id=request.voice_profile_id,
    )
    if request.temperature != DEFAULT_TEMPERATURE:
        msg.temperature = request.temperature
    if request.top_k != DEFAULT_TOP_K:
        msg.top_k = request.top_k
    if request.seed is not None:
        msg.seed = request.seed
    return msg


def timings_from_proto(t: pb.Timings) -> Timings:
    total_s = t.generation_time_ms / 1000
    return Timings(
        queued_s=t.queue_ms / 1000,
        prefill_s=t.prefill_ms / 1000,
        first_audio_s=t.time_to_first_audio_ms / 1000,
        total_s=total_s,
        audio_s=total_s / t.real_time_factor if t.real_time_factor else 0.0,
        prompt_positions=t.prompt_positions,
        prefix_cache_hit=t.prefix_cache_hit,
        context_segments=t.context_segments,
    )


def chunk_from_proto(chunk: pb.SynthesizeStreamResponse) -> SpeechChunk:
    """A ``SynthesizeStreamResponse``; the final one with its reason, seed, timings and codes [32, F]."""
    return SpeechChunk(
        audio=chunk.audio,
        sequence=chunk.sequence,
        duration_ms=chunk.duration_ms,
        encoding=ENCODING_FROM_PROTO.get(chunk.encoding, AudioEncoding.PCM16_24KHZ),
        sample_rate=chunk.sample_rate,
        request_id=chunk.request_id,
        final=chunk.final,
        finish_reason=FINISH_REASON_NAMES.get(chunk.finish_reason, ""),
        seed=chunk.seed,
        timings=timings_from_proto(chunk.timings) if chunk.final or chunk.HasField("timings") else None,
        num_frames=chunk.num_frames,
        codes=codes_from_proto(chunk.codes, "codes") if chunk.final else None,
    )


def info_from_proto(info: pb.GetInfoResponse) -> EngineInfo:
    """GetInfoResponse's fields are EngineInfo's, name for name."""
    return EngineInfo(**{f.name: getattr(info, f.name) for f in dataclasses.fields(EngineInfo)})


def prompt_to_proto(prompt: PromptAudio) -> pb.EncodePromptRequest:
    return pb.EncodePromptRequest(
        audio=prompt.pcm16, sample_rate=prompt.sample_rate, transcript=prompt.transcript, speaker=prompt.speaker
    )


def prompt_from_proto(prompt: PromptAudio, response: pb.EncodePromptResponse) -> EncodedPrompt:
    """The encoded prompt as a context segment: the caller's speaker and transcript, the worker's codes."""
    segment = Segment(prompt.speaker, prompt.transcript, codes_from_proto(response.codes, "codes"))
    return EncodedPrompt(segment, response.duration_ms)


def _invalid_request(details: str) -> InvalidRequest:
    """``field: message`` -> InvalidRequest(field, message); ``str()`` is ``details`` as the worker wrote it."""
    field = details.split(":", 1)[0] if ":" in details else ""
    if field and details.startswith(f"{field}: "):
        return InvalidRequest(field, details[len(field) + 2 :])
    err = InvalidRequest(field, details)
    err.args = (details,)
    return err


def speech_error_from_rpc(exc: grpc.aio.AioRpcError, started: bool = False) -> SpeechError:
    """A failed call -> the core error. ``started``: audio had already been delivered, so an
    UNAVAILABLE means the worker went away mid-utterance (:class:`WorkerLost`), not that none serves."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return WorkerLost(details) if started else EngineUnavailable(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _invalid_request(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimedOut(details)
    return SynthesisFailed(details or code.name)
