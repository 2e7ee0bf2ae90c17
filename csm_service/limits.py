"""Request rate per client: a token bucket per API key (per peer address when keys are off); and
requests in flight per client (:class:`InflightLimiter`). Used by the HTTP/WebSocket edge and by
the engine's gRPC server (:mod:`csm_service.rpc.auth`) alike.

Every synthesis request costs one token, on HTTP and on the WebSocket alike; a bucket holds at most
``burst`` tokens and refills at ``rate_per_s``. An empty bucket answers with the seconds until the
next token, which becomes the 429's ``Retry-After``. Memory is bounded: at most ``max_clients``
buckets, the least recently used dropped first (a dropped bucket comes back full, which only ever
errs towards letting a request through).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when granted, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
        self._buckets[client] = bucket  # most recently used last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


class InflightLease:
    """One place among a client's requests in flight; :meth:`release` gives it back, once, however
    often it is called (from a ``finally``, a task's done callback, a cleared queue)."""

    def __init__(self, limiter: InflightLimiter, client: str) -> None:
        self._limiter: InflightLimiter | None = limiter
        self.client = client

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self.client)

    def __enter__(self) -> InflightLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> InflightLease:  # to sit beside async context managers in one ``async with``
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class InflightLimiter:
    """Requests in flight per client, at most ``limit`` each (0 = no cap). Synchronous, so a
    release can never be skipped by a cancellation; memory: one counter per client with work."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def in_flight(self, client: str) -> int:
        return self._counts.get(client, 0)

    def __len__(self) -> int:
        return len(self._counts)

    def try_acquire(self, client: str, limit: int | None = None) -> InflightLease | None:
        """A lease for one more request of ``client``, or None when it already has ``limit``
        (default: this limiter's) in flight."""
        cap = self.limit if limit is None else limit
        count = self._counts.get(client, 0)
        if cap > 0 and count >= cap:
            return None
        self._counts[client] = count + 1
        return InflightLease(self, client)

    def _release(self, client: str) -> None:
        count = self._counts.get(client, 0) - 1
        if count > 0:
            self._counts[client] = count
        else:
            self._counts.pop(client, None)


def client_id(api_key: str | None, peer: str | None) -> str:
    """The bucket name: a hash of the API key (keys never sit in memory twice), else the peer."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return "peer:" + (peer or "unknown")
