"""``WS /v1/twilio/media-stream`` and the call control API (``/v1/calls``, by ``streamSid``).

Point ``<Connect><Stream url="wss://HOST/v1/twilio/media-stream">`` at the edge; the ``<Parameter>``
names it reads (``start.customParameters``) are in :data:`csm_service.api.twilio.CALL_DOC`, the
control routes in :mod:`csm_service.api.routes`. ``say`` answers 202 at once. A call lives on the
edge replica its stream reached.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from csm_service.api import twilio_stream
from csm_service.api.errors import ApiError
from csm_service.api.twilio import SayControl
from csm_service.api.twilio_stream import CallParameters
from csm_service.api.validation import validate
from csm_service.edge.access import Caller, admit, request_key, request_principal
from csm_service.edge.http_api import read_json
from csm_service.edge.state import STATE, EdgeState
from csm_service.edge.twilio.call import TwilioCall
from csm_service.edge.twilio.vad import silero_session
from csm_service.edge.ws_gate import (
    POLICY_VIOLATION,
    close_unless_authenticated,
    joined,
    open_websocket,
    refuse_full,
    settle,
)

log = logging.getLogger(__name__)

UNKNOWN_CALL = "Unknown call"
MAX_EARLY_DTMF = 16  # digits pressed before start that are kept (Twilio sends none: start comes first)


async def _await_start(ws: web.WebSocketResponse, state: EdgeState) -> tuple[dict | None, list[str]]:
    """Read until ``start`` (``connected`` comes first) -> (start, DTMF digits pressed before it).

    Anyone may open a stream and send before ``start`` (its key comes in ``start``), so nothing else
    sent before it is kept (at most MAX_EARLY_DTMF digits), and at most ``twilio_prestart_bytes`` are
    read: past them the stream is closed (1008) before the next message is even parsed."""
    digits: list[str] = []
    budget = state.cfg.twilio_prestart_bytes
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        budget -= len(msg.data.encode("utf-8", "surrogatepass"))
        if budget < 0:
            state.metrics.twilio_events.labels("invalid").inc()
            await ws.close(code=POLICY_VIOLATION, message=b"too much data before the start event")
            break
        try:
            message = twilio_stream.parse_event(msg.data, state.cfg.max_json_depth)
            state.metrics.twilio_events.labels(message["event"]).inc()
            if message["event"] != "start":
                if message["event"] == "stop":
                    break
                if message["event"] == "dtmf" and len(digits) < MAX_EARLY_DTMF:
                    digits.append(twilio_stream.dtmf_digit(message))  # recorded; never a barge-in
                continue
            return twilio_stream.start_info(message), digits
        except twilio_stream.ProtocolError as exc:
            state.metrics.twilio_events.labels("invalid").inc()
            log.warning("media stream before start: %s", exc)
    return None, digits


async def _start_in_time(ws: web.WebSocketResponse, state: EdgeState) -> tuple[dict | None, list[str]]:
    """:func:`_await_start` while the stream holds a place among the unauthenticated sockets: it is
    closed at ``ws_auth_timeout_s`` (1008) or when a newer one pushes it out (1013); either way it
    leaves that budget here."""
    started = False
    watch = asyncio.create_task(
        close_unless_authenticated(
            ws, state.pending[ws], state.cfg.ws_auth_timeout_s, lambda: started, b"no start event"
        )
    )
    try:
        start, digits = await _await_start(ws, state)
        started = start is not None
        return start, digits
    finally:
        state.pending.pop(ws, None)
        await settle(watch)


async def media_stream(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    header_key = request_key(request)
    # Twilio's frames are small (a media frame: about 400 bytes): a larger one closes the stream (1009).
    limit = state.cfg.max_ws_message_bytes
    ws, serve = await open_websocket(request, state, header_key, "twilio", pending=True, max_msg_size=limit)
    if not serve:
        return ws
    start, early_dtmf = await _start_in_time(ws, state)
    if start is None:
        if not ws.closed:
            await ws.close()
        return ws
    custom = start.get("customParameters")
    key = header_key or (custom.get("api_key") if isinstance(custom, dict) else None)
    if state.checker.enabled and not (isinstance(key, str) and state.checker.is_valid(key)):
        state.metrics.requests.labels("twilio", "unauthorized").inc()
        await ws.close(code=POLICY_VIOLATION, message=b"invalid or missing api_key custom parameter")
        return ws
    if "speech" in CallParameters.of(start).barge_in:  # the VAD model's first load (~50 ms) off the event loop
        await asyncio.to_thread(silero_session)
    if start["streamSid"] in state.calls:
        await ws.close(code=POLICY_VIOLATION, message=b"streamSid already connected")
        return ws
    if len(state.sessions) >= state.cfg.max_sessions:  # there was room at the upgrade, none now
        await refuse_full(ws, state, "twilio")
        return ws
    call = TwilioCall(ws, state, start, Caller.of(state, key if isinstance(key, str) else None, request.remote))
    state.calls[call.stream_sid] = call
    log.info("call %s (%s) connected", call.stream_sid, call.call_sid)
    try:
        with joined(state, ws, call, state.metrics.twilio_calls):
            await call.run(early_dtmf)
    finally:
        state.calls.pop(call.stream_sid, None)
        if not ws.closed:
            await ws.close()
        log.info("call %s ended", call.stream_sid)
    return ws


def _visible(request: web.Request, call: TwilioCall) -> bool:
    """A call belongs to the tenant whose key started it; admins (and keys off) see every call."""
    return request_principal(request).can_see(call.caller.known().tenant)


def _call(request: web.Request) -> TwilioCall:
    """The call, or 404: another tenant's call is answered exactly like one that does not exist."""
    sid = request.match_info["stream_sid"]
    call = request.app[STATE].calls.get(sid)
    if call is None or not _visible(request, call):
        raise ApiError(404, UNKNOWN_CALL, f"streamSid: no connected call {sid[:80]!r}", "streamSid")
    return call


async def say(request: web.Request) -> web.Response:
    call = _call(request)
    admit(request, in_session=True)  # a live call may go on speaking while the edge drains
    body = await read_json(request)
    control = validate(SayControl, body)  # 400 for a non-object, 422 for a bad interrupt
    utterance = call.utterance(body)  # the native fields, the call's defaults first
    ahead = await call.say(utterance, control.interrupt)
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
    calls = [c for c in request.app[STATE].calls.values() if _visible(request, c)]
    return web.json_response({"calls": [{"stream_sid": c.stream_sid, "call_sid": c.call_sid} for c in calls]})
