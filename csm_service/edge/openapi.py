"""``GET /openapi.json`` (OpenAPI 3.1) and ``GET /docs``, a page rendered from it (no CDN, no JS)."""

from __future__ import annotations

import asyncio
import copy
import html
import json

from aiohttp import web

from csm_service import __version__
from csm_service.config import NUM_MIMI_CODES
from csm_service.edge.openapi_ecosystem import ecosystem_paths, ecosystem_schemas
from csm_service.edge.openapi_parts import error_doc as _error
from csm_service.edge.openapi_parts import json_body as _json
from csm_service.edge.openapi_parts import secure
from csm_service.edge.params import (
    DEFAULT_MAX_AUDIO_MS,
    ENGINE_MAX_AUDIO_MS,
    HTTP_FORMATS,
    MAX_INT32,
    MAX_SEED,
    MIN_TEMPERATURE,
)
from csm_service.edge.state import STATE

VOICE_ID = {"name": "voice_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
VOICE_PROPERTIES = {
    "voice_id": {"type": "string"},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "speaker": {"type": "integer"},
    "transcript": {"type": "string"},
    "num_frames": {"type": "integer", "description": "80 ms Mimi frames of the prompt"},
    "duration_ms": {"type": "number"},
    "created_at": {"type": "number", "description": "Unix time"},
    "builtin": {"type": "boolean"},
    "codes": {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer"}},
        "description": "[32][num_frames] Mimi codes (with ?include_codes=true)",
    },
}
SCHEMAS: dict[str, dict] = {
    "Voice": {"type": "object", "required": ["voice_id", "name", "builtin"], "properties": VOICE_PROPERTIES},
    "VoiceList": {
        "type": "object",
        "required": ["voices"],
        "properties": {
            "voices": {"type": "array", "items": {"$ref": "#/components/schemas/Voice"}},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as cursor for the next page; null on the last page",
            },
        },
    },
    "VoiceUpload": {
        "type": "object",
        "required": ["file", "transcript", "name"],
        "properties": {
            "file": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "WAV, FLAC, OGG or MP3 at any rate, 0.5 s up to the server's limit (30 s)",
            },
            "transcript": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "What it says"},
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "speaker": {"type": "integer", "minimum": 0, "maximum": MAX_INT32, "default": 0},
            "description": {"type": "string", "maxLength": 500},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model_loaded", "device"],
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "loading", "unavailable", "draining"]},
            "model_loaded": {"type": "boolean"},
            "device": {"type": "string", "examples": ["cuda", "cpu"]},
            # The rest: keys off, a valid bearer key, or --public-health-detail.
            "version": {"type": "string"},
            "websocket_sessions": {"type": "integer"},
            "model": {"type": "string"},
            "device_name": {"type": "string"},
            "dtype": {"type": "string"},
            "gpu_memory_total_bytes": {"type": "integer"},
            "gpu_memory_allocated_bytes": {"type": "integer"},
            "engine": {
                "type": "object",
                "properties": {
                    "max_batch": {"type": "integer"},
                    "active_streams": {"type": "integer"},
                    "queue_depth": {"type": "integer"},
                },
            },
        },
    },
    "SynthesizeRequest": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "minLength": 1, "description": "Text to synthesize"},
            "speaker": {
                "type": "integer",
                "default": 0,
                "minimum": 0,
                "maximum": MAX_INT32,
                "description": "Speaker ID (0-based)",
            },
            "max_audio_length_ms": {
                "type": "integer",
                "default": DEFAULT_MAX_AUDIO_MS,
                "minimum": 80,
                "maximum": ENGINE_MAX_AUDIO_MS,
                "description": "Max audio length in ms",
            },
            "output_format": {
                "type": "string",
                "default": "wav",
                "enum": sorted(HTTP_FORMATS),
                "description": '"wav" (24 kHz WAV file) or "mulaw" (raw G.711 mu-law, 8 kHz); raw extensions',
            },
            "voice_profile_id": {
                "type": "string",
                "default": "default",
                "enum": ["default", ""],
                "description": 'A voice profile on this server; empty or null: "default"',
            },
            "temperature": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 5,
                "default": 0.9,
                "description": f"values below {MIN_TEMPERATURE:g} sample as {MIN_TEMPERATURE:g} (greedy)",
            },
            "top_k": {"type": "integer", "minimum": 1, "maximum": NUM_MIMI_CODES, "default": 50},
            "seed": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_SEED,
                "description": "same seed and inputs, same audio",
            },
            "request_id": {"type": "string", "maxLength": 128, "description": "echoed back"},
            "raw_text": {"type": "boolean", "default": False, "description": "skip text normalisation"},
        },
    },
    "SynthesizeResponse": {
        "type": "object",
        "required": ["audio_base64", "sample_rate", "duration_ms", "generation_time_ms", "format"],
        "properties": {
            "audio_base64": {"type": "string", "description": "Base64-encoded audio"},
            "sample_rate": {"type": "integer", "description": "24000 for wav, 8000 for mulaw"},
            "duration_ms": {"type": "integer"},
            "generation_time_ms": {"type": "integer"},
            "format": {"type": "string", "examples": ["wav", "mulaw_8khz"]},
            "seed": {"type": "integer"},
            "finish_reason": {"type": "string", "enum": ["end_of_speech", "max_length"]},
            "request_id": {"type": "string"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}, "field": {"type": "string"}},
    },
}

