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
import dataclasses
import re

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from csm_service.audio.decode import (
    MIN_VOICE_SECONDS,
    AudioLimits,
    BadAudio,
    UnacceptedFormat,
    prompt_audio,
    to_pcm16,
)
from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.edge.admission import admit, request_principal
from csm_service.edge.errors import INVALID_MESSAGE_FORMAT, UNKNOWN_VOICE, ApiError
from csm_service.edge.params import MAX_INT32, SpeakParams
from csm_service.edge.state import STATE, EdgeState
from csm_service.rpc.convert import codes_from_proto
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.tenants import Principal
from csm_service.voices import BUILTIN_DEFAULT, DEFAULT_VOICE, Voice, VoiceLimitReached

INVALID_AUDIO = "Invalid audio"
MAX_TRANSCRIPT_CHARS, MAX_NAME_CHARS, MAX_DESCRIPTION_CHARS = 2000, 100, 500
MAX_FIELD_BYTES = 16 << 10  # a text form field (the audio: ServiceConfig.max_upload_bytes)
AUDIO_PARTS = ("file", "audio")  # the recording's part; "audio" is an alias
ENCODE_TIMEOUT_S = 60.0
VOICE_LIMIT = "Voice limit reached"
DEFAULT_PAGE, MAX_PAGE = 100, 500  # GET /v1/voices: profiles per page (the default fits max_voices_per_tenant)
CURSOR = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?-[A-Za-z0-9_]{1,64}")  # created_at-voice_id, ASCII only
BOOLEAN_VALUES = ("true", "false", "1", "0")


def _field_error(field: str, detail: str, status: int = 422) -> ApiError:
    return ApiError(status, INVALID_MESSAGE_FORMAT, f"{field}: {detail}", field)


async def _read_form(
    request: web.Request, max_upload_bytes: int, max_parts: int
) -> tuple[bytes | None, dict[str, str]]:
    """The audio part and the text fields of a multipart body: at most ``max_parts`` parts, each
    name once, the audio up to ``max_upload_bytes`` and a text field up to MAX_FIELD_BYTES. Past a
    bound the answer is 413 (422 for a repeated field) at once, and nothing more is read."""
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, INVALID_MESSAGE_FORMAT, "send multipart/form-data with file, transcript and name (and speaker)"
        )
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"malformed multipart body: {exc}") from None
    audio, fields, parts = None, {}, 0
    try:
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > max_parts:
                raise ApiError(413, "Request too large", f"a voice upload has at most {max_parts} parts")
            if not isinstance(part, BodyPartReader):  # releasing a nested multipart would read it all
                raise ApiError(400, INVALID_MESSAGE_FORMAT, "nested multipart bodies are not accepted")
            if part.name is None:
                continue
            name = "file" if part.name in AUDIO_PARTS else part.name
            if name in fields or (name == "file" and audio is not None):
                raise _field_error(name[:40], "sent more than once")
            data = await _read_part(part, name, max_upload_bytes if name == "file" else MAX_FIELD_BYTES)
            if name == "file":
                audio = data
            else:
                try:
                    fields[name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise _field_error(name[:40], "must be UTF-8 text") from None
    except ApiError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:  # the parser's complaints
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"malformed multipart body: {exc}") from None
    return audio, fields


async def _read_part(part: BodyPartReader, name: str, limit: int) -> bytes:
    """One part's bytes; 413 as soon as it passes ``limit``."""
    data = bytearray()
    while chunk := await part.read_chunk(64 << 10):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "Request too large", f"{name[:40]}: at most {limit} bytes")
    return bytes(data)


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


def _audio_error(field: str, exc: BadAudio) -> ApiError:
    return ApiError(422, INVALID_AUDIO, f"{field}: {exc}", field)


def _prepare_audio(data: bytes | None, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """The upload's samples, checked by its header first and decoded within ``limits`` (never whole)."""
    if data is None:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "file: required (the voice's reference recording)", "file")
    try:
        return prompt_audio(data, limits)
    except BadAudio as exc:
        raise _audio_error("file", exc) from None


