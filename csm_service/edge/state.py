"""What every edge handler shares: config, the speech service (backend), metrics, open sessions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from csm_service.auth import KeyChecker
from csm_service.config import ServiceConfig
from csm_service.edge.backend import Backend
from csm_service.limits import InflightLimiter, RateLimiter
from csm_service.metrics import EdgeMetrics
from csm_service.voices import VoiceStore


@dataclass
class EdgeState:
    cfg: ServiceConfig
    backend: Backend
    registry: CollectorRegistry
    metrics: EdgeMetrics
    checker: KeyChecker = field(default_factory=lambda: KeyChecker(()))
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0.0, 1))
    inflight: InflightLimiter = field(default_factory=lambda: InflightLimiter(0))  # access.hold_utterance
    voices: VoiceStore | None = None  # type: ignore[assignment]
    sessions: set = field(default_factory=set)  # open WsSession and TwilioCall objects, authenticated
    # WebSockets not yet authenticated (ws_gate.admit_pending), oldest first: socket -> Event set when
    # a newer one pushed it out of the max_unauthenticated_sessions budget.
    pending: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)  # streamSid -> TwilioCall
    draining: bool = False  # SIGTERM: refuse new work, let accepted work finish
    http_inflight: int = 0  # HTTP synthesis requests being answered

    @contextlib.contextmanager
    def http_request(self) -> Iterator[None]:
        """Count an HTTP synthesis as in flight (the drain waits for it) while the block runs."""
        self.http_inflight += 1
        try:
            yield
        finally:
            self.http_inflight -= 1

    def promote(self, ws: web.WebSocketResponse, session: object) -> bool:
        """An unauthenticated WebSocket proved its key: it leaves the pending budget and becomes one of
        ``sessions`` -> False if it was pushed out meanwhile or ``max_sessions`` are open."""
        if ws not in self.pending or len(self.sessions) >= self.cfg.max_sessions:
            return False
        del self.pending[ws]
        self.sessions.add(session)
        return True

    def is_idle(self) -> bool:
        """No accepted request is still unanswered (HTTP or any WebSocket session)."""
        return self.http_inflight == 0 and not any(s.jobs for s in self.sessions)


STATE = web.AppKey("state", EdgeState)
