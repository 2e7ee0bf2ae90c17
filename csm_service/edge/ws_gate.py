"""Opening a WebSocket on the edge: what every WebSocket route checks before its session starts."""

from __future__ import annotations

from aiohttp import web

from csm_service.edge.errors import TOO_MANY_SESSIONS, UNAUTHORIZED, ApiError
from csm_service.edge.state import EdgeState

HEARTBEAT_S = 30.0  # protocol pings: a peer that vanished without a FIN is noticed and its work cancelled
GOING_AWAY, TRY_AGAIN_LATER = 1001, 1013  # WebSocket close codes (RFC 6455, IANA registry)
POLICY_VIOLATION = 1008
NORMAL_CLOSURE = 1000


async def open_websocket(
    request: web.Request, state: EdgeState, presented_key: str | None, endpoint: str
) -> tuple[web.WebSocketResponse, bool]:
    """Upgrade the request -> (socket, whether to serve it). A plain GET gets 426; an invalid key
    presented at the upgrade gets 401. Past the upgrade, a draining server closes with 1001 and a
    full one (``max_sessions``) with 1013; those sockets come back closed, not to be served."""
    ws = web.WebSocketResponse(max_msg_size=max(4 << 20, 16 * state.cfg.max_ws_message_bytes), heartbeat=HEARTBEAT_S)
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
        state.metrics.requests.labels(endpoint, "rejected").inc()
        await ws.close(code=TRY_AGAIN_LATER, message=f"{TOO_MANY_SESSIONS} (at most {state.cfg.max_sessions})".encode())
        return ws, False
    return ws, True