KEYS_ON_NOTE = (
    " This server requires an API key: `Authorization: Bearer <key>` on every operation that lists"
    " security (the native WebSocket also takes `?api_key=` or a first `auth` message; a Twilio stream"
    ' takes `<Parameter name="api_key">`). /health without a key says only status, model_loaded and device.'
)
WEBSOCKET_DOC = """Real-time synthesis. Client messages (JSON text frames):
`{"type": "synthesize", "text", "voice_profile_id"?, "stream"?, "request_id"?, "speaker"?,
"max_audio_length_ms"?, "temperature"?, "top_k"?, "seed"?, "context"?: "session", "raw_text"?}`,
`{"type": "context", "text", "speaker"?, "audio_base64"?, "format"?}` (a caller turn for the
session's conversation, answered by `context_added`), `{"type": "ping"}`, `{"type": "close"}`,
`{"type": "cancel", "request_id"?}`, and with API keys on and none sent at the upgrade, first
`{"type": "auth", "api_key"}` (a wrong or missing one closes the socket with 1008).
Server messages: `{"type": "audio", "audio_base64", "duration_ms", "generation_time_ms", "format": "mulaw_8khz"}`
(with `"stream": true`: one per chunk, plus `request_id`, `chunk_index`, `final`; then
`{"type": "done", "request_id", "chunks", "duration_ms", "time_to_first_audio_ms", "generation_time_ms",
"real_time_factor", "finish_reason", "seed"}`), `{"type": "pong"}`, `{"type": "authenticated"}`, `{"type": "cancelled", "request_id",
"request_ids"}`, `{"type": "error", "error", "detail"?}` with errors "Model not loaded",
"Invalid message format", "Empty text", "Text too long", "Message too large", "Unknown message type",
"Too many requests in flight", "Rate limit exceeded" (with `retry_after_ms`), "Overloaded", "Shutting down",
"Synthesis failed". Replies to synthesize requests come in the order the requests were sent. Audio is
G.711 mu-law, 8000 Hz, mono, no header (Twilio-ready). Close codes: 1008 authentication failed,
1013 too many sessions (try again later), 1001 server shutting down (after in-flight requests finish),
1000 "idle timeout" after `CSM_WS_IDLE_TIMEOUT_S` with no message and no work (send `ping` to keep
a quiet session open)."""


