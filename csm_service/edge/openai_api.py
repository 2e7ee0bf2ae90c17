"""OpenAI-compatible speech: ``POST /v1/audio/speech``, ``GET /v1/audio/voices``, model lists.

What the ``openai`` SDK, Open WebUI and other OpenAI-speaking clients send works unchanged. The
fields and their meanings: :mod:`csm_service.api.openai` and README "OpenAI-compatible speech";
tempo and formats: :mod:`csm_service.audio.response`. Errors use OpenAI's shape
(:meth:`~csm_service.api.errors.ApiError.openai_body`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from csm_service.api.errors import ApiError
from csm_service.api.openai import EXTENSION_FIELDS, MODEL_ID, OPENAI_VOICES, OpenAISpeech
from csm_service.api.seed import seed_fields
from csm_service.api.speak import SpeakParams, parse_speak
from csm_service.api.validation import validate
from csm_service.audio.containers import streaming_wav_header
from csm_service.audio.response import SpeechAudio
from csm_service.core.constants import DEFAULT_VOICE, FRAME_MS
from csm_service.core.errors import INVALID_MESSAGE_FORMAT, SYNTHESIS_FAILED
from csm_service.core.events import SpeechChunk
from csm_service.core.formats import FILE_FORMATS, FileFormat
from csm_service.edge.access import admit, request_caller, request_principal
from csm_service.edge.http_api import error_response, read_json
from csm_service.edge.speech import Spoken, prepare, speak
from csm_service.edge.state import STATE, EdgeState
from csm_service.tenants import Principal

log = logging.getLogger(__name__)

OPENAI_PATHS = ("/v1/audio/", "/v1/models")
MS_PER_CHAR, MIN_DEFAULT_MS = 150, 5_000  # default audio budget: ~2.5x a normal speaking rate
MAX_LISTED_VOICES = 500  # GET /v1/audio/voices has no pagination in Open WebUI's shape
LISTED_SINCE = int(time.time())  # "created" in the model list


@dataclass(frozen=True)
class SpeechRequest:
    params: SpeakParams  # text, voice, sampling; output_format unused (the engine sends PCM16 24 kHz or G.711)
    file_format: FileFormat
    speed: float
    sse: bool


async def _voice_id(state: EdgeState, name: str, principal: Principal) -> str:
    """OpenAI's ``voice`` (a name, checked by the model) -> a voice_profile_id: stock names and
    "default" are the default voice; else a profile's id or name among those the caller's tenant may use."""
    if name.lower() in (DEFAULT_VOICE, *OPENAI_VOICES):
        return DEFAULT_VOICE
    matches = await asyncio.to_thread(state.voices.resolve_name, name, principal.voice_scope)
    if len(matches) == 1:
        return matches[0]
    detail = f"several voice profiles are named {name[:80]!r}; use an id" if matches else "unknown voice"
    raise ApiError(400, INVALID_MESSAGE_FORMAT, f"voice: {detail} {name[:80]!r}", "voice")


async def parse_speech(body: object, state: EdgeState, principal: Principal) -> SpeechRequest:
    """An OpenAI speech request body -> SpeechRequest; ApiError 400 naming the bad parameter.
    OpenAI's fields first (:class:`~csm_service.api.openai.OpenAISpeech`), then the voice,
    then the text and the extensions as a native request."""
    speech = validate(OpenAISpeech, body, status=400)
    cfg = state.cfg
    text = speech.input
    default_ms = min(cfg.max_audio_length_ms, max(MIN_DEFAULT_MS, len(text) * MS_PER_CHAR) // FRAME_MS * FRAME_MS)
    native = {"text": text, "voice_profile_id": await _voice_id(state, speech.voice, principal)}
    native.update({k: body[k] for k in EXTENSION_FIELDS if body.get(k) is not None})  # type: ignore[union-attr]
    native.setdefault("max_audio_length_ms", default_ms)
    try:
        params = parse_speak(native, cfg.max_text_chars, cfg.max_audio_length_ms)
    except ApiError as err:
        if err.field == "text":  # OpenAI calls it input
            raise ApiError(400, err.message, (err.detail or "").replace("text:", "input:", 1), "input") from None
        raise ApiError(400, err.message, err.detail, err.field) from None
    file_format = FILE_FORMATS[speech.response_format]  # type: ignore[index]
    return SpeechRequest(params, file_format, float(speech.speed), speech.stream_format == "sse")  # type: ignore[arg-type]


def _sse(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def create_speech(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    with state.http_request():
        return await _create_speech(request, state)


async def _create_speech(request: web.Request, state: EdgeState) -> web.StreamResponse:
    started = time.perf_counter()
    spoken = Spoken()
    try:
        admit(request)
        principal = request_principal(request)
        speech = await parse_speech(await read_json(request), state, principal)
        audio = SpeechAudio(speech.file_format, speech.speed)  # built from checked fields: it raises nothing
        engine_request, lease = prepare(state, request_caller(request), speech.params, audio.engine_encoding)
    except ApiError as err:
        state.metrics.requests.labels("openai_speech", err.outcome).inc()
        return error_response(err, openai=True)
    utterance = speak(state.backend, engine_request, state.cfg.max_piece_chars, spoken)
    async with lease, contextlib.aclosing(utterance) as chunks:
        try:  # nothing is sent before the first chunk, so early failures are proper HTTP errors
            first = await anext(chunks)
        except ApiError as err:
            state.metrics.requests.labels("openai_speech", err.outcome).inc()
            return error_response(err, openai=True)
        except StopAsyncIteration:
            return error_response(ApiError(500, SYNTHESIS_FAILED, "the engine sent no audio"), openai=True)
        first_audio_s = time.perf_counter() - started
        state.metrics.ttfa.labels("openai_speech").observe(first_audio_s)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if speech.sse else speech.file_format.content_type,
                "Cache-Control": "no-store",
                "X-Seed": str(spoken.seed),
            }
        )
        await response.prepare(request)
        try:
            await _write_audio(response, speech, audio, first, chunks)
        except ApiError as err:  # after audio went out: SSE says so; a raw body is cut short
            state.metrics.requests.labels("openai_speech", err.outcome).inc()
            log.warning("speech stream failed after audio was sent: %s", err)
            if speech.sse:
                await response.write(_sse({"type": "error", "error": {"message": str(err), "code": err.outcome}}))
                await response.write_eof()
            elif request.transport is not None:
                request.transport.close()
            return response
    elapsed_s = time.perf_counter() - started
    duration_s = spoken.num_frames * FRAME_MS / 1000 / speech.speed
    state.metrics.requests.labels("openai_speech", "ok").inc()
    if duration_s:
        state.metrics.rtf.labels("openai_speech").observe(elapsed_s / duration_s)
    if speech.sse:
        await response.write(_sse(_done_event(spoken, duration_s, first_audio_s, elapsed_s)))
    await response.write_eof()
    return response


async def _write_audio(
    response: web.StreamResponse,
    speech: SpeechRequest,
    audio: SpeechAudio,
    first: SpeechChunk,
    chunks: AsyncIterator[SpeechChunk],
) -> None:
    """The body from ``first`` on: streamed as generated (raw or SSE deltas; MP3 and Opus as their
    encoder writes them), or whole at the end for FLAC. Raises ApiError when the utterance fails."""
    sent = 0
    held: list[bytes] = []  # formats written at the end
    if speech.file_format.name == "wav" and not speech.sse:
        await response.write(streaming_wav_header(speech.file_format.sample_rate))
    chunk = first
    with contextlib.closing(audio):  # an answer cut short still closes its encoder
        while True:
            data = audio.convert(chunk.audio, chunk.final)
            if not speech.file_format.streams:
                held.append(data)
            elif data:
                if speech.sse and speech.file_format.name == "wav" and sent == 0:
                    data = streaming_wav_header(speech.file_format.sample_rate) + data
                await response.write(_sse_delta(data) if speech.sse else data)
                sent += len(data)
            if chunk.final:
                break
            chunk = await anext(chunks)
    if held:
        data = await asyncio.to_thread(audio.file_bytes, held)
        await response.write(_sse_delta(data) if speech.sse else data)


def _done_event(spoken: Spoken, duration_s: float, first_audio_s: float, elapsed_s: float) -> dict[str, object]:
    """SSE's ``speech.audio.done``: usage in tokens (prompt positions in, frames out) and timings."""
    output_tokens = spoken.num_frames
    input_tokens = sum(spoken.piece_prompt_positions)
    return {
        "type": "speech.audio.done",
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        **seed_fields(spoken.seed),
        "finish_reason": spoken.finish_reason,
        "duration_ms": round(duration_s * 1000),
        "time_to_first_audio_ms": round(first_audio_s * 1000),
        "real_time_factor": round(elapsed_s / duration_s, 4) if duration_s else None,
    }


