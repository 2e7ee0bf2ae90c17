"""Opening a WebSocket on the edge: what every WebSocket route checks before its session starts,
the budget of sockets that have not authenticated yet, and cleanup that survives cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import Gauge

from csm_service.api.errors import ApiError
from csm_service.core.errors import TOO_MANY_SESSIONS, UNAUTHORIZED
from csm_service.edge.state import EdgeState

HEARTBEAT_S = 30.0  # protocol pings: a peer that vanished without a FIN is noticed and its work cancelled
GOING_AWAY, TRY_AGAIN_LATER = 1001, 1013  # WebSocket close codes (RFC 6455, IANA registry)
POLICY_VIOLATION = 1008
NORMAL_CLOSURE = 1000
SETTLE_WAIT_S = 5.0  # cleanup: how long a session's handler waits for its cancelled tasks to end
PUSHED_OUT = b"too many unauthenticated connections: authenticate at once (a key at the upgrade)"


async def open_websocket(
    request: web.Request,
    state: EdgeState,
    presented_key: str | None,
    endpoint: str,
    *,
    pending: bool = False,
    max_msg_size: int | None = None,
) -> tuple[web.WebSocketResponse, bool]:
    """Upgrade the request -> (socket, whether to serve it). A plain GET gets 426; an invalid key
    presented at the upgrade gets 401. Past the upgrade, a draining server closes with 1001 and a
    full one (``max_sessions``) with 1013; those sockets come back closed, not to be served.

    ``pending``: the socket has yet to authenticate (keys on and none at the upgrade, or a Twilio
    stream before its ``start``). It takes a place in ``max_unauthenticated_sessions``, not in
    ``max_sessions`` (:func:`admit_pending`), until :meth:`EdgeState.promote`."""
    default_size = max(4 << 20, 16 * state.cfg.max_ws_message_bytes)
    ws = web.WebSocketResponse(max_msg_size=max_msg_size or default_size, heartbeat=HEARTBEAT_S)
    if not ws.can_prepare(request).ok:
        raise ApiError(
            426,
            "Expected a WebSocket upgrade",
            "connect with a WebSocket client (ws:// or wss://)",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    if state.checker.enabled and presented_key is not None and not state.checker.is_valid(presented_key):
        state.metrics.requests.labels(endpoint, "unauthorized").inc()
        raise ApiError(401, UNAUTHORIZED, "invalid API key")
    await ws.prepare(request)
    if state.draining:  # going away: the client reconnects (to another replica)
        await ws.close(code=GOING_AWAY, message=b"server shutting down")
        return ws, False
    if len(state.sessions) >= state.cfg.max_sessions:
        await refuse_full(ws, state, endpoint)
        return ws, False
    if pending and not admit_pending(state, ws, endpoint):
        await ws.close(code=TRY_AGAIN_LATER, message=PUSHED_OUT)
        return ws, False
    return ws, True


async def refuse_full(ws: web.WebSocketResponse, state: EdgeState, endpoint: str, message: bytes | None = None) -> None:
    """No room for the socket among ``max_sessions``: counted as rejected, closed with 1013 and
    ``message`` (by default, how many sessions there may be)."""
    state.metrics.requests.labels(endpoint, "rejected").inc()
    full = f"{TOO_MANY_SESSIONS} (at most {state.cfg.max_sessions})".encode()
    await ws.close(code=TRY_AGAIN_LATER, message=message or full)


@contextlib.contextmanager
def joined(
    state: EdgeState, ws: web.WebSocketResponse, session: object, gauge: Gauge, add: bool = True
) -> Iterator[None]:
    """``session`` is open while the block runs: one of ``state.sessions`` (unless not ``add``: a
    socket still authenticating joins them in :meth:`EdgeState.promote`) and counted in ``gauge``.
    However the block ends, it leaves the sessions, the unauthenticated budget and the count."""
    if add:
        state.sessions.add(session)
    gauge.inc()
    try:
        yield
    finally:
        state.pending.pop(ws, None)
        state.sessions.discard(session)
        gauge.dec()


def admit_pending(state: EdgeState, ws: web.WebSocketResponse, endpoint: str) -> bool:
    """Give ``ws`` a place among the unauthenticated sockets -> False if there are none (budget 0).

    The budget is full: the socket that has waited longest is pushed out (its owner closes it with
    1013), not the newcomer. A Twilio stream can only show its key in ``start``, a few ms after the
    upgrade, so refusing newcomers would let anyone who keeps the budget full (one socket per
    ``ws_auth_timeout_s / budget`` seconds) shut out every call; pushing out the oldest makes them
    outpace the real clients' first message instead."""
    budget = state.cfg.max_unauthenticated_sessions
    if budget <= 0:
        state.metrics.requests.labels(endpoint, "rejected").inc()
        return False
    while len(state.pending) >= budget:
        oldest = next(iter(state.pending))
        state.pending.pop(oldest).set()
        state.metrics.requests.labels(endpoint, "pushed_out").inc()
    state.pending[ws] = asyncio.Event()
    return True


async def close_unless_authenticated(
    ws: web.WebSocketResponse,
    pushed_out: asyncio.Event,
    timeout_s: float,
    authenticated: Callable[[], bool],
    reason: bytes,
) -> None:
    """Close a pending socket that has not authenticated within ``timeout_s`` (1008, ``reason``), or
    at once when a newer one pushes it out of the budget (1013). Its reader then sees the close."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pushed_out.wait(), timeout_s)
    if authenticated():
        return
    if pushed_out.is_set():
        await ws.close(code=TRY_AGAIN_LATER, message=PUSHED_OUT)
    else:
        await ws.close(code=POLICY_VIOLATION, message=reason)


async def settle(*tasks: asyncio.Task | None, wait_s: float = SETTLE_WAIT_S) -> None:
    """Cancel ``tasks`` and wait until they have finished, at most ``wait_s``.

    Every task is cancelled before the first ``await``, so none outlives its session even when the
    caller is itself cancelled here (the client hung up: handler cancellation is on); a task left
    pending would be destroyed with its session ("Task was destroyed but it is pending") and keep it
    in memory until then. The wait never cancels what it waits for (``asyncio.wait``), so if the
    caller is cancelled meanwhile, or ``wait_s`` passes (a gRPC wait notices its cancellation only
    at the channel's next state change), the tasks still run their cancellation to the end on their
    own; ``gather`` collects their exceptions."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()  # a finished one stays as it is; gather still collects its exception
    if live:
        await asyncio.wait({asyncio.gather(*live, return_exceptions=True)}, timeout=wait_s)
