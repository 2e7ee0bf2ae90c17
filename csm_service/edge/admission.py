"""Whether the edge takes a new HTTP request at all: not while draining, not over the rate."""

from __future__ import annotations

from aiohttp import web

from csm_service.auth import bearer_token
from csm_service.edge.errors import RATE_LIMITED, SHUTTING_DOWN, ApiError
from csm_service.edge.rate_limit import client_id
from csm_service.edge.state import STATE


def admit(request: web.Request) -> None:
    """Refuse new work while draining, and over the client's request rate (ApiError 503 / 429)."""
    state = request.app[STATE]
    if state.draining:
        raise ApiError(503, SHUTTING_DOWN, "this server is draining; retry on another", retry_after_s=5)
    key = bearer_token(request.headers.get("Authorization")) if state.checker.enabled else None
    wait_s = state.limiter.acquire(client_id(key, request.remote))
    if wait_s:
        raise ApiError(429, RATE_LIMITED, f"over {state.limiter.rate_per_s:g} requests/s", retry_after_s=wait_s)
