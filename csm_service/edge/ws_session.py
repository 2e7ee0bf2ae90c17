"""One WebSocket session on ``/v1/native/ws/{session_id}``: the seed's messages plus streaming.

In: ``synthesize``, ``ping``, ``close`` (seed); ``cancel`` (extension). Out: ``audio``, ``pong``,
``error`` (seed); ``done``, ``cancelled`` (extensions). Synthesize requests of one session run
concurrently on the engine (up to ``max_inflight_per_session``) but are answered strictly in the
order they arrived: each job buffers its replies and one sender task forwards job after job.
Nothing a client sends ends the session except ``close`` or closing the socket; disconnecting
cancels every job on the engine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from csm_service.edge import safe_json
from csm_service.edge.admission import admit_client, hold_utterance
from csm_service.edge.errors import (
    INVALID_MESSAGE_FORMAT,
    MESSAGE_TOO_LARGE,
    SYNTHESIS_FAILED,
    TOO_MANY_IN_FLIGHT,
    TOO_MANY_SESSIONS,
    UNKNOWN_TYPE,
    ApiError,
)
from csm_service.edge.params import SpeakParams, parse_speak
from csm_service.edge.rate_limit import client_id
from csm_service.edge.speech import Spoken, speak
from csm_service.edge.state import EdgeState
from csm_service.edge.voices_api import caller_turn, lookup_voice, synthesis_request
from csm_service.edge.ws_gate import (
    NORMAL_CLOSURE,
    POLICY_VIOLATION,
    PUSHED_OUT,
    TRY_AGAIN_LATER,
    close_unless_authenticated,
    settle,
)
from csm_service.rpc.formats import FINISH_REASON_NAMES
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

log = logging.getLogger(__name__)

WS_FORMAT = "mulaw_8khz"  # the seed: always G.711 mu-law at 8 kHz on the WebSocket
MULAW_BYTES_PER_MS = 8
KNOWN_TYPES = ("synthesize", "ping", "close", "cancel", "auth", "context")
MAX_HISTORY_TURNS = 64  # the engine trims further, to the position budget
_request_ids = itertools.count(1)


@dataclass
class Job:
    params: SpeakParams
    request_id: str
    received_at: float
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)  # dicts, then None at the end
    task: asyncio.Task | None = None
    is_cancelled: bool = False
    first_audio_ms: int | None = None  # received -> first audio reply queued
    request: pb.SynthesizeRequest | None = None  # voice prefix set; session context added when it runs
    turn: Turn | None = None  # this utterance's place in the session's history
    earlier: tuple[Turn, ...] = ()  # with "context": "session": the turns before it


@dataclass
class Turn:
    """One utterance of the conversation, in arrival order: ours once generated, or the caller's."""

    segment: pb.ContextSegment | None = None  # None while ours is being generated, or if it failed
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _ms(num_bytes: int) -> int:
    return round(num_bytes / MULAW_BYTES_PER_MS)


def _chunk_message(chunk: pb.AudioChunk, chunk_index: int, elapsed_ms: int, echo: dict) -> dict[str, object]:
    """One streamed ``audio`` reply."""
    return {
        "type": "audio",
        "audio_base64": base64.b64encode(chunk.audio).decode("ascii"),
        "duration_ms": _ms(len(chunk.audio)),
        "generation_time_ms": elapsed_ms,
        "format": WS_FORMAT,
        **echo,
        "chunk_index": chunk_index,
        "final": chunk.final,
    }


