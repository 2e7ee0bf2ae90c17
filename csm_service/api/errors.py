"""The error a client is answered with: one HTTP status, one stable message (the seed's texts, in
:mod:`csm_service.core.errors`), and the bodies it becomes.

HTTP bodies are ``{"error": <status title>, "detail": ..., "field"?}``; WebSocket replies are
``{"type": "error", "error": <message>, "detail"?, "field"?, "retry_after_ms"?, "request_id"?}``.
"""

from __future__ import annotations

import math

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
