"""The aiohttp application and its server: routes, JSON errors for everything, start and stop.

``csm-service edge --engine host:port[,...]`` runs :func:`run_edge`; ``csm-service serve`` builds the
same app beside an in-process engine. This package never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from csm_service.api.errors import ApiError
from csm_service.auth import KeyChecker, warn_if_open
from csm_service.config import ServiceConfig, api_key_entries
from csm_service.edge import http_api, openai_api, openapi, playground, voices_api
from csm_service.edge.access import Caller, Handler, request_key, require_key
from csm_service.edge.connections import ConnectionLimits, GuardedAppRunner
from csm_service.edge.state import STATE, EdgeState
from csm_service.edge.throttle import ThrottledBackend
from csm_service.edge.twilio import routes as twilio_routes
from csm_service.edge.ws_gate import GOING_AWAY, joined, open_websocket
from csm_service.edge.ws_session import WsSession
from csm_service.limits import RateLimiter
from csm_service.metrics import EdgeMetrics
from csm_service.rpc.client import EngineClient, edge_client
from csm_service.rpc.remote import RemoteSpeechService
from csm_service.voices import VoiceStore

log = logging.getLogger(__name__)

MAX_SESSION_ID_CHARS = 256
DRAIN_DEADLINE_DETAIL = "the server is shutting down: its call-drain deadline passed; reconnect to continue"
FINAL_REPLY_WAIT_S = 5.0  # past the call-drain deadline: time for the final errors to be sent


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON: aiohttp's own (404, 405, 413), a body aiohttp cannot read (a bad
    Content-Encoding: 400), and anything unexpected (500)."""
    try:
        return await handler(request)
    except ApiError as err:
        return _api_error(request, err)
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # from request.read() and friends
        return _api_error(request, http_api.unreadable_body(request, exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}  # 405 must say what is allowed
        if request.path.startswith(openai_api.OPENAI_PATHS):  # OpenAI's clients read OpenAI's shape
            return _api_error(
                request, ApiError(exc.status, exc.reason, f"{request.method} {request.path}", headers=headers)
            )
        return web.json_response(
            {"error": exc.reason, "detail": f"{request.method} {request.path}: {exc.reason}"},
            status=exc.status,
            headers=headers or None,
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "Internal Server Error", "detail": "unexpected server error"}, status=500)


def _api_error(request: web.Request, err: ApiError) -> web.Response:
    return http_api.error_response(err, openai=request.path.startswith(openai_api.OPENAI_PATHS))


async def websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    session_id = request.match_info["session_id"]
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise ApiError(400, "Invalid session id", f"session_id: at most {MAX_SESSION_ID_CHARS} characters")
    presented = request_key(request) or request.query.get("api_key")
    pending = state.checker.enabled and presented is None  # its key comes in the "auth" message
    ws, serve = await open_websocket(request, state, presented, "websocket", pending=pending)
    if not serve:
        return ws
    session = WsSession(ws, session_id, state, Caller.of(state, presented, request.remote), authenticated=not pending)
    # A pending one joins the sessions once authenticated (EdgeState.promote).
    with joined(state, ws, session, state.metrics.sessions, add=not pending):
        await session.run()
    return ws


def build_app(
    cfg: ServiceConfig,
    client: EngineClient,
    registry: CollectorRegistry,
    metrics: EdgeMetrics | None = None,
    device_hint: str = "unknown",
    checker: KeyChecker | None = None,
) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[json_errors, require_key])
    metrics = metrics or EdgeMetrics(registry)
    backend = RemoteSpeechService(client, cfg.request_timeout_s, device_hint, on_replay=metrics.engine_replays.inc)
    if cfg.throttle_rtf > 0:  # debug: benchmarks at a fixed real-time factor
        backend = ThrottledBackend(backend, cfg.throttle_rtf)
    checker = checker or KeyChecker(api_key_entries(cfg))
    limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)
    state = EdgeState(cfg, backend, registry, metrics, checker, limiter)
    state.voices = VoiceStore(cfg.data_dir)
    app[STATE] = state
    app.router.add_get("/", playground.playground)
    app.router.add_get("/health", http_api.health)
    app.router.add_get("/ping", http_api.ping)
    app.router.add_post("/synthesize", http_api.synthesize)
    app.router.add_get("/metrics", http_api.metrics)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs)
    app.router.add_get("/v1/native/ws/{session_id}", websocket)
    app.router.add_post("/v1/voices", voices_api.create_voice)
    app.router.add_get("/v1/voices", voices_api.list_voices)
    app.router.add_get("/v1/voices/{voice_id}", voices_api.get_voice)
    app.router.add_delete("/v1/voices/{voice_id}", voices_api.delete_voice)
    app.router.add_post("/v1/audio/speech", openai_api.create_speech)
    app.router.add_get("/v1/audio/voices", openai_api.list_voices)
    app.router.add_get("/v1/audio/models", openai_api.list_audio_models)
    app.router.add_get("/v1/models", openai_api.list_models)
    app.router.add_get("/v1/models/{model:.+}", openai_api.retrieve_model)
    app.router.add_get("/v1/twilio/media-stream", twilio_routes.media_stream)
    app.router.add_get("/v1/calls", twilio_routes.list_calls)
    app.router.add_get("/v1/calls/{stream_sid}", twilio_routes.get_call)
    app.router.add_post("/v1/calls/{stream_sid}/say", twilio_routes.say)
    app.router.add_post("/v1/calls/{stream_sid}/clear", twilio_routes.clear)
    return app


