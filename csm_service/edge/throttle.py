"""A debug brake on generation speed: ``--throttle-rtf R`` (benchmarks only, off by default).

Pacing and underrun measurements (``bench twilio``) need generation at a known real-time factor,
and tiny-random on a shared CPU runs faster or slower depending on load. Wrapped around the edge's
backend, this holds each chunk of a stream until ``R`` x (audio delivered so far, this chunk
included) has passed since the stream was asked for: generation is never faster than RTF ``R``
(slower engines are not sped up). The engine is untouched, so the audio is exactly the engine's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from csm_service.core.events import SpeechChunk
from csm_service.core.request import SpeechRequest
from csm_service.edge.backend import Backend


class ThrottledBackend:
    """``backend`` with every stream slowed to at most ``rtf`` (seconds of work per second of audio)."""

    def __init__(
        self,
        backend: Backend,
        rtf: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._backend = backend
        self.rtf = rtf
        self.clock, self.sleep = clock, sleep

    def __getattr__(self, name: str) -> object:  # everything but stream() is the backend's own
        return getattr(self._backend, name)

    async def stream(self, request: SpeechRequest) -> AsyncIterator[SpeechChunk]:
        began, audio_s = self.clock(), 0.0
        async for chunk in self._backend.stream(request):
            audio_s += chunk.duration_ms / 1000
            wait = began + self.rtf * audio_s - self.clock()
            if wait > 0:
                await self.sleep(wait)
            yield chunk
