"""One ``synthesize`` request of a WebSocket session: its job, and the replies it queues.

A job runs the utterance on the engine (with the session's earlier turns as context when asked)
and queues its replies: ``audio`` chunks when streaming, then ``done``; or one whole ``audio``.
The session's sender forwards each job's replies in arrival order (:mod:`.ws_session`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field

from csm_service.api.errors import ApiError
from csm_service.api.seed import seed_fields
from csm_service.api.speak import SpeakParams
from csm_service.api.websocket import WS_FORMAT
from csm_service.core.errors import SYNTHESIS_FAILED
from csm_service.core.request import Segment, SpeechRequest
from csm_service.edge.speech import Spoken, speak
from csm_service.edge.state import EdgeState
from csm_service.metrics import EdgeMetrics

log = logging.getLogger(__name__)

MULAW_BYTES_PER_MS = 8


@dataclass
class Job:
    params: SpeakParams
    request_id: str
    received_at: float
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)  # dicts, then None at the end
    task: asyncio.Task | None = None
    is_cancelled: bool = False
    first_audio_ms: int | None = None  # received -> first audio reply queued
    request: SpeechRequest | None = None  # voice prefix set; session context added when it runs
    turn: Turn | None = None  # this utterance's place in the session's history
    earlier: tuple[Turn, ...] = ()  # with "context": "session": the turns before it


@dataclass
class Turn:
    """One utterance of the conversation, in arrival order: ours once generated, or the caller's."""

    segment: Segment | None = None  # None while ours is being generated, or if it failed
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _ms(num_bytes: int) -> int:
    return round(num_bytes / MULAW_BYTES_PER_MS)


def _audio_message(audio: bytes, elapsed_ms: int, echo: dict, **streamed: object) -> dict[str, object]:
    """An ``audio`` reply: the whole utterance, or one streamed chunk (``chunk_index``, ``final``)."""
    return {
        "type": "audio",
        "audio_base64": base64.b64encode(audio).decode("ascii"),
        "duration_ms": _ms(len(audio)),
        "generation_time_ms": elapsed_ms,
        "format": WS_FORMAT,
        **echo,
        **streamed,
    }


async def produce(job: Job, state: EdgeState, session_id: str) -> None:
    """Run one utterance on the engine and queue its replies (audio..., then done)."""
    params, metrics = job.params, state.metrics
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
            earlier = tuple(t.segment for t in job.earlier if t.segment is not None)
            request = dataclasses.replace(request, context=(*request.context, *earlier))
        utterance = speak(state.backend, request, state.cfg.max_piece_chars, spoken)
        async with contextlib.aclosing(utterance) as chunks:
            async for chunk in chunks:
                elapsed_ms = round((time.perf_counter() - job.received_at) * 1000)
                parts.append(chunk.audio)
                if params.stream:
                    job.replies.put_nowait(
                        _audio_message(chunk.audio, elapsed_ms, echo, chunk_index=chunk_index, final=chunk.final)
                    )
                    chunk_index += 1
                    if job.first_audio_ms is None:
                        job.first_audio_ms = elapsed_ms
                        metrics.ttfa.labels(endpoint).observe(elapsed_ms / 1000)
                if chunk.final:
                    job.turn.segment = Segment(request.speaker, params.text, spoken.codes)
                    _finish(job, spoken, b"".join(parts), chunk_index, echo, endpoint, metrics)
                    return
        raise ApiError(500, SYNTHESIS_FAILED, "the engine ended the stream without a final chunk")
    except ApiError as err:
        metrics.requests.labels(endpoint, err.outcome).inc()
        job.replies.put_nowait(err.ws_message(job.request_id if echo else None))
    except Exception:
        log.exception("session %s: request %s failed", session_id, job.request_id)
        metrics.requests.labels(endpoint, "error").inc()
        job.replies.put_nowait(ApiError(500, SYNTHESIS_FAILED).ws_message(job.request_id if echo else None))
    finally:
        job.turn.done.set()
        job.replies.put_nowait(None)


def _finish(
    job: Job, spoken: Spoken, audio: bytes, num_chunks: int, echo: dict, endpoint: str, metrics: EdgeMetrics
) -> None:
    elapsed_s = time.perf_counter() - job.received_at
    duration_ms = _ms(len(audio))
    metrics.requests.labels(endpoint, "ok").inc()
    if duration_ms:
        metrics.rtf.labels(endpoint).observe(elapsed_s * 1000 / duration_ms)
    if not job.params.stream:
        metrics.ttfa.labels(endpoint).observe(elapsed_s)
        job.replies.put_nowait(_audio_message(audio, round(elapsed_s * 1000), echo))
        return
    first = spoken.first_timings
    job.replies.put_nowait(
        {
            "type": "done",
            **echo,
            "chunks": num_chunks,
            "duration_ms": duration_ms,
            "time_to_first_audio_ms": job.first_audio_ms,
            "engine_time_to_first_audio_ms": round(first.first_audio_s * 1000, 1) if first else None,
            "generation_time_ms": round(elapsed_s * 1000),
            "real_time_factor": round(elapsed_s * 1000 / duration_ms, 4) if duration_ms else None,
            "finish_reason": spoken.finish_reason,
            **seed_fields(spoken.seed),
            "pieces": spoken.pieces,
            "piece_frames": spoken.piece_frames,
            "piece_prompt_positions": spoken.piece_prompt_positions,
            "prompt_positions": first.prompt_positions if first else None,
            "context_segments": first.context_segments if first else None,
            "prefix_cache_hit": first.prefix_cache_hit if first else None,
        }
    )
