"""Queue-based serverless jobs (RunPod ``/run``, ``/runsync``, ``/stream``) on an in-process engine.

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
from collections.abc import AsyncIterator, Callable, Mapping

import numpy as np

from csm_service.audio.encoder import StreamEncoder
from csm_service.audio.wav import wav_bytes
from csm_service.config import EngineConfig, ServiceConfig, build_config
from csm_service.edge.errors import ApiError
from csm_service.edge.params import parse_speak
from csm_service.engine.engine import Engine, RequestHandle
from csm_service.engine.request import (
    AudioChunk,
    EngineUnavailable,
    Finished,
    InvalidRequest,
    Overloaded,
    Segment,
    SynthesisRequest,
)
from csm_service.rpc.formats import ENCODING_FORMATS, FINISH_REASON_NAMES, FINISH_REASONS
from csm_service.voices import DEFAULT_VOICE, Voice, VoiceStore

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
JOB_TIMEOUT_S = 600.0  # the longest wait for the engine's next event before the job fails

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


async def _submit(
    engine: Engine, request: SynthesisRequest, sink: Callable[[AudioChunk | Finished], None]
) -> RequestHandle:
    """``engine.submit`` (validation, normalising, tokenising) off the event loop.

    A job stopped meanwhile (the SDK cancels its task) still frees the request once it is queued.
    """
    future = asyncio.get_running_loop().run_in_executor(None, engine.submit, request, sink)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def cancel_when_queued(done: asyncio.Future[RequestHandle]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().cancel()

        future.add_done_callback(cancel_when_queued)
        raise


async def run_job(job_input: object, engine: Engine) -> AsyncIterator[dict]:
    """Yield the job's results (see the module docstring)."""
    try:
        params = parse_speak(job_input, MAX_TEXT_CHARS)
    except ApiError as err:
        yield _bad_input(str(err), err.field)
        return
    fmt = params.output_format
    encoder = StreamEncoder(ENCODING_FORMATS[fmt.encoding])
    context: tuple[Segment, ...] = ()
    speaker = params.speaker
    if params.voice_profile_id != DEFAULT_VOICE:
        voice = await asyncio.to_thread(_load_voice, params.voice_profile_id)
        if voice is None:
            yield _bad_input(f"Unknown voice profile: {params.voice_profile_id!r}", "voice_profile_id")
            return
        context = (Segment(voice.speaker, voice.transcript, voice.codes),)
        speaker = voice.speaker if speaker is None else speaker
    request = SynthesisRequest(
        text=params.text,
        speaker=speaker or 0,
        context=context,
        prefix_segments=len(context),
        normalize_text=not params.raw_text,
        max_audio_length_ms=params.max_audio_length_ms,
        temperature=params.temperature if params.temperature is not None else 0.9,
        top_k=params.top_k if params.top_k is not None else 50,
        seed=params.seed,
    )
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[AudioChunk | Finished] = asyncio.Queue()

    def sink(event: AudioChunk | Finished) -> None:  # on the engine's thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    started = time.perf_counter()
    try:
        handle = await _submit(engine, request, sink)
    except InvalidRequest as exc:  # the engine's range checks
        yield _bad_input(str(exc), exc.field)
        return
    except (Overloaded, EngineUnavailable) as exc:
        yield {"error": str(exc)}
        return
    parts: list[bytes] = []
    index = 0
    first_audio_ms = None
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), JOB_TIMEOUT_S)
            except TimeoutError:
                yield {"error": f"synthesis timed out: no audio for {JOB_TIMEOUT_S:.0f} s"}
                return
            last = isinstance(event, Finished)
            if last and event.reason in ("error", "cancelled"):
                yield {"error": event.error or f"synthesis {event.reason}"}
                return
            data = encoder.encode(np.zeros(0, np.float32) if last else event.pcm, last=last)
            parts.append(data)
            if params.stream and not fmt.is_wav:
                first_audio_ms = first_audio_ms or round((time.perf_counter() - started) * 1000)
                yield {
                    "audio_base64": _b64(data),
                    "chunk_index": index,
                    "final": last,
                    "format": fmt.name,
                    "sample_rate": fmt.sample_rate,
                    "duration_ms": encoder.duration_ms(len(data)),
                }
                index += 1
            if last:
                break
    finally:
        handle.cancel()  # no-op when finished; frees the slot if the job was stopped or its consumer left
    audio = b"".join(parts)
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    duration_ms = encoder.duration_ms(len(audio))
    common = {
        "duration_ms": duration_ms,
        "generation_time_ms": elapsed_ms,
        "seed": event.seed,
        "finish_reason": FINISH_REASON_NAMES[FINISH_REASONS[event.reason]],
    }
    if params.stream and not fmt.is_wav:
        yield {"done": True, "chunks": index, "time_to_first_audio_ms": first_audio_ms, **common}
        return
    if fmt.is_wav:
        audio = wav_bytes(audio, fmt.sample_rate)
    yield {"audio_base64": _b64(audio), "sample_rate": fmt.sample_rate, "format": fmt.name, **common}


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
