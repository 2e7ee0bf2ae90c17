"""Errors the edge answers with: one HTTP status and one stable message (the seed's texts).

HTTP bodies are ``{"error": <status title>, "detail": ..., "field"?}``; WebSocket replies are
``{"type": "error", "error": <message>, "detail"?, "field"?, "request_id"?}``.
"""

from __future__ import annotations

import math

import grpc

# The seed contract's texts: clients match on these.
MODEL_NOT_LOADED = "Model not loaded"
INVALID_MESSAGE_FORMAT = "Invalid message format"
EMPTY_TEXT = "Empty text"
# Ours, for what the seed does not name.
OVERLOADED = "Overloaded"
SYNTHESIS_FAILED = "Synthesis failed"
TIMED_OUT = "Timed out"
MESSAGE_TOO_LARGE = "Message too large"
TEXT_TOO_LONG = "Text too long"
UNKNOWN_VOICE = "Unknown voice profile"
UNKNOWN_TYPE = "Unknown message type"
TOO_MANY_IN_FLIGHT = "Too many requests in flight"
TOO_MANY_SESSIONS = "Too many sessions"
UNAUTHORIZED = "Unauthorized"
RATE_LIMITED = "Rate limit exceeded"
SHUTTING_DOWN = "Shutting down"
WORKER_LOST = "Engine worker lost"

LOADING_RETRY_S = 5  # Retry-After while no engine worker serves (loading, restarting)

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


def from_rpc_error(exc: grpc.aio.AioRpcError, started: bool = False) -> ApiError:
    """A failed engine call -> the error the client sees. ``started``: audio had already arrived,
    so an UNAVAILABLE means the worker went away mid-utterance (not that none was ready)."""
    code, details = exc.code(), exc.details() or ""
    if started and code == grpc.StatusCode.UNAVAILABLE:
        return ApiError(
            503,
            WORKER_LOST,
            f"the engine worker went away mid-utterance and no other worker is serving: {details}",
            retry_after_s=1,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = details.split(":", 1)[0] if ":" in details else None
        if field == "text" and "non-empty" in details:
            return ApiError(422, EMPTY_TEXT, details, field)
        return ApiError(422, INVALID_MESSAGE_FORMAT, details, field)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ApiError(503, OVERLOADED, details, retry_after_s=1, outcome="overloaded")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ApiError(503, MODEL_NOT_LOADED, details or "no engine worker is serving", retry_after_s=LOADING_RETRY_S)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, TIMED_OUT, "the synthesis took longer than the request timeout")
    return ApiError(500, SYNTHESIS_FAILED, details or code.name)
