"""Queue-based serverless jobs (RunPod ``/run``, ``/runsync``, ``/stream``) on the in-process speech service.

A job's ``input`` takes the fields of ``POST /synthesize`` (``text``, ``speaker``,
``max_audio_length_ms``, ``output_format``, ``seed``, ...) and ``stream``. The handler is an async
generator: without ``stream`` it yields one result shaped like the ``/synthesize`` response; with
``"stream": true`` it yields audio chunks as frames are decoded (``chunk_index``, ``final``), then
a ``done`` item with the timings.

One worker runs several jobs at once (``concurrency_modifier``: the engine's ``max_batch``, or
``CSM_RUNPOD_CONCURRENCY``); they share the engine's batch, and the handler never blocks the
SDK's event loop (the engine delivers audio from its own thread).

Errors never raise. Bad input (the caller's mistake, HTTP's 4xx) yields one
``{"error": ..., "field": ...}`` item that is the job's output: the job COMPLETES with
``[{"error", "field"}]``. A failure on the worker's side (the engine failed, stopped, is full, or
went silent for ``JOB_TIMEOUT_S``) yields ``{"error": ...}``, which the SDK turns into a FAILED job.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

from csm_service.api.errors import ApiError
from csm_service.api.speak import HttpFormat, parse_speak
from csm_service.audio.wav import wav_bytes
from csm_service.config import EngineConfig, ServiceConfig, build_config
from csm_service.core.constants import DEFAULT_VOICE, MAX_TEXT_CHARS
from csm_service.core.errors import UNKNOWN_VOICE, InvalidRequest, SpeechError
from csm_service.core.events import SpeechChunk
from csm_service.core.request import Segment
from csm_service.engine.engine import Engine
from csm_service.speech.local import LocalSpeechService, audio_duration_ms
from csm_service.voices import Voice, VoiceStore

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 600.0  # the longest wait for the engine's next chunk before the job fails

_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine(cfg: EngineConfig | None = None) -> Engine:
    """The process's engine, built once (from ``CSM_*`` variables unless ``cfg`` is given)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            from csm_service.engine.build import build_engine

            _engine = build_engine(cfg or build_config({}).engine)
        return _engine


class BadInput(dict):
    """A bad-input item, ``{"error": message, "field"?: name}``: the job's output, not a failed job.

    The runpod SDK's job runner fails the job on any yielded dict whose ``get("error")`` is truthy,
    keeping only that string: ``field`` would be lost and the caller's mistake would count as the
    worker's. This dict answers ``get("error")`` with ``None`` and is otherwise a plain dict
    (``self["error"]`` is the message), so the SDK sends it as it is (``json.dumps``) and the job
    COMPLETES with ``[{"error", "field"}]``, as under ``--rp_serve_api``.
    """

    def get(self, key: object, default: object = None) -> object:
        return default if key == "error" else super().get(key, default)


def _bad_input(message: str, field: str | None) -> BadInput:
    return BadInput(error=message, **({"field": field} if field else {}))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _load_voice(voice_id: str) -> Voice | None:
    """A profile from the worker's volume (``CSM_DATA_DIR``)."""
    return VoiceStore(build_config({}).data_dir).get(voice_id)


async def _voice_prompt(voice_id: str) -> Segment | None:
    """The profile's prompt (None for the built-in default); ApiError if there is no such profile."""
    if voice_id == DEFAULT_VOICE:
        return None
    voice = await asyncio.to_thread(_load_voice, voice_id)
    if voice is None:
        raise ApiError(422, UNKNOWN_VOICE, repr(voice_id), "voice_profile_id")
    return voice.context_segment()


async def _next_chunk(chunks: AsyncIterator[SpeechChunk]) -> SpeechChunk:
    """The utterance's next chunk; TimeoutError after ``JOB_TIMEOUT_S`` without one (the utterance is cancelled)."""
    return await asyncio.wait_for(anext(chunks), JOB_TIMEOUT_S)


def _stream_item(chunk: SpeechChunk, fmt: HttpFormat) -> dict:
    return {
        "audio_base64": _b64(chunk.audio),
        "chunk_index": chunk.sequence,
        "final": chunk.final,
        "format": fmt.name,
        "sample_rate": chunk.sample_rate,
        "duration_ms": round(chunk.duration_ms),
    }