async def create_voice(request: web.Request) -> web.Response:
    state = request.app[STATE]
    admit(request)
    owner = request_principal(request).tenant  # keys off: None, a shared profile
    await _check_room(state, owner)  # before the upload is read and encoded: a full tenant costs little
    audio, fields = await _read_form(request, state.cfg.max_upload_bytes, state.cfg.max_form_parts)
    transcript = _text_field(fields, "transcript", MAX_TRANSCRIPT_CHARS, required=True)
    name = _text_field(fields, "name", MAX_NAME_CHARS, required=True)
    description = _text_field(fields, "description", MAX_DESCRIPTION_CHARS, required=False)
    speaker = _speaker_field(fields)
    limits = AudioLimits.from_config(state.cfg, min_seconds=MIN_VOICE_SECONDS)
    samples, rate = await asyncio.to_thread(_prepare_audio, audio, limits)
    prompt = pb.EncodePromptRequest(audio=to_pcm16(samples), sample_rate=rate, transcript=transcript, speaker=speaker)
    encoded = await state.backend.encode_prompt(prompt, ENCODE_TIMEOUT_S)
    codes = codes_from_proto(encoded.codes, "codes")
    duration_ms = len(samples) / rate * 1000
    try:  # the count is checked again in the insert's transaction: concurrent uploads cannot pass it
        voice = await asyncio.to_thread(
            state.voices.create, name, transcript, codes, speaker, description, duration_ms, owner, _room(state)
        )
    except VoiceLimitReached:
        raise _limit_reached(state) from None
    state.metrics.requests.labels("voices", "ok").inc()
    return web.json_response(voice.summary(), status=201, headers={"Location": f"/v1/voices/{voice.voice_id}"})


def _room(state: EdgeState) -> int:
    return state.cfg.max_voices_per_tenant


def _limit_reached(state: EdgeState) -> ApiError:
    return ApiError(
        409,
        VOICE_LIMIT,
        f"at most {_room(state)} voice profiles per tenant; delete one (DELETE /v1/voices/{{id}}) first",
        outcome="rejected",
    )


async def _check_room(state: EdgeState, owner: str | None) -> None:
    if _room(state) and await asyncio.to_thread(state.voices.count, owner) >= _room(state):
        raise _limit_reached(state)


def _page_size(request: web.Request) -> int:
    raw = request.query.getall("limit", [])
    if not raw:
        return DEFAULT_PAGE
    if len(raw) > 1 or not raw[0].isascii() or not raw[0].isdigit() or not 1 <= int(raw[0]) <= MAX_PAGE:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"limit: an integer from 1 to {MAX_PAGE}, once", "limit")
    return int(raw[0])


def _encode_cursor(voice: Voice) -> str:
    """Where the next page starts: after this profile's ``(created_at, voice_id)``. Clients treat it
    as opaque; any string of CURSOR's form is a valid place to start (keyset pagination)."""
    created = repr(voice.created_at)
    return f"{created if 'e' not in created else f'{voice.created_at:.6f}'}-{voice.voice_id}"


def _decode_cursor(request: web.Request) -> tuple[float, str] | None:
    """``cursor``: the ``next_cursor`` of the previous page."""
    raw = request.query.getall("cursor", [])
    if not raw:
        return None
    if len(raw) > 1 or not CURSOR.fullmatch(raw[0]):
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "cursor: pass the next_cursor of the previous page", "cursor")
    created_at, voice_id = raw[0].split("-", 1)
    return float(created_at), voice_id


async def list_voices(request: web.Request) -> web.Response:
    """One page of the profiles the caller may see, oldest first: ``limit`` (default DEFAULT_PAGE,
    at most MAX_PAGE) and ``cursor`` (the previous page's ``next_cursor``; null on the last page).
    The first page starts with the built-in default, so a client that reads one page sees what it
    always saw while a tenant has no more than DEFAULT_PAGE profiles."""
    limit, after = _page_size(request), _decode_cursor(request)
    scope = request_principal(request).voice_scope
    voices = await asyncio.to_thread(request.app[STATE].voices.page, scope, limit + 1, after)
    more, voices = len(voices) > limit, voices[:limit]
    first = [BUILTIN_DEFAULT] if after is None else []
    return web.json_response(
        {
            "voices": [*first, *(v.summary() for v in voices)],
            "next_cursor": _encode_cursor(voices[-1]) if more else None,
        }
    )


def _unknown(voice_id: str) -> ApiError:
    return ApiError(404, UNKNOWN_VOICE, f"voice_profile_id: no voice profile {voice_id[:80]!r}", "voice_profile_id")


