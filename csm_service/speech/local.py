"""The speech service in process: core requests onto an engine, its PCM encoded as the caller asks.

:class:`LocalSpeechService` is the :class:`~csm_service.core.service.SpeechService` on the engine's
side: the gRPC servicer (:mod:`csm_service.rpc.servicer`), the RunPod handler, ``say`` and the
:class:`~csm_service.synthesizer.Synthesizer` all speak to it. It puts a stored voice's prompt
first (a cached prefix), encodes each chunk with a per-utterance encoder (resampler state carried
across chunks), replays a resumed utterance's earlier chunks without sending them, raises core
errors, counts the engine's request metrics, and cancels the engine request when its consumer
stops early, which frees the batch slot at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import numpy as np

from csm_service import __version__
from csm_service.audio.encoder import FORMATS, OutputFormat, StreamEncoder
from csm_service.core.constants import DEFAULT_VOICE, MAX_PROMPT_RATE, MAX_PROMPT_SECONDS, MIN_PROMPT_RATE, SAMPLE_RATE
from csm_service.core.errors import EngineUnavailable, InvalidRequest, Overloaded, SynthesisFailed
from csm_service.core.events import FINISH_REASON_NAMES, Finished, PcmChunk, SpeechChunk
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest
from csm_service.core.service import EncodedPrompt, EngineInfo, PromptAudio

if TYPE_CHECKING:
    from csm_service.engine.engine import Engine, RequestHandle
    from csm_service.metrics import EngineMetrics
    from csm_service.voices import VoiceStore

FLOAT32_24K = OutputFormat(AudioEncoding.FLOAT32_24KHZ.value, SAMPLE_RATE, 4)
NO_SAMPLES = np.zeros(0, np.float32)


class Float32Encoder(StreamEncoder):
    """The engine's own samples as float32 little-endian bytes (in-process callers only)."""

    def __init__(self) -> None:
        super().__init__(FLOAT32_24K)  # 24 kHz: no resampler

    def encode(self, pcm: np.ndarray, last: bool = False) -> bytes:
        return np.ascontiguousarray(pcm, dtype="<f4").tobytes()


def output_format(encoding: AudioEncoding) -> OutputFormat:
    """``encoding``'s rate and sample width (an AudioEncoding's value is its OutputFormat's name)."""
    return FLOAT32_24K if encoding is AudioEncoding.FLOAT32_24KHZ else FORMATS[encoding.value]


def chunk_encoder(encoding: AudioEncoding) -> StreamEncoder:
    """A fresh per-utterance encoder: 24 kHz float32 [T] -> ``encoding``'s bytes."""
    if encoding is AudioEncoding.FLOAT32_24KHZ:
        return Float32Encoder()
    return StreamEncoder(output_format(encoding))


def audio_duration_ms(encoding: AudioEncoding, num_bytes: int) -> int:
    """How long ``num_bytes`` of ``encoding``'s audio last, in whole ms (a whole utterance's length)."""
    return output_format(encoding).duration_ms(num_bytes)


def _every_voice() -> str | None:
    return None  # the scope that sees every stored profile


def check_prompt(prompt: PromptAudio) -> None:
    """What EncodePrompt takes: a transcript, 8..48 kHz, whole PCM16 samples, at most a minute."""
    seconds = len(prompt.pcm16) / 2 / prompt.sample_rate if prompt.sample_rate else 0.0
    if not prompt.transcript.strip():
        raise InvalidRequest("transcript", "must be non-empty")
    if not MIN_PROMPT_RATE <= prompt.sample_rate <= MAX_PROMPT_RATE:
        raise InvalidRequest(
            "sample_rate", f"must be {MIN_PROMPT_RATE}..{MAX_PROMPT_RATE} Hz, got {prompt.sample_rate}"
        )
    if not prompt.pcm16 or len(prompt.pcm16) % 2:
        raise InvalidRequest("audio", "must be non-empty PCM16 (an even number of bytes)")
    if seconds > MAX_PROMPT_SECONDS:
        raise InvalidRequest("audio", f"{seconds:.1f} s is longer than {MAX_PROMPT_SECONDS:.0f} s")
    if prompt.speaker < 0:
        raise InvalidRequest("speaker", f"must be >= 0, got {prompt.speaker}")


def final_chunk(finished: Finished, encoder: StreamEncoder, sequence: int, request: SpeechRequest) -> SpeechChunk:
    """The utterance's last chunk: the encoder's flushed tail and what the engine's Finished says."""
    tail = encoder.encode(NO_SAMPLES, last=True)
    return SpeechChunk(
        audio=tail,
        sequence=sequence,
        duration_ms=encoder.duration_ms(len(tail)) * 1.0,
        encoding=request.encoding,
        sample_rate=encoder.format.sample_rate,
        request_id=request.request_id,
        final=True,
        finish_reason=FINISH_REASON_NAMES[finished.reason],
        seed=finished.seed,
        timings=finished.timings,
        num_frames=finished.num_frames,
        codes=finished.codes,
    )


def _cancel_when_queued(submitted: asyncio.Future[RequestHandle]) -> None:
    if not submitted.cancelled() and submitted.exception() is None:
        submitted.result().cancel()