async def run_job(job_input: object, engine: Engine) -> AsyncIterator[dict]:
    """Yield the job's results (see the module docstring)."""
    try:
        job = parse_speak(job_input, MAX_TEXT_CHARS)  # checked as POST /synthesize's body
        request = job.to_request(job.output_format.encoding, await _voice_prompt(job.voice_profile_id))
    except ApiError as err:
        yield _bad_input(str(err), err.field)
        return
    fmt, streamed = job.output_format, job.stream and not job.output_format.is_wav
    started = time.perf_counter()
    first_audio_ms = None
    parts: list[bytes] = []
    final: SpeechChunk | None = None
    try:
        async with aclosing(LocalSpeechService(engine).stream(request)) as chunks:
            while final is None:
                chunk = await _next_chunk(chunks)
                final = chunk if chunk.final else None
                parts.append(chunk.audio)
                if streamed:
                    first_audio_ms = first_audio_ms or round((time.perf_counter() - started) * 1000)
                    yield _stream_item(chunk, fmt)
    except InvalidRequest as exc:  # the engine's range checks
        yield _bad_input(str(exc), exc.field)
        return
    except SpeechError as exc:  # overloaded, stopped, failed
        yield {"error": str(exc)}
        return
    except TimeoutError:
        yield {"error": f"synthesis timed out: no audio for {JOB_TIMEOUT_S:.0f} s"}
        return
    audio = b"".join(parts)
    common = {
        "duration_ms": audio_duration_ms(request.encoding, len(audio)),
        "generation_time_ms": round((time.perf_counter() - started) * 1000),
        "seed": final.seed,
        "finish_reason": final.finish_reason,
    }
    if streamed:
        yield {"done": True, "chunks": final.sequence + 1, "time_to_first_audio_ms": first_audio_ms, **common}
        return
    if fmt.is_wav:
        audio = wav_bytes(audio, final.sample_rate)
    yield {"audio_base64": _b64(audio), "sample_rate": final.sample_rate, "format": fmt.name, **common}


async def handler(job: dict) -> AsyncIterator[dict]:
    """The RunPod handler: ``job["input"]`` -> results (an async generator, for ``/stream`` too)."""
    job_input = job.get("input") if isinstance(job, dict) else None
    engine = _engine or await asyncio.to_thread(get_engine)
    async for item in run_job(job_input, engine):
        yield item


async def handler_one_result(job: dict) -> list[dict] | dict:
    """``handler`` for the SDK's paths that await one return value instead of iterating a generator.

    Those are a local job (``--test_input``, ``test_input.json``) and ``RUNPOD_REALTIME_PORT``: given
    a generator they would report it, un-run, as the output. Returns the list of what ``handler``
    yields (``return_aggregate_stream``'s output), or ``{"error": ...}`` where the job runner would
    fail the job (a bad-input item stays in the list, as there).
    """
    items: list[dict] = []
    async for item in handler(job):
        if item.get("error"):
            return {"error": str(item["error"])}
        items.append(item)
    return items


def job_concurrency(engine: Engine, cfg: ServiceConfig | None = None) -> int:
    """Jobs one worker takes at once: ``runpod_concurrency`` if set, else the engine's batch slots."""
    override = (cfg or build_config({})).runpod_concurrency
    return override if override > 0 else engine.num_slots  # sized at start-up, max_batch at most


def worker_config(engine: Engine, one_result: bool = False, cfg: ServiceConfig | None = None) -> dict[str, object]:
    """The config for ``runpod.serverless.start``.

    ``one_result``: the SDK will await the handler once (see :func:`handler_one_result`) instead of
    running the job runner or its local API; :func:`sdk_awaits_one_result` tells which.
    """
    concurrency = job_concurrency(engine, cfg)
    return {
        "handler": handler_one_result if one_result else handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": lambda _current: concurrency,
    }


def sdk_awaits_one_result(serve_api: bool, test_input: bool, environ: Mapping[str, str]) -> bool:
    """Whether ``runpod.serverless.start`` will await the handler once rather than iterate it.

    It mirrors the SDK's own choice (1.12): ``--rp_serve_api`` serves its local API (which iterates
    generators); otherwise ``RUNPOD_REALTIME_PORT`` serves ``/realtime``, and ``--test_input`` or a
    missing ``RUNPOD_WEBHOOK_GET_JOB`` runs one local job, both awaiting one return value; otherwise
    the job runner takes jobs from RunPod.
    """
    if serve_api:
        return False
    realtime = int(environ.get("RUNPOD_REALTIME_PORT", "0") or "0") != 0
    return realtime or test_input or environ.get("RUNPOD_WEBHOOK_GET_JOB") is None
