"""What comes back: the engine's PCM chunks and its end-of-utterance record, and the encoded
chunks a :class:`~csm_service.core.service.SpeechService` streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from csm_service.core.request import AudioEncoding


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
class PcmChunk:
    """Decoded audio as the engine produces it."""

    pcm: np.ndarray  # float32 [num_frames * 1920] at 24 kHz
    index: int  # 0, 1, 2 ... within the utterance
    first_frame: int
    num_frames: int


@dataclass
class Finished:
    """The engine's end of an utterance."""

    reason: str  # "eos" | "max_length" | "cancelled" | "error"
    num_frames: int
    seed: int
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
    codes: np.ndarray | None = None  # [32, num_frames] generated codes


# Finished.reason -> the name callers see (an utterance that ends any other way raises instead).
FINISH_REASON_NAMES = {"eos": "end_of_speech", "max_length": "max_length"}


@dataclass
class SpeechChunk:
    """A piece of an utterance in the requested encoding. The last one has ``final`` set and
    carries what the whole utterance produced (reason, seed, timings, frames, codes)."""

    audio: bytes
    sequence: int  # 0, 1, 2, ... within the utterance
    duration_ms: float  # of this chunk's audio
    encoding: AudioEncoding
    sample_rate: int
    request_id: str = ""
    final: bool = False
    finish_reason: str = ""  # "end_of_speech" | "max_length" (final chunk)
    seed: int = 0
    timings: Timings | None = None
    num_frames: int = 0  # frames in the whole utterance (final chunk)
    codes: np.ndarray | None = None  # [32, num_frames] the whole utterance's codes (final chunk)
