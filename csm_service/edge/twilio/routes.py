"""``WS /v1/twilio/media-stream`` and the call control API.

Point ``<Connect><Stream url="wss://HOST/v1/twilio/media-stream">`` at the edge. ``<Parameter>``
elements arrive as ``start.customParameters``: ``greeting`` (said at once), ``voice``, ``speaker``,
``seed``, ``temperature``, ``top_k``, ``max_audio_length_ms``, ``raw_text`` (defaults for every
utterance), ``barge_in`` (``dtmf``, ``speech`` or both, comma-separated) and, with API keys on,
``api_key`` (Twilio's stream URL takes no query string and Twilio sends no bearer token).

Control, by ``streamSid``: ``POST /v1/calls/{streamSid}/say`` (``text``, ``voice``, ``interrupt``
and the native synthesis fields) answers 202 at once; ``POST /v1/calls/{streamSid}/clear``;
``GET /v1/calls`` and ``GET /v1/calls/{streamSid}`` (utterance states: queued, speaking, sent,
played, interrupted, cleared, failed). A call lives on the edge replica its stream reached.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from csm_service.auth import bearer_token
from csm_service.edge.admission import admit
from csm_service.edge.errors import INVALID_MESSAGE_FORMAT, ApiError
from csm_service.edge.http_api import read_json
from csm_service.edge.rate_limit import client_id
from csm_service.edge.state import STATE, EdgeState
from csm_service.edge.twilio import protocol
from csm_service.edge.twilio.call import TwilioCall
from csm_service.edge.ws_gate import POLICY_VIOLATION, open_websocket

log = logging.getLogger(__name__)

UNKNOWN_CALL = "Unknown call"
MAX_STREAM_SID_CHARS = 64


async def _await_start(ws: web.WebSocketResponse, state: EdgeState) -> tuple[dict | None, list[dict]]:
    """Read until ``start`` (``connected`` comes first) -> (start, events seen before it)."""
    before: list[dict] = []
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        try:
            message = protocol.parse_event(msg.data)
            state.metrics.twilio_events.labels(message["event"]).inc()
            if message["event"] != "start":
                if message["event"] == "stop":
                    break
                if message["event"] != "connected":
                    before.append(message)  # tolerated: handled once the call exists
                continue
            start = protocol.section(message, "start")
            sid = start.get("streamSid") or message.get("streamSid")
            if not isinstance(sid, str) or not sid or len(sid) > MAX_STREAM_SID_CHARS:
                raise protocol.ProtocolError(f"start: streamSid must be a string of 1 to {MAX_STREAM_SID_CHARS}")
            return {**start, "streamSid": sid}, before[-16:]
        except protocol.ProtocolError as exc:
            state.metrics.twilio_events.labels("invalid").inc()
            log.warning("media stream before start: %s", exc)
    return None, before


async def media_stream(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    header_key = bearer_token(request.headers.get("Authorization"))
    ws, serve = await open_websocket(request, state, header_key, "twilio")
    if not serve:
        return ws
    try:
        start, before = await asyncio.wait_for(_await_start(ws, state), state.cfg.ws_auth_timeout_s)
    except TimeoutError:
        await ws.close(code=POLICY_VIOLATION, message=b"no start event")
        return ws
    if start is None:
        await ws.close()
        return ws
    custom = start.get("customParameters")
    key = header_key or (custom.get("api_key") if isinstance(custom, dict) else None)
    if state.checker.enabled and not (isinstance(key, str) and state.checker.is_valid(key)):
        state.metrics.requests.labels("twilio", "unauthorized").inc()
        await ws.close(code=POLICY_VIOLATION, message=b"invalid or missing api_key custom parameter")
        return ws
    if start["streamSid"] in state.calls:
        await ws.close(code=POLICY_VIOLATION, message=b"streamSid already connected")
        return ws
    call = TwilioCall(ws, state, start, client_id(key if state.checker.enabled else None, request.remote))
    state.calls[call.stream_sid] = call
    state.sessions.add(call)
    state.metrics.twilio_calls.inc()
    log.info("call %s (%s) connected", call.stream_sid, call.call_sid)
    try:
        await call.run(before)
    finally:
        state.calls.pop(call.stream_sid, None)
        state.sessions.discard(call)
        state.metrics.twilio_calls.dec()
        if not ws.closed:
            await ws.close()
        log.info("call %s ended", call.stream_sid)
    return ws


def _call(request: web.Request) -> TwilioCall:
    sid = request.match_info["stream_sid"]
    call = request.app[STATE].calls.get(sid)
    if call is None:
        raise ApiError(404, UNKNOWN_CALL, f"streamSid: no connected call {sid[:80]!r}", "streamSid")
    return call


async def say(request: web.Request) -> web.Response:
    call = _call(request)
    admit(request, in_session=True)  # a live call may go on speaking while the edge drains
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"expected a JSON object, got {type(body).__name__}")
    interrupt = body.pop("interrupt", False)
    if not isinstance(interrupt, bool):
        raise ApiError(422, INVALID_MESSAGE_FORMAT, "interrupt: must be true or false", "interrupt")
    utterance = call.utterance(body)
    ahead = await call.say(utterance, interrupt)
    return web.json_response(
        {"utterance_id": utterance.utterance_id, "status": utterance.status, "ahead": ahead}, status=202
    )


async def clear(request: web.Request) -> web.Response:
    call = _call(request)
    cut = await call.clear("api")
    return web.json_response({"cleared": cut})


async def get_call(request: web.Request) -> web.Response:
    return web.json_response(_call(request).summary())


async def list_calls(request: web.Request) -> web.Response:
    calls = request.app[STATE].calls.values()
    return web.json_response({"calls": [{"stream_sid": c.stream_sid, "call_sid": c.call_sid} for c in calls]})
