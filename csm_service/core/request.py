"""A speech request: the text, who says it, the context before it, how to sample, what format."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from csm_service.core.constants import (
    DEFAULT_MAX_AUDIO_MS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    FRAME_MS,
    MAX_SEED,
    MAX_SPEAKER,
    MAX_TEMPERATURE,
    MAX_TEXT_CHARS,
    NUM_CODEBOOKS,
    NUM_MIMI_CODES,
)
from csm_service.core.errors import InvalidRequest


class AudioEncoding(enum.Enum):
    """The bytes a caller gets: mono, no header. The value is the format's name."""

    PCM16_24KHZ = "pcm16_24khz"  # signed 16-bit little-endian, 24000 Hz (Mimi's own rate)
    PCM16_8KHZ = "pcm16_8khz"  # signed 16-bit little-endian, 8000 Hz
    MULAW_8KHZ = "mulaw_8khz"  # G.711 mu-law, 8000 Hz (Twilio)
    ALAW_8KHZ = "alaw_8khz"  # G.711 A-law, 8000 Hz
    FLOAT32_24KHZ = "float32_24khz"  # in-process callers only (the Synthesizer): the engine's own samples


@dataclass(frozen=True)
class Segment:
    """A context utterance: who said what, and its Mimi codes [32, F] (None: text only)."""

    speaker: int
    text: str
    codes: np.ndarray | None = None


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance. The first seven fields are positional (the Synthesizer's order)."""

    text: str
    speaker: int = 0
    max_audio_length_ms: int = DEFAULT_MAX_AUDIO_MS
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int | None = None  # None: the engine draws one and reports it
    context: tuple[Segment, ...] = ()  # oldest first
    prefix_segments: int = 0  # leading context segments that are a stable prefix (KV cached)
    max_context_positions: int = 0  # trim the other context to this, newest kept (0: no trim)
    normalize_text: bool = True  # numbers, dates, ... as words before tokenising
    encoding: AudioEncoding = AudioEncoding.PCM16_24KHZ
    request_id: str = ""  # echoed back; for logs and tracing
    voice_profile_id: str = ""  # a stored profile the engine worker puts first ("" or "default": none)
    resume_from_sequence: int = 0  # a replay: chunks before this sequence were already delivered

    @property
    def max_frames(self) -> int:
        """Whole 80 ms frames that fit: the audio never exceeds max_audio_length_ms."""
        return max(1, self.max_audio_length_ms // FRAME_MS)


def _check_speaker(name: str, speaker: object) -> None:
    if isinstance(speaker, bool) or not isinstance(speaker, int):
        raise InvalidRequest(name, f"must be an integer speaker id, got {type(speaker).__name__}")
    if not 0 <= speaker <= MAX_SPEAKER:
        raise InvalidRequest(name, f"must be between 0 and {MAX_SPEAKER}, got {speaker}")


def _check_sampling(req: SpeechRequest, audio_vocab: int) -> None:
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


def _check_context(req: SpeechRequest) -> None:
    if not 0 <= req.prefix_segments <= len(req.context):
        raise InvalidRequest("prefix_segments", f"must be 0..{len(req.context)} (the context size)")
    for i, seg in enumerate(req.context):
        _check_speaker(f"context[{i}].speaker", seg.speaker)
        if not isinstance(seg.text, str):
            raise InvalidRequest(f"context[{i}].text", "must be a string")
        if seg.codes is not None:
            codes = np.asarray(seg.codes)
            if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or not np.issubdtype(codes.dtype, np.integer):
                raise InvalidRequest(f"context[{i}].codes", f"must be integers shaped [32, frames], got {codes.shape}")
            if codes.size and (codes.min() < 0 or codes.max() >= NUM_MIMI_CODES):
                raise InvalidRequest(f"context[{i}].codes", f"values must be in 0..{NUM_MIMI_CODES - 1}")


def validate_request(req: SpeechRequest, max_audio_ms: int, audio_vocab: int = NUM_MIMI_CODES) -> None:
    """Raise InvalidRequest naming the first bad field. Prompt length is checked at tokenisation."""
    if not isinstance(req.text, str) or not req.text.strip():
        raise InvalidRequest("text", "must be non-empty")
    if len(req.text) > MAX_TEXT_CHARS:
        raise InvalidRequest("text", f"is {len(req.text)} characters, at most {MAX_TEXT_CHARS} allowed")
    _check_speaker("speaker", req.speaker)
    ms = req.max_audio_length_ms
    if isinstance(ms, bool) or not isinstance(ms, int) or not FRAME_MS <= ms <= max_audio_ms:
        raise InvalidRequest("max_audio_length_ms", f"must be an integer from {FRAME_MS} to {max_audio_ms}, got {ms!r}")
    _check_sampling(req, audio_vocab)
    _check_context(req)
