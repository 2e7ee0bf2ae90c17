"""What a caller asks the engine for, its validation, and what the engine sends back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from csm_service.config import FRAME_MS, NUM_MIMI_CODES

MAX_TEXT_CHARS = 4000
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1
MAX_SPEAKER = 2**31 - 1


class InvalidRequest(ValueError):
    """A request field is wrong; ``field`` names it (gRPC INVALID_ARGUMENT, HTTP 422)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class Overloaded(RuntimeError):
    """The waiting queue is full (gRPC RESOURCE_EXHAUSTED, HTTP 503)."""


class EngineUnavailable(RuntimeError):
    """The engine is not serving: loading, warming up, draining or stopped (gRPC UNAVAILABLE)."""


@dataclass(frozen=True)
class Segment:
    """A context utterance: who said what, and its Mimi codes [32, F] (None: text only)."""

    speaker: int
    text: str
    codes: np.ndarray | None = None


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    speaker: int = 0
    max_audio_length_ms: int = 30_000
    temperature: float = 0.9
    top_k: int = 50
    seed: int | None = None  # None: the engine draws one and reports it
    context: tuple[Segment, ...] = ()
    prefix_segments: int = 0  # leading context segments that are a stable prefix (KV cached)
    max_context_positions: int = 0  # trim the other context to this, newest kept (0: no trim)
    normalize_text: bool = True  # numbers, dates, ... as words before tokenising

    @property
    def max_frames(self) -> int:
        """Whole 80 ms frames that fit: the audio never exceeds max_audio_length_ms."""
        return max(1, self.max_audio_length_ms // FRAME_MS)


def _check_speaker(name: str, speaker: object) -> None:
    if isinstance(speaker, bool) or not isinstance(speaker, int):
        raise InvalidRequest(name, f"must be an integer speaker id, got {type(speaker).__name__}")
    if not 0 <= speaker <= MAX_SPEAKER:
        raise InvalidRequest(name, f"must be between 0 and {MAX_SPEAKER}, got {speaker}")


def validate_request(req: SynthesisRequest, max_audio_ms: int, audio_vocab: int = NUM_MIMI_CODES) -> None:
    """Raise InvalidRequest naming the first bad field. Prompt length is checked at tokenisation."""
    if not isinstance(req.text, str) or not req.text.strip():
        raise InvalidRequest("text", "must be non-empty")
    if len(req.text) > MAX_TEXT_CHARS:
        raise InvalidRequest("text", f"is {len(req.text)} characters, at most {MAX_TEXT_CHARS} allowed")
    _check_speaker("speaker", req.speaker)
    ms = req.max_audio_length_ms
    if isinstance(ms, bool) or not isinstance(ms, int) or not FRAME_MS <= ms <= max_audio_ms:
        raise InvalidRequest("max_audio_length_ms", f"must be an integer from {FRAME_MS} to {max_audio_ms}, got {ms!r}")
    t = req.temperature
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or not 0 < t <= MAX_TEMPERATURE:
        raise InvalidRequest("temperature", f"must be in (0, {MAX_TEMPERATURE}], got {t!r}")
    k = req.top_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= audio_vocab:
        raise InvalidRequest("top_k", f"must be an integer from 1 to {audio_vocab}, got {k!r}")
    if req.seed is not None and (
        isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED
    ):
        raise InvalidRequest("seed", f"must be an integer from 0 to {MAX_SEED}, got {req.seed!r}")
    if not 0 <= req.prefix_segments <= len(req.context):
        raise InvalidRequest("prefix_segments", f"must be 0..{len(req.context)} (the context size)")
    for i, seg in enumerate(req.context):
        _check_speaker(f"context[{i}].speaker", seg.speaker)
        if not isinstance(seg.text, str):
            raise InvalidRequest(f"context[{i}].text", "must be a string")
        if seg.codes is not None:
            codes = np.asarray(seg.codes)
            if codes.ndim != 2 or codes.shape[0] != 32 or not np.issubdtype(codes.dtype, np.integer):
                raise InvalidRequest(f"context[{i}].codes", f"must be integers shaped [32, frames], got {codes.shape}")
            if codes.size and (codes.min() < 0 or codes.max() >= NUM_MIMI_CODES):
                raise InvalidRequest(f"context[{i}].codes", f"values must be in 0..{NUM_MIMI_CODES - 1}")


@dataclass
class Timings:
    queued_s: float = 0.0  # submit -> admitted to a slot
    prefill_s: float = 0.0  # admitted -> prefill complete (chunked: live streams' frames run in between)
    first_audio_s: float = 0.0  # submit -> first chunk out
    total_s: float = 0.0  # submit -> finished
    audio_s: float = 0.0
    prompt_positions: int = 0  # rows prefilled or taken from the prefix cache
    prefix_cache_hit: bool = False
    context_segments: int = 0  # context segments kept after trimming

    @property
    def real_time_factor(self) -> float:
        return self.total_s / self.audio_s if self.audio_s else 0.0


@dataclass
class AudioChunk:
    pcm: np.ndarray  # float32 [num_frames * 1920] at 24 kHz
    index: int  # 0, 1, 2 ... within the utterance
    first_frame: int
    num_frames: int


@dataclass
class Finished:
    reason: str  # "eos" | "max_length" | "cancelled" | "error"
    num_frames: int
    seed: int
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
    codes: np.ndarray | None = None  # [32, num_frames] generated codes