def build_spec(
    max_audio_ms: int = ENGINE_MAX_AUDIO_MS,
    max_text_chars: int | None = None,
    voice_ids: tuple[str, ...] = (),
    keys_on: bool = False,
    public_metrics: bool = False,
) -> dict:
    """The spec, with this server's own bounds and voice profiles in the request schema, and each
    operation's security as this server enforces it (``keys_on``: API keys are configured)."""
    schemas = copy.deepcopy(SCHEMAS)
    props = schemas["SynthesizeRequest"]["properties"]
    props["voice_profile_id"]["enum"] += list(voice_ids)
    props["max_audio_length_ms"]["maximum"] = max_audio_ms
    props["max_audio_length_ms"]["default"] = min(DEFAULT_MAX_AUDIO_MS, max_audio_ms)
    if max_text_chars is not None:
        props["text"]["maxLength"] = max_text_chars
    for name, prop in props.items():  # every optional field: null means "not given"
        if name != "text":
            prop["type"] = [prop["type"], "null"]
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]
    schemas.update(ecosystem_schemas(props, max_text_chars, voice_ids))
    spec = {
        "openapi": "3.1.0",
        "info": {
            "title": "CSM Voice API",
            "version": __version__,
            "description": "Telephony text-to-speech with Sesame CSM-1B: WAV 24 kHz or G.711 mu-law 8 kHz.",
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Health check",
                    "operationId": "health",
                    "responses": {
                        "200": {"description": "Service is healthy", **_json({"$ref": "#/components/schemas/Health"})},
                        "503": {"description": "Model not loaded", **_json({"$ref": "#/components/schemas/Health"})},
                    },
                }
            },
            "/ping": {
                "get": {
                    "summary": "Load-balancer readiness (RunPod): 200 ready, 204 initializing, 503 unavailable",
                    "operationId": "ping",
                    "responses": {
                        "200": {"description": "Ready"},
                        "204": {"description": "Initializing (the model is loading)"},
                        "503": {"description": "No engine worker serves"},
                    },
                }
            },
            "/synthesize": {
                "post": {
                    "summary": "Synthesize speech from text",
                    "operationId": "synthesize",
                    "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/SynthesizeRequest"})},
                    "responses": {
                        "200": {
                            "description": "The whole utterance",
                            **_json({"$ref": "#/components/schemas/SynthesizeResponse"}),
                        },
                        "400": _error("Invalid JSON or missing required fields"),
                        "401": _error("API keys are configured and none or a wrong one was sent"),
                        "413": _error("Request body too large"),
                        "422": _error("Field validation failed"),
                        "429": _error("Rate limit, or the tenant's utterances in flight, exceeded (Retry-After)"),
                        "500": _error("Synthesis failed"),
                        "503": _error("Model not loaded, or overloaded (Retry-After)"),
                        "504": _error("Synthesis took longer than the request timeout"),
                    },
                }
            },
            "/v1/native/ws/{session_id}": {
                "get": {
                    "summary": "WebSocket: real-time synthesis (G.711 mu-law 8 kHz)",
                    "operationId": "native_websocket",
                    "description": WEBSOCKET_DOC,
                    "parameters": [
                        {
                            "name": "session_id",
                            "in": "path",
                            "required": True,
                            "description": "Unique session identifier (use call SID or UUID)",
                            "schema": {"type": "string", "maxLength": 256},
                        }
                    ],
                    "responses": {
                        "101": {"description": "Switching protocols to WebSocket"},
                        "400": _error("A bad session id"),
                        "426": _error("Not a WebSocket upgrade request"),
                        "401": _error("Wrong API key in the Authorization header or the api_key parameter"),
                        "503": _error("Server draining or not ready"),
                    },
                }
            },
            "/v1/voices": {
                "get": {
                    "summary": "List the caller's tenant's voice profiles, a page at a time (the built-in default first)",
                    "operationId": "list_voices",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": "profiles per page (default 100)",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "description": "the previous page's next_cursor",
                            "schema": {
                                "type": "string",
                                "pattern": "^[0-9]{1,20}(\\.[0-9]{1,20})?-[A-Za-z0-9_]{1,64}$",
                            },
                        },
                    ],
                    "responses": {
                        "200": {"description": "The profiles", **_json({"$ref": "#/components/schemas/VoiceList"})},
                        "400": _error("limit or cursor is not valid"),
                        "401": _error("API keys are configured and none or a wrong one was sent"),
                    },
                },
                "post": {
                    "summary": "Create a voice profile from a recording and its transcript",
                    "operationId": "create_voice",
                    "requestBody": {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/VoiceUpload"}}},
                    },
                    "responses": {
                        "201": {"description": "Created", **_json({"$ref": "#/components/schemas/Voice"})},
                        "400": _error("Not multipart, or the file is missing"),
                        "401": _error("API keys are configured and none or a wrong one was sent"),
                        "409": _error("The tenant has its maximum number of voice profiles"),
                        "413": _error("Upload too large"),
                        "422": _error("Not readable audio, too short or too long, or a bad field"),
                        "429": _error("Rate limit exceeded for this API key (Retry-After)"),
                        "503": _error("Model not loaded (the engine encodes the audio)"),
                    },
                },
            },
            "/v1/voices/{voice_id}": {
                "get": {
                    "summary": "One voice profile",
                    "operationId": "get_voice",
                    "parameters": [
                        VOICE_ID,
                        {"name": "include_codes", "in": "query", "required": False, "schema": {"type": "boolean"}},
                    ],
                    "responses": {
                        "200": {"description": "The profile", **_json({"$ref": "#/components/schemas/Voice"})},
                        "401": _error("API keys are configured and none or a wrong one was sent"),
                        "400": _error("include_codes is not true or false"),
                        "404": _error("Unknown voice profile"),
                    },
                },
                "delete": {
                    "summary": "Delete a voice profile",
                    "operationId": "delete_voice",
                    "parameters": [VOICE_ID],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "403": _error("A shared profile (no owner) is deleted with an admin key"),
                        "409": _error("The built-in default voice cannot be deleted"),
                        "401": _error("API keys are configured and none or a wrong one was sent"),
                        "404": _error("Unknown voice profile"),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {  # required by the operations that say so (keys on: all but the open routes)
                "bearer": {"type": "http", "scheme": "bearer"},
                "api_key": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
        },
    }
    spec["paths"].update(ecosystem_paths())
    secure(spec["paths"], keys_on, public_metrics)
    spec["info"]["description"] += KEYS_ON_NOTE if keys_on else " This server runs without API keys."
    return spec


async def openapi_json(request: web.Request) -> web.Response:
    state = request.app[STATE]
    keys_on = state.checker.enabled
    # Voice ids are the tenants' data: an open route lists them only on a server without keys.
    voice_ids = tuple(await asyncio.to_thread(state.voices.ids)) if state.voices and not keys_on else ()
    spec = build_spec(
        state.cfg.max_audio_length_ms, state.cfg.max_text_chars, voice_ids, keys_on, state.cfg.public_metrics
    )
    return web.json_response(spec)


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


async def docs(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.cfg
    spec = build_spec(cfg.max_audio_length_ms, cfg.max_text_chars, (), state.checker.enabled, cfg.public_metrics)
    return web.Response(text=render_docs(spec), content_type="text/html")
