"""The error a client is answered with: one HTTP status, one stable message (the seed's texts, in
:mod:`csm_service.core.errors`), and the bodies it becomes; and the speech service's errors as one
(:func:`from_speech_error`).

HTTP bodies are ``{"error": <status title>, "detail": ..., "field"?}`` (OpenAI's routes:
``{"error": {"message", "type", "param", "code"}}``); WebSocket replies are
``{"type": "error", "error": <message>, "detail"?, "field"?, "retry_after_ms"?, "request_id"?}``.
"""

from __future__ import annotations

import math

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
INVALID_AUDIO = "Invalid audio"

# The seed's "Error" column for each HTTP status.
HTTP_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    422: "Validation Error",
    426: "Upgrade Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Outcome label (Prometheus) per HTTP status.
OUTCOMES = {
    400: "bad_request",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    422: "invalid",
    426: "bad_request",
    429: "rate_limited",
    500: "error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """A request that failed: ``str()`` is "<message>: <detail>" (the HTTP body's ``detail``)."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
        outcome: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.status = status
        self.message = message
        self.detail = detail
        self.field = field
        self.retry_after_s = retry_after_s  # HTTP: Retry-After (whole seconds, rounded up); WS: retry_after_ms
        self.outcome = outcome or OUTCOMES.get(status, "error")
        self.headers = headers or {}  # extra HTTP response headers (e.g. 426's Upgrade)

    def http_body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": HTTP_TITLES.get(self.status, "Error"), "detail": str(self)}
        if self.field:
            body["field"] = self.field
        return body

    def openai_body(self) -> dict[str, object]:
        """OpenAI's error shape (:class:`~.openai.OpenAIError`; the SDK reads ``error.message``)."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        elif self.status == 429:
            kind = "rate_limit_error" if self.retry_after_s else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.field, "code": self.outcome}}

    def response_headers(self, www_authenticate: bool = True) -> dict[str, str]:
        """The HTTP answer's headers: Retry-After, ``WWW-Authenticate: Bearer`` on a 401 when
        ``www_authenticate`` (OpenAI's errors send none), then :attr:`headers`."""
        headers = {"Retry-After": str(retry_after_header(self.retry_after_s))} if self.retry_after_s else {}
        if www_authenticate and self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        headers.update(self.headers)
        return headers

    def ws_message(self, request_id: str | None = None) -> dict[str, object]:
        msg: dict[str, object] = {"type": "error", "error": self.message}
        if self.detail:
            msg["detail"] = self.detail
        if self.field:
            msg["field"] = self.field
        if self.retry_after_s:
            msg["retry_after_ms"] = math.ceil(self.retry_after_s * 1000)
        if request_id is not None:
            msg["request_id"] = request_id
        return msg


def field_error(field: str, detail: str) -> ApiError:
    """422 ``Invalid message format``: ``field`` is wrong (``detail``)."""
    return ApiError(422, INVALID_MESSAGE_FORMAT, f"{field}: {detail}", field)


def audio_error(field: str, detail: object) -> ApiError:
    """422 ``Invalid audio``: the audio in ``field`` cannot be used (``detail``)."""
    return ApiError(422, INVALID_AUDIO, f"{field}: {detail}", field)


def retry_after_header(wait_s: float) -> int:
    """Retry-After is whole seconds: round up, never 0."""
    return max(1, math.ceil(wait_s))


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
