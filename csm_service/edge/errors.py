"""How the edge answers a failed utterance or prompt: the speech service's errors
(:mod:`csm_service.core.errors`) as the :class:`~csm_service.api.errors.ApiError` a client sees.
"""

from __future__ import annotations

from csm_service.api.errors import ApiError
from csm_service.core.errors import (
    EMPTY_TEXT,
    INVALID_MESSAGE_FORMAT,
    MODEL_NOT_LOADED,
    OVERLOADED,
    SHUTTING_DOWN,
    SYNTHESIS_FAILED,
    TIMED_OUT,
    WORKER_LOST,
    EngineUnavailable,
    InvalidRequest,
    Overloaded,
    ShuttingDown,
    SpeechError,
    TimedOut,
    WorkerLost,
)

LOADING_RETRY_S = 5  # Retry-After while no engine worker serves (loading, restarting)


def from_speech_error(exc: SpeechError, started: bool = False) -> ApiError:
    """A failed utterance or prompt -> the error the client sees. ``started``: audio had already
    arrived, so an unavailable engine means the worker went away mid-utterance (not that none was ready)."""
    details = str(exc)
    if isinstance(exc, ShuttingDown):
        return ApiError(503, SHUTTING_DOWN, details, retry_after_s=1)
    if isinstance(exc, WorkerLost) or (started and isinstance(exc, EngineUnavailable)):
        return ApiError(
            503,
            WORKER_LOST,
            f"the engine worker went away mid-utterance and no other worker is serving: {details}",
            retry_after_s=1,
        )
    if isinstance(exc, InvalidRequest):
        field = exc.field or None
        if field == "text" and "non-empty" in details:
            return ApiError(422, EMPTY_TEXT, details, field)
        return ApiError(422, INVALID_MESSAGE_FORMAT, details, field)
    if isinstance(exc, Overloaded):
        return ApiError(503, OVERLOADED, details, retry_after_s=1, outcome="overloaded")
    if isinstance(exc, EngineUnavailable):
        return ApiError(503, MODEL_NOT_LOADED, details or "no engine worker is serving", retry_after_s=LOADING_RETRY_S)
    if isinstance(exc, TimedOut):
        return ApiError(504, TIMED_OUT, "the synthesis took longer than the request timeout")
    return ApiError(500, SYNTHESIS_FAILED, details or type(exc).__name__)
