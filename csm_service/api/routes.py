"""Every HTTP operation /openapi.json documents, as a table: method, path, summary, request and
response models per status. :mod:`.openapi` turns it into the spec; who needs an API key comes
from the edge (:mod:`csm_service.edge.access`, what the server enforces), never from here.

A status given as a plain string is an error response with the route's error model (the native
``Error``, or OpenAI's shape on the OpenAI routes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from csm_service.api.openai import MAX_MODEL_CHARS, AudioModels, AudioVoices, ModelCard, ModelList, OpenAIError
from csm_service.api.responses import Error, Health, SynthesizeResponse
from csm_service.api.twilio import CALL_DOC, Call, CallList, Cleared, SayAccepted
from csm_service.api.voices import CURSOR, DEFAULT_PAGE, MAX_PAGE, Voice, VoiceList
from csm_service.api.websocket import WEBSOCKET_DOC
from csm_service.core.errors import UNKNOWN_VOICE
from csm_service.core.formats import FILE_FORMATS

NATIVE_WS_PREFIX = "/v1/native/ws/"  # the native WebSocket; it also takes ?api_key= and a first "auth" message


@dataclass(frozen=True)
class Reply:
    description: str
    body: type[BaseModel] | str | dict | None = None  # a model (JSON), a media type, or a content map


@dataclass(frozen=True)
class Route:
    operation: str  # "post /synthesize"
    operation_id: str
    summary: str
    tag: str
    responses: dict[str, Reply | str]
    request: str | None = None  # a component schema's name (those with server bounds are built per server)
    request_media: str = "application/json"
    params: tuple[dict[str, Any], ...] = ()
    description: str | None = None
    errors: type[BaseModel] = Error

    @property
    def method(self) -> str:
        return self.operation.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.operation.split(" ", 1)[1]


def path_param(name: str, max_length: int, description: str | None = None) -> dict[str, Any]:
    param = {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": max_length}}
    return {**param, "description": description} if description else param


def query_param(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**param, "description": description} if description else param


KEY_401 = "API keys are configured and none or a wrong one was sent"
TOO_LARGE = "Request body too large"
RATE_429 = "Rate limit, or the tenant's utterances in flight, exceeded (Retry-After)"
LATE_504 = "Synthesis took longer than the request timeout"
UPGRADE = Reply("Switching protocols to WebSocket")
NOT_UPGRADE = "Not a WebSocket upgrade request"
NO_CALL = "No call with that streamSid is connected to this edge"
VOICE_ID = path_param("voice_id", 64)
STREAM_SID = path_param("stream_sid", 64)
AUDIO = {  # all but FLAC stream as generated; SSE: each event's data is a speech.audio.delta / .done
    **{f.content_type: {"schema": {"type": "string", "format": "binary"}} for f in FILE_FORMATS.values()},
    "text/event-stream": {
        "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    },
}

SYNTHESIS_ERRORS = {"401": KEY_401, "413": TOO_LARGE, "429": RATE_429, "500": "Synthesis failed"}
NATIVE = [
    Route(
        "get /health",
        "health",
        "Health check",
        "native",
        {"200": Reply("Service is healthy", Health), "503": Reply("Model not loaded", Health)},
    ),
    Route(
        "get /ping",
        "ping",
        "Load-balancer readiness (RunPod): 200 ready, 204 initializing, 503 unavailable",
        "native",
        {
            "200": Reply("Ready"),
            "204": Reply("Initializing (the model is loading)"),
            "503": Reply("No engine worker serves"),
        },
    ),
    Route(
        "post /synthesize",
        "synthesize",
        "Synthesize speech from text",
        "native",
        {
            "200": Reply("The whole utterance", SynthesizeResponse),
            "400": "Invalid JSON or missing required fields",
            **SYNTHESIS_ERRORS,
        }
        | {"422": "Field validation failed", "503": "Model not loaded, or overloaded (Retry-After)", "504": LATE_504},
        request="SynthesizeRequest",
    ),
    Route(
        "get /v1/native/ws/{session_id}",
        "native_websocket",
        "WebSocket: real-time synthesis (G.711 mu-law 8 kHz)",
        "native",
        {"101": UPGRADE, "400": "A bad session id", "426": NOT_UPGRADE, "503": "Server draining or not ready"}
        | {"401": "Wrong API key in the Authorization header or the api_key parameter"},
        params=(path_param("session_id", 256, "Unique session identifier (use call SID or UUID)"),),
        description=WEBSOCKET_DOC,
    ),
    Route(
        "get /metrics",
        "metrics",
        "Prometheus metrics",
        "operations",
        {"200": Reply("Prometheus text format", "text/plain")},
    ),
    Route("get /", "playground", "The browser playground", "operations", {"200": Reply("An HTML page", "text/html")}),
]
VOICES = [
    Route(
        "get /v1/voices",
        "list_voices",
        "List the caller's tenant's voice profiles, a page at a time (the built-in default first)",
        "voices",
        {"200": Reply("The profiles", VoiceList), "400": "limit or cursor is not valid", "401": KEY_401},
        params=(
            query_param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                f"profiles per page (default {DEFAULT_PAGE})",
            ),
            query_param(
                "cursor", {"type": "string", "pattern": f"^{CURSOR.pattern}$"}, "the previous page's next_cursor"
            ),
        ),
    ),
    Route(
        "post /v1/voices",
        "create_voice",
        "Create a voice profile from a recording and its transcript",
        "voices",
        {"201": Reply("Created", Voice), "400": "Not multipart, or the file is missing", "401": KEY_401}
        | {"409": "The tenant has its maximum number of voice profiles", "413": "Upload too large"}
        | {"422": "Not readable audio, too short or too long, or a bad field"}
        | {
            "429": "Rate limit exceeded for this API key (Retry-After)",
            "503": "Model not loaded (the engine encodes the audio)",
        },
        request="VoiceUpload",
        request_media="multipart/form-data",
    ),
    Route(
        "get /v1/voices/{voice_id}",
        "get_voice",
        "One voice profile",
        "voices",
        {
            "200": Reply("The profile", Voice),
            "401": KEY_401,
            "400": "include_codes is not true or false",
            "404": UNKNOWN_VOICE,
        },
        params=(VOICE_ID, query_param("include_codes", {"type": "boolean"})),
    ),
    Route(
        "delete /v1/voices/{voice_id}",
        "delete_voice",
        "Delete a voice profile",
        "voices",
        {"204": Reply("Deleted"), "403": "A shared profile (no owner) is deleted with an admin key", "401": KEY_401}
        | {"409": "The built-in default voice cannot be deleted", "404": UNKNOWN_VOICE},
        params=(VOICE_ID,),
    ),
]
OPENAI = [
    Route(
        "post /v1/audio/speech",
        "openai_speech",
        "OpenAI-compatible text to speech",
        "openai",
        {"200": Reply("The audio (streamed as generated, FLAC excepted), or SSE events", AUDIO)}
        | {"400": "Invalid request (the param is named)", **SYNTHESIS_ERRORS}
        | {"503": "Model not loaded, or overloaded", "504": LATE_504},
        request="SpeechRequest",
        errors=OpenAIError,
    ),
    Route(
        "get /v1/audio/voices",
        "openai_voices",
        "Voices for OpenAI-style clients (Open WebUI)",
        "openai",
        {"200": Reply("The voices", AudioVoices), "401": KEY_401},
        errors=OpenAIError,
    ),
    Route(
        "get /v1/audio/models",
        "openai_audio_models",
        "Speech models for Open WebUI",
        "openai",
        {"200": Reply("The model", AudioModels), "401": KEY_401},
        errors=OpenAIError,
    ),
    Route(
        "get /v1/models",
        "openai_models",
        "OpenAI's model list",
        "openai",
        {"200": Reply("The model", ModelList), "401": KEY_401},
        errors=OpenAIError,
    ),
    Route(
        "get /v1/models/{model}",
        "openai_model",
        "One model (OpenAI's models.retrieve)",
        "openai",
        {"200": Reply("The model", ModelCard), "401": KEY_401, "404": "No such model (code model_not_found)"},
        params=(path_param("model", MAX_MODEL_CHARS),),
        errors=OpenAIError,
    ),
]
TWILIO = [
    Route(
        "get /v1/twilio/media-stream",
        "twilio_media_stream",
        "WebSocket: a Twilio media stream, connected straight from TwiML",
        "twilio",
        {"101": UPGRADE, "426": NOT_UPGRADE, "401": "Wrong API key in the Authorization header"},
        description=CALL_DOC,
    ),
    Route(
        "get /v1/calls",
        "list_calls",
        "Calls connected to this edge",
        "twilio",
        {"200": Reply("stream and call SIDs", CallList), "401": KEY_401},
    ),
    Route(
        "get /v1/calls/{stream_sid}",
        "get_call",
        "A call: its parameters, DTMF, and every utterance's state",
        "twilio",
        {"200": Reply("The call", Call), "401": KEY_401, "404": NO_CALL},
        params=(STREAM_SID,),
    ),
    Route(
        "post /v1/calls/{stream_sid}/say",
        "call_say",
        "Say something on a call (queued; with interrupt, barge in first)",
        "twilio",
        {"202": Reply("Queued", SayAccepted), "400": "Invalid JSON or missing text", "401": KEY_401, "404": NO_CALL}
        | {"413": TOO_LARGE, "422": "Field validation failed", "429": RATE_429, "503": "Shutting down"},
        request="SayRequest",
        params=(STREAM_SID,),
    ),
    Route(
        "post /v1/calls/{stream_sid}/clear",
        "call_clear",
        "Barge in: clear Twilio's buffer, cancel generation, drop the queue",
        "twilio",
        {"200": Reply("What was cut", Cleared), "401": KEY_401, "404": NO_CALL},
        params=(STREAM_SID,),
    ),
]
ROUTES: list[Route] = [*NATIVE, *VOICES, *OPENAI, *TWILIO]
REPLY_MODELS: list[type[BaseModel]] = sorted(
    {r.errors for r in ROUTES}
    | {
        reply.body
        for r in ROUTES
        for reply in r.responses.values()
        if isinstance(reply, Reply) and isinstance(reply.body, type)
    },
    key=lambda m: m.__name__,
)
