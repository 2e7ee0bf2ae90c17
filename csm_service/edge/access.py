"""Who the caller is, and whether the edge takes its work: which HTTP routes need an API key
(:func:`require_key`), who is asking (:class:`Caller`), and admission: not while draining, not over
the client's rate (:func:`admit_client`), and not past the client's utterances in flight
(:func:`hold_utterance`).

With keys configured (``CSM_API_KEYS``), an anonymous client reaches only what a load balancer or
a browser needs: ``/health`` (status, model_loaded and device only, unless
``public_health_detail``), ``/ping``, ``/openapi.json``, ``/docs`` and the playground page.
``/metrics`` needs the key too unless ``public_metrics``. The WebSocket routes check keys
themselves (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from csm_service.api.errors import ApiError
from csm_service.api.routes import NATIVE_WS_PREFIX  # also takes ?api_key= and a first "auth" message
from csm_service.auth import bearer_token
from csm_service.core.errors import RATE_LIMITED, SHUTTING_DOWN, TOO_MANY_IN_FLIGHT, UNAUTHORIZED
from csm_service.edge.state import STATE, EdgeState
from csm_service.limits import InflightLease, client_id
from csm_service.tenants import Principal

OPEN_PATHS = ("/", "/health", "/ping", "/openapi.json", "/docs")  # no key needed
METRICS_PATH = "/metrics"  # open with keys on only when ServiceConfig.public_metrics
# WebSockets check keys themselves: a query parameter or first message (native), or a Twilio
# <Parameter name="api_key"> in the start event (Twilio sends no Authorization header).
SELF_AUTH_PREFIXES = (NATIVE_WS_PREFIX, "/v1/twilio/media-stream")
UNMATCHED = "unmatched"  # the metrics label of a path no route serves
CALLER: web.RequestKey[Caller] = web.RequestKey("csm_caller", "Caller")  # request[CALLER]: resolved once per request
INFLIGHT_RETRY_S = 1.0  # an utterance usually ends within seconds; the client may try again then
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_open(path: str, public_metrics: bool) -> bool:
    """True when ``path`` needs no bearer key even with keys on (WebSockets: see SELF_AUTH_PREFIXES)."""
    return path in OPEN_PATHS or (path == METRICS_PATH and public_metrics)


def request_key(request: web.Request) -> str | None:
    """The key the request carries in ``Authorization: Bearer``, if any."""
    return bearer_token(request.headers.get("Authorization"))


def has_valid_key(request: web.Request) -> bool:
    """Keys are on and the request carries a valid ``Authorization: Bearer`` key."""
    checker = request.app[STATE].checker
    return checker.enabled and checker.is_valid(request_key(request))


def route_label(request: web.Request) -> str:
    """A metrics label for the request: its route's template (``v1/voices/{voice_id}``), never the
    path the client sent, so labels take one value per route however many paths are tried."""
    resource = request.match_info.route.resource
    if resource is None:  # 404 and 405: no route matched
        return UNMATCHED
    return resource.canonical.strip("/") or "root"


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With API keys configured, HTTP routes other than the open ones need ``Authorization:
    Bearer``. The WebSocket routes check for themselves (SELF_AUTH_PREFIXES). The 401 is counted by
    route template: a client's paths never become metric labels."""
    state = request.app[STATE]
    path = request.path
    needs_key = not is_open(path, state.cfg.public_metrics) and not path.startswith(SELF_AUTH_PREFIXES)
    if state.checker.enabled and needs_key and not has_valid_key(request):
        state.metrics.requests.labels(route_label(request), "unauthorized").inc()
        raise ApiError(401, UNAUTHORIZED, "send Authorization: Bearer <API key>")
    return await handler(request)


@dataclass(frozen=True)
class Caller:
    """Who is asking: its tenant (None with keys on and no valid key yet, e.g. a WebSocket before
    its ``auth`` message), its rate limiter bucket, and its address (whose utterances count together
    with keys off)."""

    principal: Principal | None
    client: str
    peer: str | None

    @classmethod
    def of(cls, state: EdgeState, key: str | None, peer: str | None) -> Caller:
        """The caller presenting ``key`` (None: none) from ``peer``; with keys off no key counts."""
        key = key if state.checker.enabled else None
        return cls(state.checker.resolve(key), client_id(key, peer), peer)

    def known(self) -> Principal:
        """Its tenant; ApiError 401 with keys on and no valid key (routes that need one never get
        here without)."""
        if self.principal is None:
            raise ApiError(401, UNAUTHORIZED, "send Authorization: Bearer <API key>")
        return self.principal


def request_caller(request: web.Request) -> Caller:
    """The caller of an HTTP request: its bearer key, else its peer address (resolved once)."""
    caller = request.get(CALLER)
    if caller is None:
        caller = request[CALLER] = Caller.of(request.app[STATE], request_key(request), request.remote)
    return caller


def request_principal(request: web.Request) -> Principal:
    """The tenant behind an HTTP request; with keys off, the one implicit tenant (see :meth:`Caller.known`)."""
    return request_caller(request).known()


def admit_client(state: EdgeState, caller: Caller, in_session: bool = False) -> None:
    """Refuse new work while draining, and over the caller's request rate (ApiError 503 / 429).
    ``in_session``: an utterance of a live WebSocket session or Twilio call, which a drain lets go
    on (new utterances included)."""
    if state.draining and not in_session:
        raise ApiError(503, SHUTTING_DOWN, "this server is draining; retry on another", retry_after_s=5)
    wait_s = state.limiter.acquire(caller.client)
    if wait_s:
        raise ApiError(429, RATE_LIMITED, f"over {state.limiter.rate_per_s:g} requests/s", retry_after_s=wait_s)


def admit(request: web.Request, in_session: bool = False) -> None:
    """:func:`admit_client` for an HTTP request."""
    admit_client(request.app[STATE], request_caller(request), in_session)


def hold_utterance(state: EdgeState, caller: Caller) -> InflightLease:
    """A place for one utterance among the caller's in flight (``max_inflight_per_key``, or the
    tenant's ``max_inflight`` from the key file); ApiError 429 with a retry hint when it has them
    all. Release the lease when the utterance ends, however it ends."""
    principal = caller.known()
    keys_off = principal.tenant is None  # the peer address is all we know of the client
    cap = state.cfg.max_inflight_per_peer if keys_off else principal.inflight_cap(state.cfg.max_inflight_per_key)
    client = f"peer:{caller.peer or 'unknown'}" if keys_off else f"tenant:{principal.tenant}"
    lease = state.inflight.try_acquire(client, cap)
    if lease is None:
        who = "client address" if keys_off else "tenant"
        raise ApiError(
            429,
            TOO_MANY_IN_FLIGHT,
            f"at most {cap} utterances in flight per {who}; retry when one has finished",
            retry_after_s=INFLIGHT_RETRY_S,
            outcome="rejected",
        )
    return lease
