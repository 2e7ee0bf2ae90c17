"""Connection limits of the edge's HTTP server: read deadlines and a cap that keeps room for health.

aiohttp reads a request's headers and body with no deadline of its own (its keep-alive timer, an
hour by default, is the only bound on a connection that never finishes its headers), so a few
thousand silent or trickling connections would hold their file descriptors until the process had
none left and ``/health`` stopped answering. Here, per connection:

- **Header deadline** (``http_header_timeout_s``): the request line and headers must be complete
  within it, counted from the connection (first request) or from the first byte of a later request
  on a kept-alive connection; else the connection is closed, unanswered.
- **Body deadline** (``http_body_timeout_s``): the body must be complete within it of the headers;
  else whatever is reading the body gets ApiError 408 (answered as JSON) and the connection closes.
- **Cap** (``max_connections``, all ports together): a new connection past it closes the connection
  that has waited longest with no request in progress (partial headers, or idle keep-alive). If every
  one is busy, up to ``health_reserve_connections`` more are let in for ``/health`` and ``/ping``
  only (anything else: 503, and each closes after its answer); past those, a new connection is
  answered 503 at once and closed. The cap is lowered to what the file-descriptor limit allows.

A connection that is idle between requests (keep-alive) is only closed by aiohttp's keep-alive
timer or when the cap needs its place: load balancers keep such connections for minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from csm_service.api.errors import ApiError
from csm_service.config import ServiceConfig
from csm_service.edge.state import STATE

log = logging.getLogger(__name__)

HEALTH_PATHS = ("/health", "/ping")  # what a connection from the reserve may ask for
FD_HEADROOM = 256  # descriptors kept for everything but client connections (gRPC, SQLite, logs, the engine)
TOO_MANY_CONNECTIONS = "Too many connections"
MAX_REASON_CHARS = 200  # of a malformed request's reason, as logged and answered
RETRY_S = 1
_REFUSED_BODY = json.dumps(
    {"error": "Service Unavailable", "detail": f"{TOO_MANY_CONNECTIONS}: the server is at its connection limit"}
).encode()
# Sent on a refused connection before its request is read (there is no room to read it).
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    + f"Retry-After: {RETRY_S}\r\nConnection: close\r\nContent-Length: {len(_REFUSED_BODY)}\r\n\r\n".encode()
    + _REFUSED_BODY
)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 4096  # 0: no cap
    health_reserve: int = 16
    header_timeout_s: float = 10.0  # 0: no deadline
    body_timeout_s: float = 60.0  # 0: no deadline

    @classmethod
    def from_config(cls, cfg: ServiceConfig) -> ConnectionLimits:
        return cls(
            cfg.max_connections, cfg.health_reserve_connections, cfg.http_header_timeout_s, cfg.http_body_timeout_s
        )


def fit_to_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft RLIMIT_NOFILE (up to the hard one) so the cap fits; if it still does not, lower
    the cap, so connections are refused by the cap before ``accept`` fails for want of descriptors."""
    if limits.max_connections <= 0:
        return limits
    needed = limits.max_connections + limits.health_reserve + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    cap = max(1, soft - limits.health_reserve - FD_HEADROOM)
    log.warning("max_connections %d lowered to %d: the file-descriptor limit is %d", limits.max_connections, cap, soft)
    return replace(limits, max_connections=cap)


