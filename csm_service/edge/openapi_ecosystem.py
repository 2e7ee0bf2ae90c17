"""The OpenAPI paths of the ecosystem routes: OpenAI-compatible speech and Twilio calls.

Merged into ``/openapi.json`` by :func:`csm_service.edge.openapi.build_spec`; the synthesis
extension fields reuse the native ``SynthesizeRequest`` property schemas (with this server's bounds).
"""

from __future__ import annotations

from csm_service.audio.containers import FILE_FORMATS
from csm_service.audio.stretch import MAX_SPEED, MIN_SPEED
from csm_service.edge.openai_api import EXTENSION_FIELDS, MAX_MODEL_CHARS, OPENAI_VOICES, STREAM_FORMATS
from csm_service.edge.openapi_parts import error_doc as _error
from csm_service.edge.openapi_parts import json_body as _json
from csm_service.edge.twilio.call import CALL_DEFAULTS

NON_BLANK = {"type": "string", "minLength": 1, "pattern": r"\S"}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
NAMED = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}, "name": {"type": "string"}}}


def _openai_error(description: str) -> dict:
    return _error(description, {"$ref": "#/components/schemas/OpenAIError"})


STREAM_SID = {"name": "stream_sid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
CALL_DOC = """Twilio connects here from <Connect><Stream url="wss://HOST/v1/twilio/media-stream">.
Twilio's messages in: connected, start (streamSid, customParameters), media, mark, dtmf, stop.
Out: media (20 ms of mu-law 8 kHz each, paced in real time a little ahead of the playhead), a mark
after each utterance (echoed once played), clear on barge-in.
<Parameter> names: greeting (said at once), voice, speaker, seed, temperature, top_k,
max_audio_length_ms, raw_text (defaults for the call), barge_in ("dtmf", "speech" or both), and
api_key when the server has API keys (Twilio sends no Authorization header)."""


def ecosystem_schemas(synthesis_props: dict, max_text_chars: int | None, voice_ids: tuple[str, ...]) -> dict:
    extensions = {name: synthesis_props[name] for name in EXTENSION_FIELDS}
    voice_names = ["default", *OPENAI_VOICES, *voice_ids]
    text = {**NON_BLANK, **({"maxLength": max_text_chars} if max_text_chars else {})}
    return {
        "OpenAIError": OPENAI_ERROR,
        "SpeechRequest": {
            "type": "object",
            "required": ["model", "input", "voice"],
            "properties": {
                "model": {**NON_BLANK, "maxLength": MAX_MODEL_CHARS, "description": "Any name; csm-1b serves them all"},
                "input": {**text, "description": "The text to speak"},
                "voice": {
                    "oneOf": [
                        {"type": "string", "enum": voice_names},
                        {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": {"type": "string", "enum": voice_names}},
                        },
                    ],
                    "description": "default, a voice profile id or name, or an OpenAI stock name (the default voice)",
                },
                "response_format": {"type": ["string", "null"], "enum": [*FILE_FORMATS, None], "default": "mp3"},
                "speed": {"type": ["number", "null"], "minimum": MIN_SPEED, "maximum": MAX_SPEED, "default": 1.0},
                "stream_format": {"type": ["string", "null"], "enum": [*STREAM_FORMATS, None], "default": "audio"},
                "instructions": {"type": ["string", "null"], "description": "Accepted and not used"},
                **extensions,
            },
        },
        "AudioVoices": {
            "type": "object",
            "required": ["voices"],
            "properties": {"voices": {"type": "array", "items": NAMED}},
        },
        "SayRequest": {
            "type": "object",
            "required": ["text"],
            "properties": {
                "text": {**text, "description": "What to say on the call"},
                "voice": {"type": ["string", "null"], "enum": [*voice_ids, "default", None], "description": "voice id"},
                "interrupt": {"type": "boolean", "default": False, "description": "Barge in: cut what is playing"},
                **{k: v for k, v in synthesis_props.items() if k in CALL_DEFAULTS},
            },
        },
    }


def ecosystem_paths() -> dict:
    audio_200 = {
        "description": "The audio (raw formats and WAV stream as generated), or SSE events",
        "content": {
            **{f.content_type: {"schema": {"type": "string", "format": "binary"}} for f in FILE_FORMATS.values()},
            "text/event-stream": {  # each event: data is a JSON speech.audio.delta / speech.audio.done
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
            },
        },
    }
    call_404 = _error("No call with that streamSid is connected to this edge")
    return {
        "/": {
            "get": {
                "summary": "The browser playground",
                "operationId": "playground",
                "responses": {"200": {"description": "An HTML page", "content": {"text/html": {}}}},
            }
        },
        "/v1/audio/speech": {
            "post": {
                "summary": "OpenAI-compatible text to speech",
                "operationId": "openai_speech",
                "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/SpeechRequest"})},
                "responses": {
                    "200": audio_200,
                    "400": _openai_error("Invalid request (the param is named)"),
                    "401": _openai_error("API keys are configured and none or a wrong one was sent"),
                    "413": _openai_error("Request body too large"),
                    "429": _openai_error("Rate limit, or the tenant's utterances in flight, exceeded (Retry-After)"),
                    "500": _openai_error("Synthesis failed"),
                    "503": _openai_error("Model not loaded, or overloaded"),
                    "504": _openai_error("Synthesis took longer than the request timeout"),
                },
            }
        },
        "/v1/audio/voices": {
            "get": {
                "summary": "Voices for OpenAI-style clients (Open WebUI)",
                "operationId": "openai_voices",
                "responses": {
                    "200": {"description": "The voices", **_json({"$ref": "#/components/schemas/AudioVoices"})},
                    "401": _openai_error("API keys are configured and none or a wrong one was sent"),
                },
            }
        },
        "/v1/audio/models": {
            "get": {
                "summary": "Speech models for Open WebUI",
                "operationId": "openai_audio_models",
                "responses": {
                    "200": {"description": "The model", **_json({"type": "object", "required": ["models"]})},
                    "401": _openai_error("API keys are configured and none or a wrong one was sent"),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "OpenAI's model list",
                "operationId": "openai_models",
                "responses": {
                    "200": {"description": "The model", **_json({"type": "object", "required": ["object", "data"]})},
                    "401": _openai_error("API keys are configured and none or a wrong one was sent"),
                },
            }
        },
        "/v1/twilio/media-stream": {
            "get": {
                "summary": "WebSocket: a Twilio media stream, connected straight from TwiML",
                "operationId": "twilio_media_stream",
                "description": CALL_DOC,
                "responses": {
                    "101": {"description": "Switching protocols to WebSocket"},
                    "426": _error("Not a WebSocket upgrade request"),
                    "401": _error("Wrong API key in the Authorization header"),
                },
            }
        },
        "/v1/calls": {
            "get": {
                "summary": "Calls connected to this edge",
                "operationId": "list_calls",
                "responses": {
                    "200": {"description": "stream and call SIDs", **_json({"type": "object", "required": ["calls"]})},
                    "401": _error("API keys are configured and none or a wrong one was sent"),
                },
            }
        },
        "/v1/calls/{stream_sid}": {
            "get": {
                "summary": "A call: its parameters, DTMF, and every utterance's state",
                "operationId": "get_call",
                "parameters": [STREAM_SID],
                "responses": {
                    "200": {"description": "The call", **_json({"type": "object", "required": ["utterances"]})},
                    "401": _error("API keys are configured and none or a wrong one was sent"),
                    "404": call_404,
                },
            }
        },
        "/v1/calls/{stream_sid}/say": {
            "post": {
                "summary": "Say something on a call (queued; with interrupt, barge in first)",
                "operationId": "call_say",
                "parameters": [STREAM_SID],
                "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/SayRequest"})},
                "responses": {
                    "202": {"description": "Queued", **_json({"type": "object", "required": ["utterance_id"]})},
                    "400": _error("Invalid JSON or missing text"),
                    "401": _error("API keys are configured and none or a wrong one was sent"),
                    "404": call_404,
                    "413": _error("Request body too large"),
                    "422": _error("Field validation failed"),
                    "429": _error("Rate limit, or the tenant's utterances in flight, exceeded (Retry-After)"),
                    "503": _error("Shutting down"),
                },
            }
        },
        "/v1/calls/{stream_sid}/clear": {
            "post": {
                "summary": "Barge in: clear Twilio's buffer, cancel generation, drop the queue",
                "operationId": "call_clear",
                "parameters": [STREAM_SID],
                "responses": {
                    "200": {"description": "What was cut", **_json({"type": "object", "required": ["cleared"]})},
                    "401": _error("API keys are configured and none or a wrong one was sent"),
                    "404": call_404,
                },
            }
        },
    }
