"""csm.v1 messages -> engine requests, with field-named validation errors."""

from __future__ import annotations

import numpy as np

from csm_service.engine.request import InvalidRequest, Segment, SynthesisRequest
from csm_service.rpc.formats import ENCODING_FORMATS
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

NUM_CODEBOOKS = 32


def codes_from_proto(values: list[int] | object, field: str) -> np.ndarray:
    """Frame-major flat codes -> [32, F] int64."""
    flat = np.asarray(values, dtype=np.int64)
    if flat.size % NUM_CODEBOOKS:
        raise InvalidRequest(field, f"must hold a multiple of {NUM_CODEBOOKS} values (frame-major), got {flat.size}")
    return flat.reshape(-1, NUM_CODEBOOKS).T.copy()


def codes_to_proto(codes: np.ndarray) -> list[int]:
    """[32, F] -> frame-major flat list."""
    return codes.T.reshape(-1).astype(np.uint32).tolist()


def to_engine_request(msg: pb.SynthesizeRequest) -> SynthesisRequest:
    if msg.encoding not in ENCODING_FORMATS:
        raise InvalidRequest("encoding", f"unknown audio encoding {msg.encoding}")
    context = tuple(
        Segment(seg.speaker, seg.text, codes_from_proto(seg.codes, f"context[{i}].codes") if seg.codes else None)
        for i, seg in enumerate(msg.context)
    )
    return SynthesisRequest(
        text=msg.text,
        speaker=msg.speaker,
        max_audio_length_ms=msg.max_audio_length_ms if msg.HasField("max_audio_length_ms") else 30_000,
        temperature=msg.temperature if msg.HasField("temperature") else 0.9,
        top_k=msg.top_k if msg.HasField("top_k") else 50,
        seed=msg.seed if msg.HasField("seed") else None,
        context=context,
        prefix_segments=msg.prefix_segments,
        max_context_positions=msg.max_context_positions,
        normalize_text=not msg.raw_text,
    )
