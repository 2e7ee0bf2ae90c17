"""The one interface every front door speaks: stream an utterance, encode a voice prompt, info.

Two implementations: in process over an engine (:mod:`csm_service.speech.local`) and over gRPC to
engine workers (:mod:`csm_service.rpc.remote`). The edge, ``serve``, ``say``, the RunPod handler
and the :class:`~csm_service.synthesizer.Synthesizer` are written against this protocol only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from csm_service.core.events import SpeechChunk
from csm_service.core.request import Segment, SpeechRequest


@dataclass(frozen=True)
class EngineInfo:
    """What an engine runs and whether it serves."""

    ready: bool  # loaded, warm and accepting work
    state: str  # loading | serving | draining | stopped
    model: str = ""  # hub id, directory or tiny-random
    device: str = ""  # "cuda" or "cpu"
    device_name: str = ""
    dtype: str = ""
    memory_total_bytes: int = 0
    memory_allocated_bytes: int = 0
    max_batch: int = 0
    active_streams: int = 0
    queue_depth: int = 0
    version: str = ""


@dataclass(frozen=True)
class PromptAudio:
    """A voice prompt to encode: mono PCM16 little-endian at ``sample_rate`` and what it says."""

    pcm16: bytes
    sample_rate: int
    transcript: str
    speaker: int = 0


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as a context segment (its Mimi codes [32, F]) and the audio's length."""

    segment: Segment
    duration_ms: float


class SpeechService(Protocol):
    def stream(self, request: SpeechRequest) -> AsyncIterator[SpeechChunk]:
        """The utterance's chunks, the last one ``final``. Raises a :class:`SpeechError`.
        Closing the iterator early cancels the utterance and frees its slot at once."""
        ...

    async def encode_prompt(self, prompt: PromptAudio) -> EncodedPrompt:
        """Audio + transcript -> Mimi codes. Raises a :class:`SpeechError`."""
        ...

    async def info(self) -> EngineInfo | None:
        """A serving engine's info, or None while none serves."""
        ...
