"""Which routes need an API key, and what the open ones may tell a caller without one.

With keys configured (``CSM_API_KEYS``), an anonymous client reaches only what a load balancer or
a browser needs: ``/health`` (status, model_loaded and device only, unless
``public_health_detail``), ``/ping``, ``/openapi.json``, ``/docs`` and the playground page.
``/metrics`` needs the key too unless ``public_metrics``. The WebSocket routes check keys
themselves (docs/security.md).
"""

from __future__ import annotations

from aiohttp import web

from csm_service.api.routes import NATIVE_WS_PREFIX  # also takes ?api_key= and a first "auth" message
from csm_service.auth import bearer_token
from csm_service.edge.state import STATE

OPEN_PATHS = ("/", "/health", "/ping", "/openapi.json", "/docs")  # no key needed
METRICS_PATH = "/metrics"  # open with keys on only when ServiceConfig.public_metrics
# WebSockets check keys themselves: a query parameter or first message (native), or a Twilio
# <Parameter name="api_key"> in the start event (Twilio sends no Authorization header).
SELF_AUTH_PREFIXES = (NATIVE_WS_PREFIX, "/v1/twilio/media-stream")
UNMATCHED = "unmatched"  # the metrics label of a path no route serves


def is_open(path: str, public_metrics: bool) -> bool:
    """True when ``path`` needs no bearer key even with keys on (WebSockets: see SELF_AUTH_PREFIXES)."""
    return path in OPEN_PATHS or (path == METRICS_PATH and public_metrics)


def has_valid_key(request: web.Request) -> bool:
    """Keys are on and the request carries a valid ``Authorization: Bearer`` key."""
    checker = request.app[STATE].checker
    return checker.enabled and checker.is_valid(bearer_token(request.headers.get("Authorization")))


def route_label(request: web.Request) -> str:
    """A metrics label for the request: its route's template (``v1/voices/{voice_id}``), never the
    path the client sent, so labels take one value per route however many paths are tried."""
    resource = request.match_info.route.resource
    if resource is None:  # 404 and 405: no route matched
        return UNMATCHED
    return resource.canonical.strip("/") or "root"
