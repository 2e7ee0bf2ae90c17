"""The native HTTP answers: the error body (the seed's shape), /health, and /synthesize's result."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from csm_service.api.base import ReplyModel, optional
from csm_service.api.speak import OUTPUT_FORMATS


class Error(ReplyModel):
    """Every native error: ``error`` is the HTTP status's title, ``detail`` says what went wrong."""

    error: str = Field(examples=["Validation Error"])
    detail: str = Field(examples=["Invalid message format: speaker: must be an integer from 0 to 2147483647, got -1"])
    field: str = optional(description="The request field at fault")


class EngineLoad(ReplyModel):
    max_batch: int = optional()
    active_streams: int = optional()
    queue_depth: int = optional()


class Health(ReplyModel):
    """The seed's three fields; the rest with API keys off, a valid bearer key, or --public-health-detail."""

    status: Literal["healthy", "loading", "unavailable", "draining"]
    model_loaded: bool
    device: str = Field(examples=["cuda", "cpu"])
    version: str = optional()
    websocket_sessions: int = optional()
    model: str = optional()
    device_name: str = optional()
    dtype: str = optional()
    gpu_memory_total_bytes: int = optional()
    gpu_memory_allocated_bytes: int = optional()
    engine: EngineLoad = optional()


class SynthesizeResponse(ReplyModel):
    """The whole utterance."""

    audio_base64: str = Field(description="Base64-encoded audio")
    sample_rate: int = Field(description="24000 for wav, 8000 for mulaw")
    duration_ms: int
    generation_time_ms: int
    format: str = Field(examples=sorted(set(OUTPUT_FORMATS.values())))
    seed: int = optional()
    seed_str: str = optional(description="The seed as a decimal string (JavaScript's numbers stop at 2**53)")
    finish_reason: Literal["end_of_speech", "max_length"] = optional()
    request_id: str = optional(description="The request's, echoed back")
    pieces: int = optional(description="Long text is generated in pieces, one after another")
    piece_frames: list[int] = optional()
    prompt_positions: int = optional()
    prefix_cache_hit: bool = optional()
