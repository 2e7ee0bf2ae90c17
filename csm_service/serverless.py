"""Queue-based serverless jobs (RunPod ``/run``, ``/runsync``, ``/stream``) on an in-process engine.

A job's ``input`` takes the fields of ``POST /synthesize`` (``text``, ``speaker``,
``max_audio_length_ms``, ``output_format``, ``seed``, ...) and ``stream``. The handler is a
generator: without ``stream`` it yields one result shaped like the ``/synthesize`` response; with
``"stream": true`` it yields audio chunks as frames are decoded (``chunk_index``, ``final``), then
a ``done`` item with the timings. Bad input yields one ``{"error": ...}`` and never raises.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from csm_service.audio.encoder import StreamEncoder
from csm_service.audio.wav import wav_bytes
from csm_service.config import EngineConfig, build_config
from csm_service.edge.errors import ApiError
from csm_service.edge.params import parse_speak
from csm_service.engine.engine import Engine
from csm_service.engine.request import AudioChunk, Finished, InvalidRequest, Overloaded, Segment, SynthesisRequest
from csm_service.rpc.formats import ENCODING_FORMATS, FINISH_REASON_NAMES, FINISH_REASONS
from csm_service.voices import DEFAULT_VOICE, VoiceStore

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
JOB_TIMEOUT_S = 600.0

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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def run_job(job_input: object, engine: Engine) -> Iterator[dict]:
    """Yield the job's results (see the module docstring)."""
    try:
        params = parse_speak(job_input, MAX_TEXT_CHARS)
    except ApiError as err:
        yield {"error": str(err), **({"field": err.field} if err.field else {})}
        return
    fmt = params.output_format
    encoder = StreamEncoder(ENCODING_FORMATS[fmt.encoding])
    context: tuple[Segment, ...] = ()
    speaker = params.speaker
    if params.voice_profile_id != DEFAULT_VOICE:  # profiles on the worker's volume (CSM_DATA_DIR)
        voice = VoiceStore(build_config({}).data_dir).get(params.voice_profile_id)
        if voice is None:
            yield {"error": f"Unknown voice profile: {params.voice_profile_id!r}", "field": "voice_profile_id"}
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
    events: queue.Queue[AudioChunk | Finished] = queue.Queue()
    started = time.perf_counter()
    try:
        handle = engine.submit(request, events.put)
    except (InvalidRequest, Overloaded) as exc:
        yield {"error": str(exc), **({"field": exc.field} if isinstance(exc, InvalidRequest) else {})}
        return
    parts: list[bytes] = []
    index = 0
    first_audio_ms = None
    try:
        while True:
            event = events.get(timeout=JOB_TIMEOUT_S)
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
        handle.cancel()  # no-op when finished; frees the slot if the consumer stopped early
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


def handler(job: dict) -> Iterator[dict]:
    """The RunPod handler: ``job["input"]`` -> results (a generator, for ``/stream`` too)."""
    job_input = job.get("input") if isinstance(job, dict) else None
    yield from run_job(job_input, get_engine())
