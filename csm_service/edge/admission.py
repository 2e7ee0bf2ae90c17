"""Whether the edge takes new work: not while draining, not over the client's rate, and not past
the client's utterances in flight (:func:`hold_utterance`); and who the client is
(:func:`request_principal`)."""

from __future__ import annotations

from aiohttp import web

from csm_service.api.errors import ApiError
from csm_service.auth import bearer_token
from csm_service.core.errors import RATE_LIMITED, SHUTTING_DOWN, TOO_MANY_IN_FLIGHT, UNAUTHORIZED
from csm_service.edge.state import STATE, EdgeState
from csm_service.limits import InflightLease, client_id
from csm_service.tenants import Principal

PRINCIPAL = "csm_principal"  # request[PRINCIPAL]: resolved once per request
INFLIGHT_RETRY_S = 1.0  # an utterance usually ends within seconds; the client may try again then


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


def request_principal(request: web.Request) -> Principal:
    """The tenant behind an HTTP request (its bearer key); with keys off, the one implicit tenant.
    ApiError 401 with keys on and no valid key (routes that need one never get here without)."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        state = request.app[STATE]
        principal = state.checker.resolve(bearer_token(request.headers.get("Authorization")))
        if principal is None:
            raise ApiError(401, UNAUTHORIZED, "send Authorization: Bearer <API key>")
        request[PRINCIPAL] = principal
    return principal


def inflight_client(principal: Principal, peer: str | None) -> str:
    """Whose utterances count together: the tenant's (keys on), else the peer address's (keys off)."""
    return f"tenant:{principal.tenant}" if principal.tenant is not None else f"peer:{peer or 'unknown'}"


def hold_utterance(state: EdgeState, principal: Principal, peer: str | None) -> InflightLease:
    """A place for one utterance among the client's in flight (``max_inflight_per_key``, or the
    tenant's ``max_inflight`` from the key file); ApiError 429 with a retry hint when it has them
    all. Release the lease when the utterance ends, however it ends."""
    if principal.tenant is None:  # keys off: the peer address is all we know of the client
        cap = state.cfg.max_inflight_per_peer
    else:
        cap = state.cfg.max_inflight_per_key if principal.max_inflight is None else principal.max_inflight
    lease = state.inflight.try_acquire(inflight_client(principal, peer), cap)
    if lease is None:
        who = "tenant" if principal.tenant is not None else "client address"
        raise ApiError(
            429,
            TOO_MANY_IN_FLIGHT,
            f"at most {cap} utterances in flight per {who}; retry when one has finished",
            retry_after_s=INFLIGHT_RETRY_S,
            outcome="rejected",
        )
    return lease


def hold_request_utterance(request: web.Request) -> InflightLease:
    """:func:`hold_utterance` for an HTTP request."""
    return hold_utterance(request.app[STATE], request_principal(request), request.remote)