class WsSession:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        session_id: str,
        state: EdgeState,
        authenticated: bool = True,
        api_key: str | None = None,
        peer: str | None = None,
    ) -> None:
        self.ws = ws
        self.authenticated = authenticated
        self.client = client_id(api_key, peer)  # the rate limiter's bucket
        self.principal = state.checker.resolve(api_key)  # its tenant; None until an auth message names it
        self.peer = peer
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
                    self._count("invalid")
                    await self.send(
                        ApiError(
                            400, INVALID_MESSAGE_FORMAT, "binary frames are not accepted; send JSON text"
                        ).ws_message()
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

    async def _on_text(self, data: str) -> None:
        if len(data.encode("utf-8", "surrogatepass")) > self.cfg.max_ws_message_bytes:
            self._count("invalid")
            await self.send(
                ApiError(
                    413, MESSAGE_TOO_LARGE, f"messages are limited to {self.cfg.max_ws_message_bytes} bytes"
                ).ws_message()
            )
            return
        try:  # never raises past JsonError: a nested or odd message gets an error, the session lives
            message = safe_json.loads(data, self.cfg.max_json_depth)
        except safe_json.JsonError as exc:
            self._count("invalid")
            await self.send(ApiError(400, INVALID_MESSAGE_FORMAT, str(exc)).ws_message())
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            self._count("invalid")
            await self.send(
                ApiError(400, INVALID_MESSAGE_FORMAT, 'expected a JSON object with a string "type"').ws_message()
            )
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
            await self._on_cancel(message.get("request_id"))
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
        key = message.get("api_key") if message is not None else None
        if isinstance(key, str) and self.state.checker.is_valid(key):
            still_pending = self.ws in self.state.pending
            if not self.state.promote(self.ws, self):  # pushed out meanwhile, or max_sessions are open
                self.state.metrics.requests.labels("websocket", "rejected").inc()
                full = f"{TOO_MANY_SESSIONS} (at most {self.cfg.max_sessions})".encode()
                await self.ws.close(code=TRY_AGAIN_LATER, message=full if still_pending else PUSHED_OUT)
                self.closing = True
                return
            self.authenticated = True
            self.client = client_id(key, self.peer)
            self.principal = self.state.checker.resolve(key)
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
            admit_client(self.state, self.client, in_session=True)
            params = parse_speak(message, self.cfg.max_text_chars, self.cfg.max_audio_length_ms)
            if len(self.jobs) >= self.cfg.max_inflight_per_session:
                raise ApiError(
                    429,
                    TOO_MANY_IN_FLIGHT,
                    f"at most {self.cfg.max_inflight_per_session} synthesize requests per session at once",
                    outcome="rejected",
                )
            voice = lookup_voice(self.state, params.voice_profile_id, self.principal)
            lease = hold_utterance(self.state, self.principal, self.peer)  # the tenant's share of the engine
        except ApiError as err:
            self.state.metrics.requests.labels("ws_synthesize", err.outcome).inc()
            await self.send(err.ws_message(echo_id))
            return
        request_id = params.request_id or f"{self.session_id[:64]}-{next(_request_ids)}"
        job = Job(params, request_id, time.perf_counter())
        job.request = synthesis_request(params, pb.MULAW_8KHZ, voice)
        if params.session_context:
            job.request.max_context_positions = self.cfg.session_context_positions
            job.earlier = tuple(self.history)
        job.turn = Turn()
        self.history.append(job.turn)
        self.jobs.append(job)
        job.task = asyncio.create_task(self._produce(job))
        job.task.add_done_callback(lambda _: lease.release())  # cancelled before it ran, too
        self.ready_jobs.put_nowait(job)

    async def _on_context(self, message: dict) -> None:
        """A caller turn for the conversation: transcript, and optionally its audio."""
        try:
            if message.get("audio_base64") is not None:  # decoding and encoding it cost like a synthesis
                admit_client(self.state, self.client, in_session=True)
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
                "num_frames": len(segment.codes) // 32,
                "turns": sum(t.segment is not None for t in self.history),
            }
        )

    async def _on_cancel(self, request_id: object) -> None:
        if request_id is not None and not isinstance(request_id, str):
            await self.send(
                ApiError(400, INVALID_MESSAGE_FORMAT, "request_id: must be a string", "request_id").ws_message()
            )
            return
        stopped = self._cancel_jobs(request_id)
        await self.send({"type": "cancelled", "request_id": request_id, "request_ids": stopped})

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

    # -- one synthesize request ------------------------------------------------------------------
    async def _produce(self, job: Job) -> None:
        """Run one utterance on the engine and queue its replies (audio..., then done)."""
        params, metrics = job.params, self.state.metrics
        endpoint = "ws_stream" if params.stream else "ws_synthesize"
        echo = {"request_id": job.request_id} if params.stream or params.request_id else {}
        parts: list[bytes] = []
        chunk_index = 0
        spoken = Spoken()
        try:
            request = job.request
            if params.session_context:  # the conversation so far, once the earlier turns exist
                for turn in job.earlier:
                    await turn.done.wait()
                request.context.extend(t.segment for t in job.earlier if t.segment is not None)
            utterance = speak(self.state.backend, request, self.cfg.max_piece_chars, spoken)
            async with contextlib.aclosing(utterance) as chunks:
                async for chunk in chunks:
                    elapsed_ms = round((time.perf_counter() - job.received_at) * 1000)
                    parts.append(chunk.audio)
                    if params.stream:
                        job.replies.put_nowait(_chunk_message(chunk, chunk_index, elapsed_ms, echo))
                        chunk_index += 1
                        if job.first_audio_ms is None:
                            job.first_audio_ms = elapsed_ms
                            metrics.ttfa.labels(endpoint).observe(elapsed_ms / 1000)
                    if chunk.final:
                        job.turn.segment = pb.ContextSegment(
                            speaker=request.speaker, text=params.text, codes=spoken.codes
                        )
                        self._finish(job, spoken, b"".join(parts), chunk_index, echo, endpoint)
                        return
            raise ApiError(500, SYNTHESIS_FAILED, "the engine ended the stream without a final chunk")
        except ApiError as err:
            metrics.requests.labels(endpoint, err.outcome).inc()
            job.replies.put_nowait(err.ws_message(job.request_id if echo else None))
        except Exception:
            log.exception("session %s: request %s failed", self.session_id, job.request_id)
            metrics.requests.labels(endpoint, "error").inc()
            job.replies.put_nowait(ApiError(500, SYNTHESIS_FAILED).ws_message(job.request_id if echo else None))
        finally:
            job.turn.done.set()
            job.replies.put_nowait(None)

    def _finish(self, job: Job, spoken: Spoken, audio: bytes, num_chunks: int, echo: dict, endpoint: str) -> None:
        elapsed_s = time.perf_counter() - job.received_at
        duration_ms = _ms(len(audio))
        metrics = self.state.metrics
        metrics.requests.labels(endpoint, "ok").inc()
        if duration_ms:
            metrics.rtf.labels(endpoint).observe(elapsed_s * 1000 / duration_ms)
        if not job.params.stream:
            metrics.ttfa.labels(endpoint).observe(elapsed_s)
            job.replies.put_nowait(
                {
                    "type": "audio",
                    "audio_base64": base64.b64encode(audio).decode("ascii"),
                    "duration_ms": duration_ms,
                    "generation_time_ms": round(elapsed_s * 1000),
                    "format": WS_FORMAT,
                    **echo,
                }
            )
            return
        final, first = spoken.final, spoken.first_timings
        job.replies.put_nowait(
            {
                "type": "done",
                **echo,
                "chunks": num_chunks,
                "duration_ms": duration_ms,
                "time_to_first_audio_ms": job.first_audio_ms,
                "engine_time_to_first_audio_ms": round(first.time_to_first_audio_ms, 1) if first else None,
                "generation_time_ms": round(elapsed_s * 1000),
                "real_time_factor": round(elapsed_s * 1000 / duration_ms, 4) if duration_ms else None,
                "finish_reason": FINISH_REASON_NAMES.get(final.finish_reason, "unknown") if final else "unknown",
                "seed": spoken.seed,
                "pieces": spoken.pieces,
                "piece_frames": spoken.piece_frames,
                "piece_prompt_positions": spoken.piece_prompt_positions,
                "prompt_positions": first.prompt_positions if first else None,
                "context_segments": first.context_segments if first else None,
                "prefix_cache_hit": first.prefix_cache_hit if first else None,
            }
        )