class EdgeServer:
    """The app on a TCP port; handler cancellation on, so a client that hangs up cancels its work."""

    def __init__(self, app: web.Application, host: str, port: int, health_port: int = 0) -> None:
        self.app = app
        self.host, self.port, self.health_port = host, port, health_port
        limits = ConnectionLimits.from_config(app[STATE].cfg)  # header/body deadlines, connection cap
        self.runner = GuardedAppRunner(app, limits, handler_cancellation=True, access_log=None)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        log.info("edge listening on http://%s:%d", self.host, self.port)
        if self.health_port and self.health_port != self.port:  # e.g. RunPod's PORT_HEALTH for /ping
            await web.TCPSite(self.runner, self.host, self.health_port).start()
            log.info("health checks (/ping, /health) also on port %d", self.health_port)

    def begin_drain(self) -> None:
        """SIGTERM, first step: health answers 503 and new sessions, calls and HTTP requests are
        refused; live sessions and calls go on, new utterances included."""
        self.app[STATE].draining = True
        log.info("draining: /health is 503, new sessions and requests are refused; live calls go on")

    async def _wait_for(self, condition: Callable[[], bool], deadline_s: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while not condition() and loop.time() < end:
            await asyncio.sleep(0.05)
        return condition()

    async def drain(self, call_drain_s: float) -> None:
        """SIGTERM: :meth:`begin_drain`, then wait until every session, call and HTTP request has
        ended, at most ``call_drain_s``. Past it, every utterance still in flight ends with the same
        final error (``Shutting down``), and the sessions close with 1001."""
        self.begin_drain()
        state = self.app[STATE]
        if await self._wait_for(lambda: not state.sessions and not state.http_inflight, call_drain_s):
            return
        log.warning(
            "call drain deadline (%.0f s): ending %d sessions and calls, %d HTTP requests",
            call_drain_s,
            len(state.sessions),
            state.http_inflight,
        )
        state.backend.abort_all(DRAIN_DEADLINE_DETAIL)
        await self._wait_for(state.is_idle, FINAL_REPLY_WAIT_S)  # the final errors reach the clients

    async def stop(self) -> None:
        """Close every session (and every socket still authenticating) with 1001 (going away), then
        the listeners."""
        state = self.app[STATE]
        for ws in [s.ws for s in state.sessions] + list(state.pending):
            await ws.close(code=GOING_AWAY, message=b"server shutting down")
        await self.runner.cleanup()


async def run_edge(cfg: ServiceConfig) -> int:
    """The edge alone, against the engine workers in ``cfg.engine_addresses``."""
    if not cfg.engine_addresses:
        log.error("no engine workers: pass --engine host:port[,host:port...] or set CSM_ENGINE")
        return 2
    keys = api_key_entries(cfg)
    client = edge_client(list(cfg.engine_addresses), cfg, keys)  # sends the first admin key, else the first
    registry = CollectorRegistry()
    checker = KeyChecker(keys)
    warn_if_open(checker, cfg.host, "the HTTP/WebSocket edge")
    server = EdgeServer(build_app(cfg, client, registry, checker=checker), cfg.host, cfg.port, cfg.health_port)
    await server.start()
    log.info("edge -> engines %s", client.target)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain(cfg.call_drain_s)
    await server.stop()
    await client.close()
    return 0