def _sse_delta(data: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})


async def list_voices(request: web.Request) -> web.Response:
    """Open WebUI's shape: ``{"voices": [{"id", "name"}]}`` (the default, then the caller's
    tenant's stored profiles, the oldest MAX_LISTED_VOICES; GET /v1/voices pages through all)."""
    scope = request_principal(request).voice_scope
    stored = await asyncio.to_thread(request.app[STATE].voices.page, scope, MAX_LISTED_VOICES)
    voices = [{"id": DEFAULT_VOICE, "name": "Default"}, *({"id": v.voice_id, "name": v.name} for v in stored)]
    return web.json_response({"voices": voices})


async def list_audio_models(request: web.Request) -> web.Response:
    """Open WebUI's ``/audio/models``: ``{"models": [{"id"}]}``."""
    return web.json_response({"models": [{"id": MODEL_ID, "name": "Sesame CSM-1B"}]})


def _model_card() -> dict[str, object]:
    return {"id": MODEL_ID, "object": "model", "created": LISTED_SINCE, "owned_by": "csm-service"}


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's ``GET /v1/models`` list shape."""
    return web.json_response({"object": "list", "data": [_model_card()]})


async def retrieve_model(request: web.Request) -> web.Response:
    """OpenAI's ``GET /v1/models/{model}`` (``models.retrieve``): the model the list names, else
    404 in OpenAI's shape (``code: model_not_found``), as OpenAI answers."""
    name = request.match_info["model"]
    if name != MODEL_ID:
        detail = f"the model {name[:80]!r} does not exist; GET /v1/models lists {MODEL_ID}"
        raise ApiError(404, "Not Found", detail, outcome="model_not_found")
    return web.json_response(_model_card())
