"""The short programmatic API.

synth = Synthesizer.from_pretrained("tiny-random")
for pcm in synth.stream("Hello", speaker=0):   # float32 chunks at 24 kHz, first after 1 frame
    ...
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from csm_service.config import SAMPLE_RATE, EngineConfig
from csm_service.engine.build import build_engine
from csm_service.engine.engine import Engine
from csm_service.engine.request import AudioChunk, Finished, Segment, SynthesisRequest


class SynthesisError(RuntimeError):
    pass


class Synthesizer:
    sample_rate = SAMPLE_RATE

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.last_result: Finished | None = None

    @classmethod
    def from_pretrained(cls, model: str = "sesame/csm-1b", **engine_options: object) -> Synthesizer:
        """``model``: hub id, local directory or file, or ``tiny-random``; options: EngineConfig fields."""
        cfg = replace(EngineConfig(max_batch=1, max_queue=4), model=model, **engine_options)  # type: ignore[arg-type]
        return cls(build_engine(cfg))

    def stream(
        self,
        text: str,
        speaker: int = 0,
        context: list[Segment] | tuple[Segment, ...] = (),
        max_audio_length_ms: int = 30_000,
        temperature: float = 0.9,
        top_k: int = 50,
        seed: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 PCM chunks at 24 kHz as frames are decoded."""
        request = SynthesisRequest(text, speaker, max_audio_length_ms, temperature, top_k, seed, tuple(context))
        events: queue.Queue[AudioChunk | Finished] = queue.Queue()
        handle = self.engine.submit(request, events.put)
        try:
            while True:
                event = events.get()
                if isinstance(event, AudioChunk):
                    yield event.pcm
                    continue
                self.last_result = event
                if event.reason == "error":
                    raise SynthesisError(event.error or "synthesis failed")
                return
        finally:
            handle.cancel()  # a consumer that stops early frees the slot

    def generate(self, text: str, **kwargs: object) -> np.ndarray:
        """The whole utterance as one float32 array at 24 kHz."""
        chunks = list(self.stream(text, **kwargs))  # type: ignore[arg-type]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def close(self) -> None:
        self.engine.stop()
