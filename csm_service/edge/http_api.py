"""HTTP routes of the seed contract: GET /health, POST /synthesize, and GET /metrics."""

from __future__ import annotations

import base64
import contextlib
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from csm_service import __version__
from csm_service.api import safe_json
from csm_service.api.errors import LOADING_RETRY_S, ApiError
from csm_service.api.seed import seed_fields
from csm_service.api.speak import parse_speak
from csm_service.audio.encoder import FORMATS
from csm_service.audio.wav import wav_bytes
from csm_service.core.errors import INVALID_MESSAGE_FORMAT
from csm_service.core.service import EngineInfo
from csm_service.edge.access import admit, has_valid_key, request_caller
from csm_service.edge.backend import Backend
from csm_service.edge.connections import GuardedRequestHandler
from csm_service.edge.speech import Spoken, prepare, speak
from csm_service.edge.state import STATE
from csm_service.metrics import exposition

log = logging.getLogger(__name__)
RETRY_LATER = {"Retry-After": str(LOADING_RETRY_S)}  # every 503 says when to come back


def error_response(err: ApiError, openai: bool = False) -> web.Response:
    """``err`` as JSON: the native body, or OpenAI's shape (whose 401 sends no WWW-Authenticate)."""
    body, headers = (err.openai_body() if openai else err.http_body()), err.response_headers(not openai)
    return web.json_response(body, status=err.status, headers=headers or None)


def _health_detail(request: web.Request) -> bool:
    """Keys on: the detail (model, memory, load, version) only for a valid key or with
    ``public_health_detail``; a load balancer needs status and code alone."""
    state = request.app[STATE]
    return not state.checker.enabled or state.cfg.public_health_detail or has_valid_key(request)


def _status(draining: bool, info: EngineInfo | None, backend: Backend) -> str:
    """What /health and /ping say: draining, healthy (a worker serves), unavailable (none serves
    now, one has) or loading (none has served yet)."""
    if draining:
        return "draining"
    return "healthy" if info is not None else ("unavailable" if backend.has_been_ready else "loading")


async def health(request: web.Request) -> web.Response:
    """200 ``{"status": "healthy", "model_loaded": true, "device"}`` when a worker serves; else 503."""
    state = request.app[STATE]
    backend = state.backend
    info = await backend.info()
    if state.draining:
        info = None
    status = _status(state.draining, info, backend)
    body: dict[str, object] = {"status": status, "model_loaded": info is not None, "device": backend.device}
    detail = _health_detail(request)
    if detail:
        body.update(version=__version__, websocket_sessions=len(state.sessions))
    if info is not None and detail:
        body.update(
            model=info.model,
            device_name=info.device_name,
            dtype=info.dtype,
            gpu_memory_total_bytes=info.memory_total_bytes,
            gpu_memory_allocated_bytes=info.memory_allocated_bytes,
            engine={
                "max_batch": info.max_batch,
                "active_streams": info.active_streams,
                "queue_depth": info.queue_depth,
            },
        )
    state.metrics.requests.labels("health", "ok" if info else "unavailable").inc()
    return web.json_response(body, status=200 if info else 503, headers=None if info else RETRY_LATER)


async def ping(request: web.Request) -> web.Response:
    """RunPod's load-balancer convention: 200 ready, 204 still initializing, 503 unavailable."""
    state = request.app[STATE]
    draining = state.draining  # a draining server does not ask its engines
    status = _status(draining, None if draining else await state.backend.info(), state.backend)
    if status == "loading":
        return web.Response(status=204)
    ok = status == "healthy"
    return web.json_response({"status": status}, status=200 if ok else 503, headers=None if ok else RETRY_LATER)


def unreadable_body(request: web.BaseRequest, exc: Exception) -> ApiError:
    """A body aiohttp could not read (a broken gzip/deflate Content-Encoding, a bad chunk): 400.
    The rest of it cannot be read either, so the connection closes after this answer, without
    aiohttp's reading on to discard it (which met the same error and logged a traceback)."""
    cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    reason = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    log.info("unreadable request body: %s", reason)
    if isinstance(request.protocol, GuardedRequestHandler):
        request.protocol.discard_body()
    return ApiError(400, INVALID_MESSAGE_FORMAT, f"unreadable request body: {reason}", headers={"Connection": "close"})


async def read_json(request: web.Request) -> object:
    """The request body as JSON; ApiError 413 when too large, 400 when not JSON, not UTF-8,
    nested deeper than ``max_json_depth``, holding a lone surrogate, or not decodable (a bad
    gzip/deflate Content-Encoding)."""
    cfg = request.app[STATE].cfg
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request too large", f"the body is limited to {cfg.max_body_bytes} bytes") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        raise unreadable_body(request, exc) from None
    try:
        return safe_json.loads(raw, cfg.max_json_depth)
    except safe_json.JsonError as exc:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, str(exc)) from None


async def synthesize(request: web.Request) -> web.Response:
    """The whole utterance: base64 WAV at 24 kHz, or raw G.711 mu-law at 8 kHz (``mulaw_8khz``)."""
    started = time.perf_counter()
    with request.app[STATE].http_request():
        return await _synthesize(request, started)


async def _synthesize(request: web.Request, started: float) -> web.Response:
    state = request.app[STATE]
    spoken = Spoken()
    parts: list[bytes] = []
    try:
        admit(request)
        params = parse_speak(await read_json(request), state.cfg.max_text_chars, state.cfg.max_audio_length_ms)
        fmt = params.output_format
        engine_request, lease = prepare(state, request_caller(request), params, fmt.encoding)
        utterance = speak(state.backend, engine_request, state.cfg.max_piece_chars, spoken)
        async with lease, contextlib.aclosing(utterance) as chunks:
            async for chunk in chunks:
                parts.append(chunk.audio)
    except ApiError as err:
        state.metrics.requests.labels("synthesize", err.outcome).inc()
        return error_response(err)
    audio = b"".join(parts)
    # What the bytes last. Summing the chunks' durations drifts: each is rounded to a whole ms, and
    # an 8 kHz chunk (the resampler's output) need not last a whole number of ms.
    duration_ms = FORMATS[fmt.encoding.value].duration_ms(len(audio))
    if fmt.is_wav:
        audio = wav_bytes(audio, fmt.sample_rate)
    elapsed_s = time.perf_counter() - started
    first = spoken.first_timings
    body: dict[str, object] = {
        "audio_base64": base64.b64encode(audio).decode("ascii"),
        "sample_rate": fmt.sample_rate,
        "duration_ms": duration_ms,
        "generation_time_ms": round(elapsed_s * 1000),
        "format": fmt.name,
        **seed_fields(spoken.seed),
        "finish_reason": spoken.finish_reason,
        "pieces": spoken.pieces,
        "piece_frames": spoken.piece_frames,
        "prompt_positions": first.prompt_positions if first else 0,
        "prefix_cache_hit": first.prefix_cache_hit if first else False,
    }
    if params.request_id is not None:
        body["request_id"] = params.request_id
    state.metrics.requests.labels("synthesize", "ok").inc()
    state.metrics.ttfa.labels("synthesize").observe(elapsed_s)
    if duration_ms:
        state.metrics.rtf.labels("synthesize").observe(elapsed_s * 1000 / duration_ms)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics when the scraper's Accept header asks for it."""
    body, content_type = exposition(request.app[STATE].registry, request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type, "Vary": "Accept"})
