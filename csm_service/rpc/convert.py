"""The engine's side of the csm.v1 boundary: requests in, core chunks, info and prompts out.

csm.v1 messages -> core types (with field-named :class:`InvalidRequest` errors) and core types ->
csm.v1 replies. The codes helpers are shared with the client's side (:mod:`csm_service.rpc.convert_client`);
the enum tables live in :mod:`csm_service.rpc.formats`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from csm_service.core.constants import DEFAULT_MAX_AUDIO_MS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, NUM_CODEBOOKS
from csm_service.core.errors import InvalidRequest
from csm_service.core.events import SpeechChunk, Timings
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest
from csm_service.core.service import EncodedPrompt, EngineInfo, PromptAudio
from csm_service.rpc.formats import ENCODING_FROM_PROTO, ENCODING_TO_PROTO, FINISH_REASON_TO_PROTO
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb


def codes_from_proto(values: list[int] | object, field: str) -> np.ndarray:
    """Frame-major flat codes -> [32, F] int64."""
    flat = np.asarray(values, dtype=np.int64)
    if flat.size % NUM_CODEBOOKS:
        raise InvalidRequest(field, f"must hold a multiple of {NUM_CODEBOOKS} values (frame-major), got {flat.size}")
    return flat.reshape(-1, NUM_CODEBOOKS).T.copy()


def codes_to_proto(codes: np.ndarray) -> list[int]:
    """[32, F] -> frame-major flat list."""
    return codes.T.reshape(-1).astype(np.uint32).tolist()


def encoding_from_proto(value: int) -> AudioEncoding:
    """A wire ``AudioEncoding`` (0: as PCM16_24KHZ) -> the core one; InvalidRequest for an unknown value."""
    encoding = ENCODING_FROM_PROTO.get(value)
    if encoding is None:
        raise InvalidRequest("encoding", f"unknown value {value}")
    return encoding


def request_from_proto(msg: pb.SynthesizeRequest, resume_from_sequence: int = 0) -> SpeechRequest:
    """A ``SynthesizeRequest`` -> the core request (unset optional fields take the defaults).
    ``resume_from_sequence``: a ``SynthesizeStreamRequest``'s replay point (0: a fresh utterance)."""
    encoding = encoding_from_proto(msg.encoding)
    context = tuple(
        Segment(seg.speaker, seg.text, codes_from_proto(seg.codes, f"context[{i}].codes") if seg.codes else None)
        for i, seg in enumerate(msg.context)
    )
    return SpeechRequest(
        text=msg.text,
        speaker=msg.speaker,
        max_audio_length_ms=msg.max_audio_length_ms if msg.HasField("max_audio_length_ms") else DEFAULT_MAX_AUDIO_MS,
        temperature=msg.temperature if msg.HasField("temperature") else DEFAULT_TEMPERATURE,
        top_k=msg.top_k if msg.HasField("top_k") else DEFAULT_TOP_K,
        seed=msg.seed if msg.HasField("seed") else None,
        context=context,
        prefix_segments=msg.prefix_segments,
        max_context_positions=msg.max_context_positions,
        normalize_text=not msg.raw_text,
        encoding=encoding,
        request_id=msg.request_id,
        voice_profile_id=msg.voice_profile_id,
        resume_from_sequence=resume_from_sequence,
    )


def timings_to_proto(t: Timings) -> pb.Timings:
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


def _final_fields(chunk: SpeechChunk) -> dict[str, object]:
    """What only the last chunk of an utterance carries."""
    codes = chunk.codes if chunk.codes is not None else np.zeros((NUM_CODEBOOKS, 0), np.int64)
    return {
        "finish_reason": FINISH_REASON_TO_PROTO[chunk.finish_reason],
        "seed": chunk.seed,
        "timings": timings_to_proto(chunk.timings or Timings()),
        "num_frames": chunk.num_frames,
        "codes": codes_to_proto(codes),
    }


def chunk_to_proto(chunk: SpeechChunk) -> pb.SynthesizeStreamResponse:
    """A core chunk -> ``SynthesizeStreamResponse``; the final one with its reason, seed, timings, frames and codes."""
    return pb.SynthesizeStreamResponse(
        audio=chunk.audio,
        sequence=chunk.sequence,
        duration_ms=chunk.duration_ms,
        encoding=ENCODING_TO_PROTO[chunk.encoding],
        sample_rate=chunk.sample_rate,
        request_id=chunk.request_id,
        **({"final": True, **_final_fields(chunk)} if chunk.final else {}),
    )


def response_to_proto(audio: bytes, duration_ms: float, final: SpeechChunk) -> pb.SynthesizeResponse:
    """The whole utterance (``audio``, ``duration_ms``) with what its final chunk carries."""
    return pb.SynthesizeResponse(
        audio=audio,
        encoding=ENCODING_TO_PROTO[final.encoding],
        sample_rate=final.sample_rate,
        duration_ms=duration_ms,
        request_id=final.request_id,
        **_final_fields(final),
    )


def info_to_proto(info: EngineInfo) -> pb.GetInfoResponse:
    """EngineInfo's fields are GetInfoResponse's, name for name."""
    return pb.GetInfoResponse(**dataclasses.asdict(info))


def prompt_audio_from_proto(msg: pb.EncodePromptRequest) -> PromptAudio:
    return PromptAudio(pcm16=msg.audio, sample_rate=msg.sample_rate, transcript=msg.transcript, speaker=msg.speaker)


def encoded_prompt_to_proto(encoded: EncodedPrompt) -> pb.EncodePromptResponse:
    segment = encoded.segment
    codes = segment.codes if segment.codes is not None else np.zeros((NUM_CODEBOOKS, 0), np.int64)
    return pb.EncodePromptResponse(
        codes=codes_to_proto(codes),
        num_frames=codes.shape[1],
        speaker=segment.speaker,
        transcript=segment.text,
        duration_ms=encoded.duration_ms,
    )
