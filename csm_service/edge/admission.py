"""Whether the edge takes a new HTTP request at all: not while draining, not over the rate."""

from __future__ import annotations

from aiohttp import web

from csm_service.auth import bearer_token
from csm_service.edge.errors import RATE_LIMITED, SHUTTING_DOWN, ApiError
from csm_service.edge.rate_limit import client_id
from csm_service.edge.state import STATE, EdgeState


def admit_client(state: EdgeState, client: str, in_session: bool = False) -> None:
    """Refuse new work while draining, and over the client's request rate (ApiError 503 / 429).
    ``client`` is the rate limiter's bucket (:func:`client_id`). ``in_session``: an utterance of a
    live WebSocket session or Twilio call, which a drain lets go on (new utterances included)."""
    if state.draining and not in_session:
        raise ApiError(503, SHUTTING_DOWN, "this server is draining; retry on another", retry_after_s=5)
    wait_s = state.limiter.acquire(client)
    if wait_s:
        raise ApiError(429, RATE_LIMITED, f"over {state.limiter.rate_per_s:g} requests/s", retry_after_s=wait_s)


def admit(request: web.Request, in_session: bool = False) -> None:
    """:func:`admit_client` for an HTTP request: its API key, else its peer address."""
    state = request.app[STATE]
    key = bearer_token(request.headers.get("Authorization")) if state.checker.enabled else None
    admit_client(state, client_id(key, request.remote), in_session)
