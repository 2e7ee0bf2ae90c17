"""API keys on the gRPC port: the workers' interceptor (keys, the caller's principal, per-caller
limits) and the metadata a client (the edge) sends. The keys themselves are checked by
:class:`~csm_service.auth.KeyChecker`, which the HTTP/WebSocket edge uses without grpc.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass

import grpc

from csm_service.auth import KeyChecker, bearer_token
from csm_service.limits import InflightLease, InflightLimiter, RateLimiter
from csm_service.rpc.formats import SERVICE_NAME
from csm_service.tenants import OPEN, ApiKey, Principal, plain_key

# Always open: orchestrators probe these without credentials.
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The calls that cost engine work: per-caller limits apply to these.
LIMITED_GRPC_METHODS = tuple(f"/{SERVICE_NAME}/{name}" for name in ("Synthesize", "SynthesizeStream", "EncodePrompt"))
# The principal of the gRPC call being served (set by GrpcKeyInterceptor for the call's task).
CURRENT_PRINCIPAL: ContextVar[Principal] = ContextVar("csm_principal", default=OPEN)


@dataclass(frozen=True)
class CallerLimits:
    """What one caller of the gRPC port may hold: per tenant with keys on, per peer address with
    keys off. Admin keys (operators, edges) and ``serve``'s own edge are exempt: an edge carries
    every tenant's calls and enforces their limits itself."""

    max_inflight: int = 0  # calls in flight at once; 0 = no cap (a key file's max_inflight= overrides)
    rate_per_s: float = 0.0  # calls per second; 0 = no limit
    burst: int = 20

    @property
    def active(self) -> bool:
        return self.max_inflight > 0 or self.rate_per_s > 0


def peer_host(peer: str | None) -> str:
    """``ipv4:10.0.0.5:51234`` -> ``ipv4:10.0.0.5``: a caller is its address, not one connection."""
    return (peer or "unknown").rsplit(":", 1)[0]


class GrpcKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid key (``authorization: Bearer <key>`` or ``x-api-key``), makes
    the caller's :class:`Principal` the call's :data:`CURRENT_PRINCIPAL`, and holds each caller to
    :class:`CallerLimits` (RESOURCE_EXHAUSTED past them)."""

    def __init__(self, checker: KeyChecker, limits: CallerLimits | None = None) -> None:
        self.checker = checker
        self.limits = limits or CallerLimits()
        self.inflight = InflightLimiter(self.limits.max_inflight)
        self.rate = RateLimiter(self.limits.rate_per_s, self.limits.burst)

        async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        principal = self.checker.resolve(bearer_token(metadata.get("authorization")) or metadata.get("x-api-key"))
        if principal is None:
            return self._deny_stream if handler.response_streaming else self._deny_unary
        limited = details.method in LIMITED_GRPC_METHODS and not principal.admin and self._has_limits(principal)
        return self._wrap(handler, principal, limited)

    def _has_limits(self, principal: Principal) -> bool:
        return self.limits.active or bool(principal.max_inflight)

    async def _admit(self, principal: Principal, context: grpc.aio.ServicerContext) -> InflightLease:
        """A place among the caller's calls in flight, or the call ends RESOURCE_EXHAUSTED."""
        caller = f"tenant:{principal.tenant}" if principal.tenant is not None else peer_host(context.peer())
        wait_s = self.rate.acquire(caller)
        if wait_s:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit: over {self.rate.rate_per_s:g} calls/s for this caller; retry in {wait_s:.1f} s",
            )
        cap = principal.inflight_cap(self.limits.max_inflight)
        lease = self.inflight.try_acquire(caller, cap)
        if lease is None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many calls in flight for this caller: at most {cap} at once"
            )
        context.add_done_callback(lambda _: lease.release())  # also when the call's task is torn down
        return lease

    @contextlib.asynccontextmanager
    async def _call_scope(
        self, principal: Principal, context: grpc.aio.ServicerContext, limited: bool
    ) -> AsyncIterator[None]:
        """One call: its principal visible to the servicer, and its place among the caller's calls."""
        token, lease = CURRENT_PRINCIPAL.set(principal), None
        try:
            lease = await self._admit(principal, context) if limited else None
            yield
        finally:
            _reset(token)
            if lease is not None:
                lease.release()

    def _wrap(self, handler: grpc.RpcMethodHandler, principal: Principal, limited: bool) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_call(request: object, context: grpc.aio.ServicerContext) -> object:
                async with self._call_scope(principal, context, limited):
                    return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_call, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_call(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
                async with self._call_scope(principal, context, limited):
                    async for item in stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream_call, handler.request_deserializer, handler.response_serializer
            )
        return handler  # streaming requests: none in this service


def _reset(token: Token[Principal]) -> None:
    """Undo the call's principal; a generator closed from another task (its finaliser) has nothing
    to undo in that task's context."""
    with contextlib.suppress(ValueError):
        CURRENT_PRINCIPAL.reset(token)


def grpc_metadata(keys: Iterable[str | ApiKey]) -> tuple[tuple[str, str], ...]:
    """What a client (the edge) sends to workers that check keys: the first admin key (workers do
    not hold admins to per-caller limits, and an edge carries every tenant's calls), else the first."""
    entries = [k if isinstance(k, ApiKey) else plain_key(k) for k in keys]
    chosen = next((e for e in entries if e.admin), entries[0] if entries else None)
    return (("authorization", f"Bearer {chosen.key}"),) if chosen else ()
