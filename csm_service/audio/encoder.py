"""Streaming conversion of 24 kHz float PCM into an output format, one utterance at a time.

One :class:`StreamEncoder` per utterance holds the resampler state, so converting chunk by chunk
gives the same bytes as converting the whole utterance at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from csm_service.audio.g711 import pcm16_to_alaw, pcm16_to_mulaw
from csm_service.audio.wav import float_to_pcm16
from csm_service.core.constants import SAMPLE_RATE


@dataclass(frozen=True)
class OutputFormat:
    name: str
    sample_rate: int
    bytes_per_sample: int

    def duration_ms(self, num_bytes: int) -> int:
        """How long ``num_bytes`` of this format last, in whole ms."""
        return round(1000 * num_bytes / (self.sample_rate * self.bytes_per_sample))


PCM16_24K = OutputFormat("pcm16_24khz", SAMPLE_RATE, 2)
PCM16_8K = OutputFormat("pcm16_8khz", 8_000, 2)
MULAW_8K = OutputFormat("mulaw_8khz", 8_000, 1)
ALAW_8K = OutputFormat("alaw_8khz", 8_000, 1)
FORMATS = {f.name: f for f in (PCM16_24K, PCM16_8K, MULAW_8K, ALAW_8K)}


class StreamEncoder:
    def __init__(self, fmt: OutputFormat) -> None:
        self.format = fmt
        self._resampler = (
            soxr.ResampleStream(SAMPLE_RATE, fmt.sample_rate, 1, dtype="float32", quality="HQ")
            if fmt.sample_rate != SAMPLE_RATE
            else None
        )

    def encode(self, pcm: np.ndarray, last: bool = False) -> bytes:
        """float32 [T] at 24 kHz -> bytes in the output format (``last`` flushes the resampler)."""
        samples = np.ascontiguousarray(pcm, dtype=np.float32)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        pcm16 = float_to_pcm16(samples)
        if self.format is MULAW_8K:
            return pcm16_to_mulaw(pcm16)
        if self.format is ALAW_8K:
            return pcm16_to_alaw(pcm16)
        return pcm16.tobytes()

    def duration_ms(self, num_bytes: int) -> int:
        return self.format.duration_ms(num_bytes)
