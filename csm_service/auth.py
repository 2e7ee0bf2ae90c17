"""API keys: constant-time checks for the edge (HTTP, WebSocket) and the gRPC workers.

No torch here. With no keys configured everything is open; a process that binds beyond loopback
with no keys logs a warning at start-up.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

# Always open: orchestrators probe these without credentials.
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class KeyChecker:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def is_valid(self, presented: str | None) -> bool:
        """Compares against every key in constant time per key (no early exit on a match)."""
        if not self._keys:
            return True
        if not presented:
            return False
        candidate = presented.encode("utf-8", "surrogatepass")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def bearer_token(authorization: str | None) -> str | None:
    """``Bearer <key>`` -> key (case-insensitive scheme); anything else -> None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def warn_if_open(checker: KeyChecker, host: str, what: str) -> None:
    if not checker.enabled and host not in LOOPBACK_HOSTS:
        log.warning(
            "%s is bound to %s with no API keys: anyone who can reach it can use it (set CSM_API_KEYS)", what, host
        )


class GrpcKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid key (``authorization: Bearer <key>`` or ``x-api-key``)."""

    def __init__(self, checker: KeyChecker) -> None:
        self.checker = checker

        async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not self.checker.enabled or details.method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        presented = bearer_token(metadata.get("authorization")) or metadata.get("x-api-key")
        if self.checker.is_valid(presented):
            return await continuation(details)
        handler = await continuation(details)
        return self._deny_stream if handler is not None and handler.response_streaming else self._deny_unary


def grpc_metadata(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """What a client (the edge) sends to workers that check keys: the first key."""
    return (("authorization", f"Bearer {keys[0]}"),) if keys else ()
