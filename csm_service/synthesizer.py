"""The short programmatic API: the in-process speech service, synchronously.

synth = Synthesizer.from_pretrained("tiny-random")
for pcm in synth.stream("Hello", speaker=0):   # float32 chunks at 24 kHz, first after 1 frame
    ...

The service is asynchronous; a Synthesizer runs it on an event loop of its own, in a thread, so
its methods may be called from any thread, an asyncio program's (or a notebook's) included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import replace
from typing import TypeVar

import numpy as np

from csm_service.config import EngineConfig
from csm_service.core.constants import DEFAULT_MAX_AUDIO_MS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, SAMPLE_RATE
from csm_service.core.errors import SynthesisFailed
from csm_service.core.events import FINISH_REASON_NAMES, Finished, SpeechChunk, Timings
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest
from csm_service.core.service import PromptAudio
from csm_service.engine.build import build_engine
from csm_service.engine.engine import Engine
from csm_service.speech.local import LocalSpeechService

T = TypeVar("T")
SynthesisError = SynthesisFailed  # the engine failed the utterance (the name this API has always raised)
ENGINE_REASONS = {name: reason for reason, name in FINISH_REASON_NAMES.items()}  # "end_of_speech" -> "eos"


async def _next(chunks: AsyncIterator[SpeechChunk]) -> SpeechChunk:
    return await anext(chunks)  # on the service's loop, which then finalises the generator


async def _aclose(chunks: AsyncIterator[SpeechChunk]) -> None:
    await chunks.aclose()  # type: ignore[attr-defined]


def _finished(final: SpeechChunk) -> Finished:
    """The engine's end record, from the utterance's final chunk."""
    timings = final.timings or Timings()
    return Finished(ENGINE_REASONS[final.finish_reason], final.num_frames, final.seed, timings, None, final.codes)


class Synthesizer:
    sample_rate = SAMPLE_RATE

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.service = LocalSpeechService(engine)
        self.last_result: Finished | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="csm-synthesizer", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, model: str = "sesame/csm-1b", **engine_options: object) -> Synthesizer:
        """``model``: hub id, local directory or file, or ``tiny-random``; options: EngineConfig fields."""
        cfg = replace(EngineConfig(max_batch=1, max_queue=4), model=model, **engine_options)  # type: ignore[arg-type]
        return cls(build_engine(cfg))

    def _call(self, coroutine: Coroutine[object, object, T]) -> T:
        """Run ``coroutine`` on the service's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_stream(self, chunks: AsyncIterator[SpeechChunk]) -> None:
        """End an utterance whose consumer stopped early: the engine frees its slot now."""
        if not self._loop.is_closed() and threading.current_thread() is not self._thread:
            self._call(_aclose(chunks))

    def stream(
        self,
        text: str,
        speaker: int = 0,
        context: list[Segment] | tuple[Segment, ...] = (),
        max_audio_length_ms: int = DEFAULT_MAX_AUDIO_MS,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        seed: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 PCM chunks at 24 kHz as frames are decoded."""
        request = SpeechRequest(
            text,
            speaker,
            max_audio_length_ms,
            temperature,
            top_k,
            seed,
            tuple(context),
            encoding=AudioEncoding.FLOAT32_24KHZ,
        )
        chunks = self.service.stream(request)
        try:
            while not (chunk := self._call(_next(chunks))).final:
                yield np.frombuffer(chunk.audio, dtype="<f4").copy()  # the engine's samples, bit for bit
            self.last_result = _finished(chunk)
        finally:
            self._close_stream(chunks)

    def generate(self, text: str, **kwargs: object) -> np.ndarray:
        """The whole utterance as one float32 array at 24 kHz."""
        chunks = list(self.stream(text, **kwargs))  # type: ignore[arg-type]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def encode_prompt(self, pcm16: bytes, sample_rate: int, transcript: str, speaker: int = 0) -> Segment:
        """A voice prompt (mono PCM16 little-endian, 8 to 48 kHz, and what it says) -> the context
        segment that makes the following text sound like it (its Mimi codes [32, F])."""
        return self._call(self.service.encode_prompt(PromptAudio(pcm16, sample_rate, transcript, speaker))).segment

    def close(self) -> None:
        self.engine.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
