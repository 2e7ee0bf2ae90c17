"""One WebSocket session on ``/v1/native/ws/{session_id}``: the seed's messages plus streaming.

Its messages: :data:`csm_service.api.websocket.WEBSOCKET_DOC`. Synthesize requests of one session run
concurrently on the engine (up to ``max_inflight_per_session``) but are answered strictly in the
order they arrived: each job buffers its replies and one sender task forwards job after job.
Nothing a client sends ends the session except ``close`` or closing the socket; disconnecting
cancels every job on the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import time
from collections import deque

from aiohttp import WSMsgType, web

from csm_service.api import safe_json
from csm_service.api.errors import ApiError
from csm_service.api.speak import parse_speak
from csm_service.api.validation import validate
from csm_service.api.websocket import WsAuth, WsCancel
from csm_service.core.errors import (
    INVALID_MESSAGE_FORMAT,
    MESSAGE_TOO_LARGE,
    TOO_MANY_IN_FLIGHT,
    UNKNOWN_TYPE,
)
from csm_service.core.request import AudioEncoding
from csm_service.edge.access import Caller, admit_client
from csm_service.edge.caller_turn import caller_turn
from csm_service.edge.speech import prepare
from csm_service.edge.state import EdgeState
from csm_service.edge.ws_gate import (
    NORMAL_CLOSURE,
    POLICY_VIOLATION,
    PUSHED_OUT,
    close_unless_authenticated,
    refuse_full,
    settle,
)
from csm_service.edge.ws_jobs import Job, Turn, produce

log = logging.getLogger(__name__)

KNOWN_TYPES = ("synthesize", "ping", "close", "cancel", "auth", "context")
MAX_HISTORY_TURNS = 64  # the engine trims further, to the position budget
_request_ids = itertools.count(1)


class WsSession:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        session_id: str,
        state: EdgeState,
        caller: Caller,
        authenticated: bool = True,
    ) -> None:
        self.ws = ws
        self.authenticated = authenticated
        self.caller = caller  # its principal is None until an auth message names it
        self.last_activity = time.monotonic()  # last message in or last request answered
        self.session_id = session_id
        self.state = state
        self.cfg = state.cfg
        self.jobs: deque[Job] = deque()  # not yet fully answered, in arrival order
        self.ready_jobs: asyncio.Queue[Job] = asyncio.Queue()
        self.send_lock = asyncio.Lock()
        self.closing = False
        self.history: deque[Turn] = deque(maxlen=MAX_HISTORY_TURNS)  # the conversation so far

    # -- sending ---------------------------------------------------------------------------------
    async def send(self, message: dict[str, object]) -> None:
        if self.ws.closed:
            return
        async with self.send_lock:
            try:
                await self.ws.send_str(json.dumps(message, separators=(",", ":")))
            except ConnectionError:
                self.closing = True

    async def _sender(self) -> None:
        """Forward each job's replies, job after job, in arrival order."""
        while True:
            job = await self.ready_jobs.get()
            while (reply := await job.replies.get()) is not None:
                if not job.is_cancelled:
                    await self.send(reply)
            if self.jobs and self.jobs[0] is job:
                self.jobs.popleft()
            self.last_activity = time.monotonic()

    # -- receiving -------------------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        deadline = None if self.authenticated else asyncio.create_task(self._auth_deadline())
        idle = asyncio.create_task(self._idle_watch()) if self.cfg.ws_idle_timeout_s > 0 else None
        try:
            async for msg in self.ws:
                self.last_activity = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._refuse(
                        ApiError(400, INVALID_MESSAGE_FORMAT, "binary frames are not accepted; send JSON text")
                    )
                else:  # ERROR, CLOSE...
                    break
                if self.closing:
                    break
        finally:
            # Every task of the session is cancelled before the first await, and waited for (the jobs
            # release their engine calls) even if this handler is cancelled meanwhile: see settle.
            self._cancel_jobs(None)
            await settle(sender, deadline, idle, *(job.task for job in self.jobs))
            if not self.ws.closed:
                await self.ws.close()

    def _count(self, kind: str) -> None:
        self.state.metrics.ws_messages.labels(kind).inc()

    async def _refuse(self, err: ApiError) -> None:
        """A message that cannot be read: counted as invalid and answered with ``err``; the session lives."""
        self._count("invalid")
        await self.send(err.ws_message())

    async def _on_text(self, data: str) -> None:
        limit = self.cfg.max_ws_message_bytes
        if len(data.encode("utf-8", "surrogatepass")) > limit:
            await self._refuse(ApiError(413, MESSAGE_TOO_LARGE, f"messages are limited to {limit} bytes"))
            return
        try:  # never raises past JsonError: a nested or odd message gets an error, the session lives
            message = safe_json.loads(data, self.cfg.max_json_depth)
        except safe_json.JsonError as exc:
            await self._refuse(ApiError(400, INVALID_MESSAGE_FORMAT, str(exc)))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            await self._refuse(ApiError(400, INVALID_MESSAGE_FORMAT, 'expected a JSON object with a string "type"'))
            return
        self._count(kind if kind in KNOWN_TYPES else "unknown")
        if not self.authenticated:
            await self._on_auth(message if kind == "auth" else None)
            return
        if kind == "synthesize":
            await self._on_synthesize(message)
        elif kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "close":
            self.closing = True
        elif kind == "cancel":
            await self._on_cancel(message)
        elif kind == "auth":
            await self.send({"type": "authenticated"})  # already: keys are off or were checked
        elif kind == "context":
            await self._on_context(message)
        else:
            await self.send(
                ApiError(400, UNKNOWN_TYPE, f"type {kind[:64]!r} is not one of {', '.join(KNOWN_TYPES)}").ws_message()
            )

    async def _idle_watch(self) -> None:
        """Close the session after ``ws_idle_timeout_s`` with no message in and no work pending."""
        timeout = self.cfg.ws_idle_timeout_s
        while not self.ws.closed:
            remaining = self.last_activity + timeout - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            elif self.jobs:  # answering is not idle: wait for the answer, then count again
                self.last_activity = time.monotonic()
            else:
                log.info("session %s: idle for %.0f s, closing", self.session_id[:64], timeout)
                self.state.metrics.requests.labels("websocket", "idle_timeout").inc()
                await self.ws.close(code=NORMAL_CLOSURE, message=b"idle timeout")
                return

    async def _auth_deadline(self) -> None:
        """Close the session if no valid ``auth`` came within ``ws_auth_timeout_s``, or at once if a
        newer unauthenticated socket pushed this one out of their budget (ws_gate.admit_pending)."""
        pushed_out = self.state.pending.get(self.ws) or asyncio.Event()
        timeout = self.cfg.ws_auth_timeout_s
        await close_unless_authenticated(
            self.ws, pushed_out, timeout, lambda: self.authenticated, b"authentication timed out"
        )

    async def _on_auth(self, message: dict | None) -> None:
        """The first message of a session opened without a key must be a valid ``auth``."""
        key = WsAuth.key_of(message)
        if isinstance(key, str) and self.state.checker.is_valid(key):
            still_pending = self.ws in self.state.pending
            if not self.state.promote(self.ws, self):  # pushed out meanwhile, or max_sessions are open
                await refuse_full(self.ws, self.state, "websocket", None if still_pending else PUSHED_OUT)
                self.closing = True
                return
            self.authenticated = True
            self.caller = Caller.of(self.state, key, self.caller.peer)
            await self.send({"type": "authenticated"})
            return
        self.state.metrics.requests.labels("websocket", "unauthorized").inc()
        reason = b"invalid API key" if message is not None else b'authentication required: send {"type":"auth"}'
        await self.ws.close(code=POLICY_VIOLATION, message=reason)
        self.closing = True

    async def _on_synthesize(self, message: dict) -> None:
        raw_id = message.get("request_id")
        echo_id = raw_id if isinstance(raw_id, str) else None
        try:
            admit_client(self.state, self.caller, in_session=True)
            params = parse_speak(message, self.cfg.max_text_chars, self.cfg.max_audio_length_ms)
            if len(self.jobs) >= self.cfg.max_inflight_per_session:
                raise ApiError(
                    429,
                    TOO_MANY_IN_FLIGHT,
                    f"at most {self.cfg.max_inflight_per_session} synthesize requests per session at once",
                    outcome="rejected",
                )
            request, lease = prepare(self.state, self.caller, params, AudioEncoding.MULAW_8KHZ)  # the tenant's share
        except ApiError as err:
            self.state.metrics.requests.labels("ws_synthesize", err.outcome).inc()
            await self.send(err.ws_message(echo_id))
            return
        request_id = params.request_id or f"{self.session_id[:64]}-{next(_request_ids)}"
        job = Job(params, request_id, time.perf_counter(), request=request)
        if params.session_context:
            job.request = dataclasses.replace(job.request, max_context_positions=self.cfg.session_context_positions)
            job.earlier = tuple(self.history)
        job.turn = Turn()
        self.history.append(job.turn)
        self.jobs.append(job)
        job.task = asyncio.create_task(produce(job, self.state, self.session_id))
        job.task.add_done_callback(lambda _: lease.release())  # cancelled before it ran, too
        self.ready_jobs.put_nowait(job)

    async def _on_context(self, message: dict) -> None:
        """A caller turn for the conversation: transcript, and optionally its audio."""
        try:
            if message.get("audio_base64") is not None:  # decoding and encoding it cost like a synthesis
                admit_client(self.state, self.caller, in_session=True)
            segment = await caller_turn(self.state, message)
        except ApiError as err:
            await self.send(err.ws_message())
            return
        turn = Turn(segment)
        turn.done.set()
        self.history.append(turn)
        await self.send(
            {
                "type": "context_added",
                "speaker": segment.speaker,
                "num_frames": segment.codes.shape[1] if segment.codes is not None else 0,
                "turns": sum(t.segment is not None for t in self.history),
            }
        )

    async def _on_cancel(self, message: dict) -> None:
        try:
            cancel = validate(WsCancel, message, status=400)
        except ApiError as err:
            await self.send(err.ws_message())
            return
        stopped = self._cancel_jobs(cancel.request_id)
        await self.send({"type": "cancelled", "request_id": cancel.request_id, "request_ids": stopped})

    def _cancel_jobs(self, request_id: str | None) -> list[str]:
        """Cancel every unfinished job (or the one with ``request_id``); their replies are dropped."""
        stopped = []
        for job in self.jobs:
            if job.is_cancelled or (request_id is not None and job.request_id != request_id):
                continue
            job.is_cancelled = True  # the sender drops whatever it has not sent yet
            if job.task is not None and not job.task.done():
                job.task.cancel()
            stopped.append(job.request_id)
            self.state.metrics.requests.labels("ws_synthesize", "cancelled").inc()
        return stopped