class ConnectionGuard:
    """The open connections, oldest first, in two pools: regular ones (at most ``max_connections``)
    and the health reserve."""

    def __init__(self, limits: ConnectionLimits, count: Callable[[str], None]) -> None:
        self.limits = limits
        self.count = count  # a metrics outcome: refused, pushed_out, header_timeout, body_timeout
        self.regular: dict[GuardedRequestHandler, None] = {}
        self.reserved: dict[GuardedRequestHandler, None] = {}

    def __len__(self) -> int:
        return len(self.regular) + len(self.reserved)

    def admit(self, conn: GuardedRequestHandler) -> bool:
        """Place a new connection -> False if there is no room (it was answered 503 and closed)."""
        cap = self.limits.max_connections
        if cap <= 0 or len(self.regular) < cap or self._push_out_idle(self.regular):
            self.regular[conn] = None
            return True
        if len(self.reserved) < self.limits.health_reserve or self._push_out_idle(self.reserved):
            conn.health_only = True
            self.reserved[conn] = None
            return True
        self.count("refused")
        conn.refuse()
        return False

    def release(self, conn: GuardedRequestHandler) -> None:
        self.regular.pop(conn, None)
        self.reserved.pop(conn, None)

    def _push_out_idle(self, pool: dict[GuardedRequestHandler, None]) -> bool:
        """Close the connection of ``pool`` that has been open longest with no request in progress."""
        for conn in pool:
            if conn.idle:
                del pool[conn]
                self.count("pushed_out")
                conn.force_close()
                return True
        return False


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the deadlines and the guard's admission (module doc)."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.health_only = False  # admitted from the reserve: /health and /ping only
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timers: set[asyncio.TimerHandle] = set()

    @property
    def idle(self) -> bool:
        """No request queued or being answered, no WebSocket: waiting for a request's headers."""
        return not (self._request_in_progress or self._messages or self._upgraded)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.guard.admit(self):
            self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.release(self)
        self._cancel_header_timer()
        for timer in self._body_timers:
            timer.cancel()
        self._body_timers.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._header_timer is None and self.idle and not (self._close or self._force_close):
            self._arm_header_timer()  # the first bytes of a later request on a kept-alive connection
        seen, queued = self._request_count, len(self._messages)
        super().data_received(data)
        if self._request_count != seen:  # a request's headers are complete
            self._cancel_header_timer()
            for _, payload in itertools.islice(self._messages, queued, None):
                self._arm_body_timer(payload)

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Malformed HTTP (aiohttp's parser refused it before any handler ran): a JSON 400 like every
        other error, and one line at INFO. aiohttp's own logs it as an ERROR with a traceback,
        although it is the client's mistake and answered. Anything else: aiohttp's handling."""
        if status >= 500 or not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        lines = str(exc.message or "").strip().splitlines()  # the first says what; the rest, where
        reason = lines[0].rstrip(":")[:MAX_REASON_CHARS] if lines else "unreadable"
        # Not HTTP at all (TLS on the plain port, scanners) stays at DEBUG, as aiohttp has it.
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
        log.log(level, "malformed HTTP request from %s: %s", request.remote, reason)
        response = web.json_response(
            {"error": "Bad Request", "detail": f"malformed HTTP request: {reason}"}, status=status
        )
        response.force_close()  # what follows on the connection cannot be parsed either
        return response

    def discard_body(self) -> None:
        """The request's body cannot be read and its error is being answered: close once the answer
        is sent, without reading on to discard the rest (aiohttp's lingering read would meet the
        same error and log it as "Unhandled exception")."""
        self._lingering_time = 0.0

    def refuse(self) -> None:
        if self.transport is not None:
            self.transport.write(REFUSED_RESPONSE)
        self.force_close()

    # -- the header deadline ----------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self.guard.limits.header_timeout_s > 0:
            self._header_timer = self._loop.call_later(self.guard.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.idle and self.transport is not None:
            self.guard.count("header_timeout")
            self.force_close()

    # -- the body deadline ------------------------------------------------------------------------
    def _arm_body_timer(self, payload: Any) -> None:
        if self.guard.limits.body_timeout_s <= 0 or payload.is_eof():
            return
        timer = self._loop.call_later(self.guard.limits.body_timeout_s, self._body_timeout, payload)
        self._body_timers.add(timer)

        def done() -> None:
            timer.cancel()
            self._body_timers.discard(timer)

        payload.on_eof(done)

    def _body_timeout(self, payload: Any) -> None:
        if payload.is_eof() or payload.exception() is not None or self.transport is None:
            return
        self.guard.count("body_timeout")
        limit = self.guard.limits.body_timeout_s
        payload.set_exception(
            ApiError(408, "Request timeout", f"the request body must arrive within {limit:g} s of its headers")
        )
        self._lingering_time = 0.0  # do not read on after answering: close once the 408 is sent
        self.close()


class GuardedServer(web.Server):
    """aiohttp's low-level server, making GuardedRequestHandler connections; a connection from the
    health reserve is answered for HEALTH_PATHS only, and closed after its answer."""

    def __init__(self, guard: ConnectionGuard, handler: Any, **kwargs: Any) -> None:
        super().__init__(self._reserve_gate, **kwargs)
        self.guard = guard
        self._app_handler = handler

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.guard, loop=self._loop, **self._kwargs)

    async def _reserve_gate(self, request: web.BaseRequest) -> web.StreamResponse:
        if not getattr(request.protocol, "health_only", False):
            return await self._app_handler(request)
        if request.path in HEALTH_PATHS:
            response = await self._app_handler(request)
        else:
            response = web.json_response(
                {"error": "Service Unavailable", "detail": f"{TOO_MANY_CONNECTIONS}: only /health and /ping now"},
                status=503,
                headers={"Retry-After": str(RETRY_S)},
            )
        response.force_close()  # the reserve's places are for health checks: give this one back
        return response


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner whose server is a :class:`GuardedServer` with ``limits``."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits
        self.guard: ConnectionGuard | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app started and frozen, its handler and factory
        metrics = self.app[STATE].metrics
        self.guard = ConnectionGuard(
            fit_to_fd_limit(self.limits), lambda outcome: metrics.requests.labels("connection", outcome).inc()
        )
        return GuardedServer(
            self.guard,
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )
