"""Voice profiles over HTTP (``/v1/voices``) and their use by synthesis requests.

``POST /v1/voices`` takes multipart form data: ``file`` (WAV, FLAC, OGG or MP3 at any rate),
``transcript`` (what it says), ``name``, and optionally ``speaker`` and ``description``. The edge
decodes the file, the engine encodes it to Mimi codes (gRPC ``EncodePrompt``), and the profile
is stored in SQLite. A synthesis with ``voice_profile_id`` sends the profile as its first context
segment, marked as a stable prefix, so the engine computes its KV once and reuses it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np
import soxr
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from csm_service.audio.decode import BadAudio, decode_audio, to_pcm16
from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.edge.admission import admit
from csm_service.edge.errors import INVALID_MESSAGE_FORMAT, UNKNOWN_VOICE, ApiError
from csm_service.edge.params import MAX_INT32, SpeakParams
from csm_service.edge.state import STATE, EdgeState
from csm_service.rpc.convert import codes_from_proto
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.voices import BUILTIN_DEFAULT, DEFAULT_VOICE, MAX_PROMPT_RATE, MIN_PROMPT_RATE, Voice

INVALID_AUDIO = "Invalid audio"
MIN_VOICE_SECONDS = 0.5
MAX_TRANSCRIPT_CHARS, MAX_NAME_CHARS, MAX_DESCRIPTION_CHARS = 2000, 100, 500
MAX_FIELD_BYTES = 16 << 10  # a text form field
ENCODE_TIMEOUT_S = 60.0
BOOLEAN_VALUES = ("true", "false", "1", "0")


def _field_error(field: str, detail: str, status: int = 422) -> ApiError:
    return ApiError(status, INVALID_MESSAGE_FORMAT, f"{field}: {detail}", field)


async def _read_form(request: web.Request, max_upload_bytes: int) -> tuple[bytes | None, dict[str, str]]:
    """The audio part and the text fields of a multipart body, each bounded."""
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, INVALID_MESSAGE_FORMAT, "send multipart/form-data with file, transcript and name (and speaker)"
        )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"malformed multipart body: {exc}") from None
    audio, fields = None, {}
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            limit = max_upload_bytes if part.name in ("file", "audio") else MAX_FIELD_BYTES
            data = bytearray()
            while chunk := await part.read_chunk(64 << 10):
                data += chunk
                if len(data) > limit:
                    raise ApiError(413, "Request too large", f"{part.name}: at most {limit} bytes")
            if part.name in ("file", "audio"):
                audio = bytes(data)
            else:
                try:
                    fields[part.name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise _field_error(part.name, "must be UTF-8 text") from None
    except ApiError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:  # the parser's complaints
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"malformed multipart body: {exc}") from None
    return audio, fields


def _text_field(fields: dict[str, str], name: str, max_chars: int, required: bool) -> str:
    value = fields.get(name, "").strip()
    if required and not value:
        raise _field_error(name, "required, non-empty")
    if len(value) > max_chars:
        raise _field_error(name, f"at most {max_chars} characters")
    return value


def _speaker_field(fields: dict[str, str]) -> int:
    raw = fields.get("speaker", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > MAX_INT32:
        raise _field_error("speaker", f"must be an integer from 0 to {MAX_INT32}, got {raw[:20]!r}")
    return int(raw)


def _prepare_audio(data: bytes | None, max_seconds: float) -> tuple[np.ndarray, int]:
    if data is None:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "file: required (the voice's reference recording)", "file")
    try:
        samples, rate = decode_audio(data)
    except BadAudio as exc:
        raise ApiError(422, INVALID_AUDIO, f"file: {exc}", "file") from None
    seconds = len(samples) / rate
    if seconds > max_seconds:
        raise ApiError(
            422, INVALID_AUDIO, f"file: {seconds:.1f} s; a voice prompt is at most {max_seconds:g} s", "file"
        )
    if seconds < MIN_VOICE_SECONDS:
        raise ApiError(422, INVALID_AUDIO, f"file: {seconds:.2f} s; at least {MIN_VOICE_SECONDS} s of speech", "file")
    if rate < MIN_PROMPT_RATE:
        raise ApiError(422, INVALID_AUDIO, f"file: {rate} Hz; at least {MIN_PROMPT_RATE} Hz", "file")
    if rate > MAX_PROMPT_RATE:
        samples, rate = soxr.resample(samples, rate, MAX_PROMPT_RATE).astype(np.float32), MAX_PROMPT_RATE
    return samples, rate


async def create_voice(request: web.Request) -> web.Response:
    state = request.app[STATE]
    admit(request)
    audio, fields = await _read_form(request, state.cfg.max_upload_bytes)
    transcript = _text_field(fields, "transcript", MAX_TRANSCRIPT_CHARS, required=True)
    name = _text_field(fields, "name", MAX_NAME_CHARS, required=True)
    description = _text_field(fields, "description", MAX_DESCRIPTION_CHARS, required=False)
    speaker = _speaker_field(fields)
    samples, rate = await asyncio.to_thread(_prepare_audio, audio, state.cfg.max_voice_seconds)
    prompt = pb.EncodePromptRequest(audio=to_pcm16(samples), sample_rate=rate, transcript=transcript, speaker=speaker)
    encoded = await state.backend.encode_prompt(prompt, ENCODE_TIMEOUT_S)
    codes = codes_from_proto(encoded.codes, "codes")
    voice = await asyncio.to_thread(
        state.voices.create, name, transcript, codes, speaker, description, len(samples) / rate * 1000
    )
    state.metrics.requests.labels("voices", "ok").inc()
    return web.json_response(voice.summary(), status=201, headers={"Location": f"/v1/voices/{voice.voice_id}"})


async def list_voices(request: web.Request) -> web.Response:
    voices = await asyncio.to_thread(request.app[STATE].voices.list)
    return web.json_response({"voices": [BUILTIN_DEFAULT, *(v.summary() for v in voices)]})


def _unknown(voice_id: str) -> ApiError:
    return ApiError(404, UNKNOWN_VOICE, f"voice_profile_id: no voice profile {voice_id[:80]!r}", "voice_profile_id")


async def get_voice(request: web.Request) -> web.Response:
    voice_id = request.match_info["voice_id"]
    include_codes = request.query.getall("include_codes", [])
    if any(v.lower() not in BOOLEAN_VALUES for v in include_codes) or len(include_codes) > 1:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "include_codes: true or false, once", "include_codes")
    if voice_id == DEFAULT_VOICE:
        return web.json_response(BUILTIN_DEFAULT)
    voice = await asyncio.to_thread(request.app[STATE].voices.get, voice_id)
    if voice is None:
        raise _unknown(voice_id)
    body = voice.summary()
    if include_codes and include_codes[0].lower() in ("1", "true"):
        body["codes"] = voice.codes.tolist()  # [32][num_frames]
    return web.json_response(body)


async def delete_voice(request: web.Request) -> web.Response:
    voice_id = request.match_info["voice_id"]
    if voice_id == DEFAULT_VOICE:
        raise ApiError(409, "Conflict", "the built-in default voice cannot be deleted", "voice_id")
    if not await asyncio.to_thread(request.app[STATE].voices.delete, voice_id):
        raise _unknown(voice_id)
    return web.Response(status=204)


def lookup_voice(state: EdgeState, voice_id: str) -> Voice | None:
    """The stored profile for ``voice_id`` (None for the built-in default); ApiError 422 if unknown."""
    if voice_id == DEFAULT_VOICE:
        return None
    voice = state.voices.get(voice_id)
    if voice is None:  # in a synthesis request the id is a field value: 422, not 404
        raise ApiError(422, UNKNOWN_VOICE, f"voice_profile_id: no voice profile {voice_id!r}", "voice_profile_id")
    return voice


def synthesis_request(
    params: SpeakParams, encoding: int, voice: Voice | None, context: list[pb.ContextSegment] | None = None
) -> pb.SynthesizeRequest:
    """The engine request: the voice's prompt first (a cached prefix), then any session context."""
    msg = params.to_proto(encoding)
    segments = []
    if voice is not None:
        segments.append(voice.context_segment())
        if params.speaker is None:
            msg.speaker = voice.speaker
    msg.context.extend(segments + list(context or ()))
    msg.prefix_segments = len(segments)
    return msg


CALLER_FORMATS = ("mulaw_8khz", "pcm16_8khz", "pcm16_24khz", "wav")


def _caller_audio(message: dict) -> tuple[np.ndarray, int] | None:
    """The optional audio of a caller turn -> (samples, rate); ApiError 422 when unreadable."""
    raw = message.get("audio_base64")
    if raw is None:
        return None
    fmt = message.get("format", "mulaw_8khz")
    if fmt not in CALLER_FORMATS:
        raise _field_error("format", f"must be one of {', '.join(CALLER_FORMATS)}, got {str(fmt)[:40]!r}")
    if not isinstance(raw, str):
        raise _field_error("audio_base64", "must be a base64 string")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _field_error("audio_base64", "is not valid base64") from None
    if not data:
        raise ApiError(422, INVALID_AUDIO, "audio_base64: empty", "audio_base64")
    if fmt == "wav":
        try:
            return decode_audio(data)
        except BadAudio as exc:
            raise ApiError(422, INVALID_AUDIO, f"audio_base64: {exc}", "audio_base64") from None
    if fmt == "mulaw_8khz":
        pcm16 = mulaw_to_pcm16(data)
    elif len(data) % 2:
        raise ApiError(422, INVALID_AUDIO, "audio_base64: PCM16 needs an even number of bytes", "audio_base64")
    else:
        pcm16 = np.frombuffer(data, dtype="<i2")
    samples = pcm16.astype(np.float32) / 32768.0
    return samples, 24_000 if fmt == "pcm16_24khz" else 8_000


async def caller_turn(state: EdgeState, message: dict) -> pb.ContextSegment:
    """``{"type": "context", "text", "speaker"?, "audio_base64"?, "format"?}`` -> a context segment:
    the caller's words (and their Mimi codes when audio is sent) for the conversation."""
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _field_error("text", "required: what the caller said")
    if len(text) > state.cfg.max_text_chars:
        raise _field_error("text", f"at most {state.cfg.max_text_chars} characters")
    speaker = message.get("speaker", 1)
    if isinstance(speaker, bool) or not isinstance(speaker, int) or not 0 <= speaker <= MAX_INT32:
        raise _field_error("speaker", f"must be an integer from 0 to {MAX_INT32}")
    audio = await asyncio.to_thread(_caller_audio, message)
    if audio is None:
        return pb.ContextSegment(speaker=speaker, text=text)
    samples, rate = audio
    seconds = len(samples) / rate
    if seconds > state.cfg.max_voice_seconds:
        raise ApiError(422, INVALID_AUDIO, f"audio_base64: {seconds:.1f} s, at most {state.cfg.max_voice_seconds:g} s")
    prompt = pb.EncodePromptRequest(audio=to_pcm16(samples), sample_rate=rate, transcript=text, speaker=speaker)
    encoded = await state.backend.encode_prompt(prompt, ENCODE_TIMEOUT_S)
    return pb.ContextSegment(speaker=speaker, text=text, codes=encoded.codes)
