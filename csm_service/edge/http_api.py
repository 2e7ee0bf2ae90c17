"""HTTP routes of the seed contract: GET /health, POST /synthesize, and GET /metrics."""

from __future__ import annotations

import base64
import json
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from csm_service import __version__
from csm_service.audio.wav import wav_bytes
from csm_service.auth import bearer_token
from csm_service.edge.errors import INVALID_MESSAGE_FORMAT, RATE_LIMITED, SHUTTING_DOWN, ApiError
from csm_service.edge.params import parse_speak
from csm_service.edge.rate_limit import client_id, retry_after_header
from csm_service.edge.state import STATE
from csm_service.rpc.formats import FINISH_REASON_NAMES

log = logging.getLogger(__name__)


def error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(retry_after_header(err.retry_after_s))} if err.retry_after_s else {}
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if err.upgrade:
        headers.update({"Upgrade": "websocket", "Connection": "Upgrade"})
    return web.json_response(err.http_body(), status=err.status, headers=headers or None)


async def health(request: web.Request) -> web.Response:
    """200 ``{"status": "healthy", "model_loaded": true, "device"}`` when a worker serves; else 503."""
    state = request.app[STATE]
    backend = state.backend
    info = await backend.info()
    if state.draining:
        info = None
    body: dict[str, object] = {
        "status": "draining"
        if state.draining
        else ("healthy" if info else ("unavailable" if backend.has_been_ready else "loading")),
        "model_loaded": info is not None,
        "device": backend.device,
        "version": __version__,
        "websocket_sessions": len(state.sessions),
    }
    if info is not None:
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
    return web.json_response(body, status=200 if info else 503)


async def ping(request: web.Request) -> web.Response:
    """RunPod's load-balancer convention: 200 ready, 204 still initializing, 503 unavailable."""
    state = request.app[STATE]
    backend = state.backend
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    if await backend.info() is not None:
        return web.json_response({"status": "healthy"})
    if not backend.has_been_ready:
        return web.Response(status=204)
    return web.json_response({"status": "unavailable"}, status=503)


async def read_json(request: web.Request) -> object:
    """The request body as JSON; ApiError 413 when too large, 400 when not JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].cfg.max_body_bytes
        raise ApiError(413, "Request too large", f"the body is limited to {limit} bytes") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"invalid JSON: {exc}") from None


def admit(request: web.Request) -> None:
    """Refuse new work while draining, and over the client's request rate (ApiError 503 / 429)."""
    state = request.app[STATE]
    if state.draining:
        raise ApiError(503, SHUTTING_DOWN, "this server is draining; retry on another", retry_after_s=5)
    key = bearer_token(request.headers.get("Authorization")) if state.checker.enabled else None
    wait_s = state.limiter.acquire(client_id(key, request.remote))
    if wait_s:
        raise ApiError(429, RATE_LIMITED, f"over {state.limiter.rate_per_s:g} requests/s", retry_after_s=wait_s)


async def synthesize(request: web.Request) -> web.Response:
    """The whole utterance: base64 WAV at 24 kHz, or raw G.711 mu-law at 8 kHz (``mulaw_8khz``)."""
    state = request.app[STATE]
    started = time.perf_counter()
    state.http_inflight += 1
    try:
        return await _synthesize(request, started)
    finally:
        state.http_inflight -= 1


async def _synthesize(request: web.Request, started: float) -> web.Response:
    state = request.app[STATE]
    try:
        admit(request)
        params = parse_speak(await read_json(request), state.cfg.max_text_chars, state.cfg.max_audio_length_ms)
        fmt = params.output_format
        response = await state.backend.synthesize(params.to_proto(fmt.encoding))
    except ApiError as err:
        state.metrics.requests.labels("synthesize", err.outcome).inc()
        return error_response(err)
    audio = response.audio
    if fmt.is_wav:
        audio = wav_bytes(audio, fmt.sample_rate)
    elapsed_s = time.perf_counter() - started
    duration_ms = round(response.duration_ms)
    body: dict[str, object] = {
        "audio_base64": base64.b64encode(audio).decode("ascii"),
        "sample_rate": fmt.sample_rate,
        "duration_ms": duration_ms,
        "generation_time_ms": round(elapsed_s * 1000),
        "format": fmt.name,
        "seed": response.seed,
        "finish_reason": FINISH_REASON_NAMES.get(response.finish_reason, "unknown"),
    }
    if params.request_id is not None:
        body["request_id"] = params.request_id
    state.metrics.requests.labels("synthesize", "ok").inc()
    state.metrics.ttfa.labels("synthesize").observe(elapsed_s)
    if duration_ms:
        state.metrics.rtf.labels("synthesize").observe(elapsed_s * 1000 / duration_ms)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[STATE].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})