class LocalSpeechService:
    """The speech service over one engine in this process.

    ``voices``: the profiles a request's ``voice_profile_id`` names (None: only "default").
    ``metrics``: the engine's request counters (None: not counted). ``voice_scope``: the caller's
    profile scope, read when an utterance starts (the gRPC servicer passes the caller's tenant).
    """

    def __init__(
        self,
        engine: Engine,
        voices: VoiceStore | None = None,
        metrics: EngineMetrics | None = None,
        voice_scope: Callable[[], str | None] = _every_voice,
    ) -> None:
        self.engine = engine
        self.voices = voices
        self.metrics = metrics
        self.voice_scope = voice_scope

    @property
    def ready(self) -> bool:
        """The engine serves: loaded, warm and not draining."""
        return self.engine.is_serving

    async def info(self) -> EngineInfo:
        return EngineInfo(ready=self.engine.is_serving, version=__version__, **self.engine.describe())

    async def encode_prompt(self, prompt: PromptAudio) -> EncodedPrompt:
        check_prompt(prompt)
        pcm = np.frombuffer(prompt.pcm16, dtype="<i2").astype(np.float32) / 32768.0
        codes = await asyncio.to_thread(self.engine.encode_prompt, pcm, prompt.sample_rate)  # [32, F]
        segment = Segment(prompt.speaker, prompt.transcript, codes)
        return EncodedPrompt(segment, len(pcm) / prompt.sample_rate * 1000)

    async def stream(self, request: SpeechRequest) -> AsyncIterator[SpeechChunk]:
        request = await self._with_voice(request)
        encoder = chunk_encoder(request.encoding)
        events: asyncio.Queue[PcmChunk | Finished] = asyncio.Queue()
        handle = await self._submit(request, events)
        ended = False
        try:
            sequence = 0
            while isinstance(event := await events.get(), PcmChunk):
                data = encoder.encode(event.pcm)  # a replayed chunk too: the encoder's state must follow
                if sequence >= request.resume_from_sequence:
                    yield SpeechChunk(
                        data,
                        sequence,
                        encoder.duration_ms(len(data)) * 1.0,
                        request.encoding,
                        encoder.format.sample_rate,
                        request.request_id,
                    )
                sequence += 1
            self._end(event)
            ended = True
            yield final_chunk(event, encoder, sequence, request)
        except (asyncio.CancelledError, GeneratorExit):
            if not ended:  # the consumer went away (a cancelled call, a deadline, a stopped job)
                self._count("cancelled")
            raise
        finally:
            handle.cancel()  # a no-op once finished; otherwise frees the slot now

    async def _with_voice(self, request: SpeechRequest) -> SpeechRequest:
        """The stored profile's prompt first in the context, as the cached prefix, if the caller's
        scope may use it (an edge's admin or internal key sees every profile)."""
        voice_id = request.voice_profile_id
        if voice_id in ("", DEFAULT_VOICE):
            return request
        scope = self.voice_scope()
        voice = await asyncio.to_thread(self.voices.get, voice_id, scope) if self.voices else None
        if voice is None:
            self._count("invalid")
            raise InvalidRequest("voice_profile_id", f"no voice profile {voice_id[:80]!r}")
        context = (voice.context_segment(), *request.context)
        return dataclasses.replace(request, context=context, prefix_segments=request.prefix_segments + 1)

    async def _submit(self, request: SpeechRequest, events: asyncio.Queue[PcmChunk | Finished]) -> RequestHandle:
        """``engine.submit`` (validation, normalising, tokenising) off the event loop; a consumer
        that leaves meanwhile still frees the request once it is queued."""
        loop = asyncio.get_running_loop()

        def sink(event: PcmChunk | Finished) -> None:  # on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        submitted = loop.run_in_executor(None, self.engine.submit, request, sink)
        try:
            return await asyncio.shield(submitted)
        except asyncio.CancelledError:
            submitted.add_done_callback(_cancel_when_queued)
            self._count("cancelled")
            raise
        except InvalidRequest:
            self._count("invalid")
            raise
        except Overloaded:
            self._count("overloaded")
            raise
        except EngineUnavailable:
            self._count("unavailable")
            raise

    def _end(self, finished: Finished) -> None:
        """Count how the utterance ended; raise for one that did not end with audio."""
        if finished.reason == "error":
            self._count("error")
            raise SynthesisFailed(finished.error or "synthesis failed")
        if finished.reason == "cancelled":  # not by this consumer: the engine is stopping
            self._count("unavailable")
            raise EngineUnavailable(finished.error or "engine stopped")
        self._count(finished.reason)
        if self.metrics is not None:
            self.metrics.audio_seconds.inc(finished.timings.audio_s)
            timings = finished.timings
            self.metrics.queue_time.observe(timings.queued_s)
            self.metrics.prefill_time.observe(timings.prefill_s)
            self.metrics.e2e.observe(timings.total_s)
            if finished.num_frames:
                self.metrics.ttfa.observe(timings.first_audio_s)
                self.metrics.rtf.observe(timings.real_time_factor)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(outcome).inc()