async def get_voice(request: web.Request) -> web.Response:
    voice_id = request.match_info["voice_id"]
    include_codes = request.query.getall("include_codes", [])
    if any(v.lower() not in BOOLEAN_VALUES for v in include_codes) or len(include_codes) > 1:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "include_codes: true or false, once", "include_codes")
    if voice_id == DEFAULT_VOICE:
        return web.json_response(BUILTIN_DEFAULT)
    scope = request_principal(request).voice_scope  # another tenant's profile is a 404, as if it did not exist
    voice = await asyncio.to_thread(request.app[STATE].voices.get, voice_id, scope)
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
    store, scope = request.app[STATE].voices, request_principal(request).voice_scope
    if not await asyncio.to_thread(store.delete, voice_id, scope):
        if scope is not None and await asyncio.to_thread(store.get, voice_id, scope) is not None:
            raise ApiError(
                403, "Forbidden", "a shared voice profile (no owner) is deleted with an admin key", "voice_id"
            )
        raise _unknown(voice_id)  # another tenant's profile too: ids cannot be probed
    return web.Response(status=204)


def lookup_voice(state: EdgeState, voice_id: str, principal: Principal) -> Voice | None:
    """The stored profile for ``voice_id`` (None for the built-in default) if ``principal`` may use
    it; ApiError 422 if unknown, and the same for another tenant's profile."""
    if voice_id == DEFAULT_VOICE:
        return None
    voice = state.voices.get(voice_id, principal.voice_scope)
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
RAW_CALLER_FORMATS = {"mulaw_8khz": (8_000, 1), "pcm16_8khz": (8_000, 2), "pcm16_24khz": (24_000, 2)}  # rate, width
CONTAINER_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "RF64", b"fLaC": "FLAC", b"OggS": "OGG", b"ID3": "MP3"}


def _caller_audio(message: dict, limits: AudioLimits) -> tuple[np.ndarray, int] | None:
    """The optional audio of a caller turn -> (samples, rate); ApiError 422 when unreadable, not what
    ``format`` declares, or longer than ``limits`` allow."""
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
    return _caller_wav(data, limits) if fmt == "wav" else _caller_raw(data, fmt, limits)


def _caller_wav(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """``"format": "wav"`` takes a WAV file and nothing else (a FLAC here was a decompression bomb)."""
    try:
        return prompt_audio(data, dataclasses.replace(limits, formats=("WAV",)))
    except UnacceptedFormat as exc:
        detail = f"'wav' declared, but audio_base64 holds a {exc.container} file; send a WAV file"
        raise _field_error("format", detail) from None
    except BadAudio as exc:
        raise _audio_error("audio_base64", exc) from None


def _caller_raw(data: bytes, fmt: str, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Raw mu-law or PCM16, bounded by its byte length before it is converted."""
    rate, width = RAW_CALLER_FORMATS[fmt]
    container = next((name for magic, name in CONTAINER_MAGIC.items() if data.startswith(magic)), None)
    if container is not None:
        raise _field_error("format", f"{fmt!r} declared, but audio_base64 holds a {container} file (declare 'wav')")
    if len(data) > limits.max_frames(rate) * width:
        seconds = len(data) / width / rate
        detail = f"audio_base64: {seconds:.1f} s of {fmt}; at most {limits.max_seconds:g} s"
        raise ApiError(422, INVALID_AUDIO, detail, "audio_base64")
    if width == 2 and len(data) % 2:
        raise ApiError(422, INVALID_AUDIO, "audio_base64: PCM16 needs an even number of bytes", "audio_base64")
    pcm16 = mulaw_to_pcm16(data) if width == 1 else np.frombuffer(data, dtype="<i2")
    return pcm16.astype(np.float32) / 32768.0, rate


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
    audio = await asyncio.to_thread(_caller_audio, message, AudioLimits.from_config(state.cfg))
    if audio is None:
        return pb.ContextSegment(speaker=speaker, text=text)
    samples, rate = audio
    prompt = pb.EncodePromptRequest(audio=to_pcm16(samples), sample_rate=rate, transcript=text, speaker=speaker)
    encoded = await state.backend.encode_prompt(prompt, ENCODE_TIMEOUT_S)
    return pb.ContextSegment(speaker=speaker, text=text, codes=encoded.codes)
