"""API keys: constant-time checks for the edge (HTTP, WebSocket) and the gRPC workers.

No torch and no grpc here: the gRPC side (the workers' interceptor, the edge's call metadata) is
:mod:`csm_service.rpc.auth`. With no keys configured everything is open; a process that binds
beyond loopback with no keys logs a warning at start-up.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from csm_service.tenants import INTERNAL, OPEN, ApiKey, Principal, plain_key

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class KeyChecker:
    """The configured keys and whom each belongs to (:class:`~csm_service.tenants.Principal`).

    ``keys``: key strings (each its own tenant) or :class:`~csm_service.tenants.ApiKey` entries.
    ``internal``: keys only a process's own parts know (``serve``'s edge on its gRPC port): they
    resolve to :data:`~csm_service.tenants.INTERNAL` even when no keys are configured.
    """

    def __init__(self, keys: Iterable[str | ApiKey] = (), internal: Iterable[str] = ()) -> None:
        entries = [k if isinstance(k, ApiKey) else plain_key(k) for k in keys]
        self._keys = [(e.key.encode("utf-8", "surrogatepass"), e.principal()) for e in entries]
        self._internal = [(k.encode("utf-8", "surrogatepass"), INTERNAL) for k in internal]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def resolve(self, presented: str | None) -> Principal | None:
        """The presented key's principal; :data:`OPEN` when no keys are configured; None for a
        missing or wrong key. Compares against every key in constant time per key (no early exit
        on a match), so timing says nothing about which key matched or how much of it."""
        candidate = presented.encode("utf-8", "surrogatepass") if presented else b""
        found = None
        for key, principal in (*self._keys, *self._internal):
            if hmac.compare_digest(candidate, key) and found is None:
                found = principal
        if found is not None:
            return found
        return None if self.enabled else OPEN

    def is_valid(self, presented: str | None) -> bool:
        """Keys off: always; keys on: a configured key was presented."""
        return self.resolve(presented) is not None


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
