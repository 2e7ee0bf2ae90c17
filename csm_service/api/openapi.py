"""The OpenAPI 3.1 document (``/openapi.json``) and the ``/docs`` page rendered from it (no CDN, no JS).

The spec is written from the models (the component schemas: the same classes that validate
requests) and the route table (:mod:`.routes`), with a server's bounds, its voice profiles in the
voice enums, and each operation's security as the server enforces it (the edge says which paths
need a key: :mod:`csm_service.edge.access`). The edge serves both (:mod:`csm_service.edge.openapi`).
"""

from __future__ import annotations

import copy
import html
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from csm_service import __version__
from csm_service.api.base import REF_TEMPLATE, OpenApiSchema
from csm_service.api.openai import speech_request
from csm_service.api.routes import NATIVE_WS_PREFIX, REPLY_MODELS, ROUTES, Reply, Route
from csm_service.api.speak import synthesize_request
from csm_service.api.twilio import say_request
from csm_service.api.twilio_stream import TwilioInbound, TwilioOutbound
from csm_service.api.voices import VoiceUpload
from csm_service.api.websocket import WsClientMessage, WsServerMessage
from csm_service.core.constants import DEFAULT_VOICE, ENGINE_MAX_AUDIO_MS

BEARER = {"bearer": []}
WS_KEY_WAYS = [BEARER, {"api_key": []}]  # the native WebSocket also takes ?api_key= (and an auth message)
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "api_key": {"type": "apiKey", "in": "query", "name": "api_key"},
}
NO_KEY = "No or a wrong API key (Authorization: Bearer)"
DESCRIPTION = "Telephony text-to-speech with Sesame CSM-1B: WAV 24 kHz or G.711 mu-law 8 kHz."
KEYS_ON_NOTE = (
    " This server requires an API key: `Authorization: Bearer <key>` on every operation that lists"
    " security (the native WebSocket also takes `?api_key=` or a first `auth` message; a Twilio stream"
    ' takes `<Parameter name="api_key">`). /health without a key says only status, model_loaded and device.'
)
KEYS_OFF_NOTE = " This server runs without API keys."


def build_spec(
    max_audio_ms: int = ENGINE_MAX_AUDIO_MS,
    max_text_chars: int | None = None,
    voice_ids: tuple[str, ...] = (),
    needs_key: Callable[[str], bool] | None = None,
) -> dict:
    """The spec, with this server's own bounds and voice profiles in the request schemas, and each
    operation's security as this server enforces it: ``needs_key`` (None: the server has no API
    keys) tells whether a path needs a key."""
    schemas = copy.deepcopy(_schemas(max_audio_ms, max_text_chars))
    _list_voices(schemas, voice_ids)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, needs_key)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CSM Voice API",
            "version": __version__,
            "description": DESCRIPTION + (KEYS_OFF_NOTE if needs_key is None else KEYS_ON_NOTE),
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": copy.deepcopy(SECURITY_SCHEMES)},
    }


@lru_cache(maxsize=8)
def _schemas(max_audio_ms: int, max_text_chars: int | None) -> dict[str, Any]:
    """Every model's JSON Schema, the request bodies with this server's bounds."""
    requests: list[type[BaseModel]] = [
        synthesize_request(max_text_chars, max_audio_ms),
        speech_request(max_text_chars, max_audio_ms),
        say_request(max_text_chars, max_audio_ms),
        VoiceUpload,
    ]
    models = [*requests, *REPLY_MODELS, WsClientMessage, WsServerMessage, TwilioInbound, TwilioOutbound]
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=REF_TEMPLATE, schema_generator=OpenApiSchema
    )
    return top["$defs"]


def _list_voices(node: object, voice_ids: tuple[str, ...]) -> None:
    """Add the stored profiles' ids to every voice enum (those that list "default")."""
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and DEFAULT_VOICE in enum and voice_ids:
            at = len(enum) - 1 if enum[-1] is None else len(enum)
            enum[at:at] = list(voice_ids)
        for value in node.values():
            _list_voices(value, voice_ids)
    elif isinstance(node, list):
        for value in node:
            _list_voices(value, voice_ids)


def _operation(route: Route, needs_key: Callable[[str], bool] | None) -> dict[str, Any]:
    """One operation: summary, parameters, request body, responses, and security (with keys on, on
    every route ``needs_key`` names, plus a 401; the native WebSocket also takes ?api_key=)."""
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id, "tags": [route.tag]}
    if route.description:
        op["description"] = route.description
    if route.params:
        op["parameters"] = [dict(param) for param in route.params]
    if route.request:
        op["requestBody"] = {"required": True, "content": {route.request_media: {"schema": _ref(route.request)}}}
    op["responses"] = {status: _response(reply, route) for status, reply in route.responses.items()}
    if needs_key is not None and needs_key(route.path):
        native_ws = route.path.startswith(NATIVE_WS_PREFIX)
        op["security"] = [dict(way) for way in WS_KEY_WAYS] if native_ws else [dict(BEARER)]
        if not native_ws:
            op["responses"].setdefault("401", _response(NO_KEY, route))
    return op


def _response(reply: Reply | str, route: Route) -> dict[str, Any]:
    if isinstance(reply, str):  # an error: the route's error body
        return {"description": reply, "content": {"application/json": {"schema": _ref(route.errors.__name__)}}}
    out: dict[str, Any] = {"description": reply.description}
    if isinstance(reply.body, type):
        out["content"] = {"application/json": {"schema": _ref(reply.body.__name__)}}
    elif isinstance(reply.body, str):
        out["content"] = {reply.body: {}}
    elif reply.body is not None:
        out["content"] = copy.deepcopy(reply.body)
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _render_schema(schema: dict, spec: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"<p><code>{html.escape(name)}</code></p>" + _render_schema(spec["components"]["schemas"][name], spec)
    props = schema.get("properties")
    if not props:
        return ""
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code>{' *' if name in required else ''}</td>"
        f"<td>{html.escape(str(p.get('type', '')))}</td><td>{html.escape(json.dumps(p.get('default', '')))}</td>"
        f"<td>{html.escape(str(p.get('description', p.get('enum', ''))))}</td></tr>"
        for name, p in props.items()
    )
    return f"<table><tr><th>field</th><th>type</th><th>default</th><th>notes</th></tr>{rows}</table>"


def render_docs(spec: dict) -> str:
    """The /docs page: every operation, its request body's fields and its responses."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>CSM Voice API</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"
        "code{background:#f4f4f4}</style></head><body>",
        f"<h1>{html.escape(spec['info']['title'])} <small>{html.escape(spec['info']['version'])}</small></h1>",
        f"<p>{html.escape(spec['info']['description'])} Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2 id='{op['operationId']}'>{method.upper()} <code>{html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op['summary'])}</p>")
            if "description" in op:
                parts.append(f"<pre style='white-space:pre-wrap'>{html.escape(op['description'])}</pre>")
            for media_type, content in op.get("requestBody", {}).get("content", {}).items():
                parts.append(f"<h3>Request body ({html.escape(media_type)})</h3>")
                parts.append(_render_schema(content["schema"], spec))
            parts.append("<h3>Responses</h3><ul>")
            for code, resp in op["responses"].items():
                parts.append(f"<li><b>{code}</b>: {html.escape(resp['description'])}</li>")
            parts.append("</ul>")
    parts.append("</body></html>")
    return "".join(parts)
