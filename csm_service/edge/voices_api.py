"""Voice profiles over HTTP (``/v1/voices``); a synthesis finds its own in :func:`.speech.prepare`.

``POST /v1/voices`` takes multipart form data: ``file`` (WAV, FLAC, OGG or MP3 at any rate),
``transcript`` (what it says), ``name``, and optionally ``speaker`` and ``description``
(:class:`~csm_service.api.voices.VoiceUpload`). The edge
decodes the file, the engine encodes it to Mimi codes (gRPC ``EncodePrompt``), and the profile
is stored in SQLite. A synthesis with ``voice_profile_id`` sends the profile as its first context
segment, marked as a stable prefix, so the engine computes its KV once and reuses it.
"""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from csm_service.api.errors import ApiError, audio_error, field_error
from csm_service.api.validation import validate
from csm_service.api.voices import VoiceUpload, decode_cursor, encode_cursor, page_size
from csm_service.audio.decode import MIN_VOICE_SECONDS, AudioLimits, BadAudio, prompt_audio
from csm_service.core.constants import DEFAULT_VOICE
from csm_service.core.errors import INVALID_MESSAGE_FORMAT, UNKNOWN_VOICE
from csm_service.edge.access import admit, request_principal
from csm_service.edge.speech import encode_prompt
from csm_service.edge.state import STATE, EdgeState
from csm_service.voices import BUILTIN_DEFAULT, VoiceLimitReached

MAX_FIELD_BYTES = 16 << 10  # a text form field (the audio: ServiceConfig.max_upload_bytes)
AUDIO_PARTS = ("file", "audio")  # the recording's part; "audio" is an alias
VOICE_LIMIT = "Voice limit reached"
BOOLEAN_VALUES = ("true", "false", "1", "0")


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
                raise field_error(name[:40], "sent more than once")
            data = await _read_part(part, name, max_upload_bytes if name == "file" else MAX_FIELD_BYTES)
            if name == "file":
                audio = data
            else:
                try:
                    fields[name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise field_error(name[:40], "must be UTF-8 text") from None
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


def _prepare_audio(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """The upload's samples, checked by its header first and decoded within ``limits`` (never whole)."""
    try:
        return prompt_audio(data, limits)
    except BadAudio as exc:
        raise audio_error("file", exc) from None


async def create_voice(request: web.Request) -> web.Response:
    state = request.app[STATE]
    admit(request)
    owner = request_principal(request).tenant  # keys off: None, a shared profile
    await _check_room(state, owner)  # before the upload is read and encoded: a full tenant costs little
    audio, fields = await _read_form(request, state.cfg.max_upload_bytes, state.cfg.max_form_parts)
    form = validate(VoiceUpload, {**fields, "file": audio})  # the text fields in order, then the audio
    transcript, name, description, speaker = form.transcript, form.name, form.description, form.speaker
    limits = AudioLimits.from_config(state.cfg, min_seconds=MIN_VOICE_SECONDS)
    segment, duration_ms = await encode_prompt(state.backend, transcript, speaker, _prepare_audio, form.file, limits)
    try:  # the count is checked again in the insert's transaction: concurrent uploads cannot pass it
        voice = await asyncio.to_thread(
            state.voices.create, name, transcript, segment.codes, speaker, description, duration_ms, owner, _room(state)
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


async def list_voices(request: web.Request) -> web.Response:
    """One page of the profiles the caller may see, oldest first: ``limit`` (default DEFAULT_PAGE,
    at most MAX_PAGE) and ``cursor`` (the previous page's ``next_cursor``; null on the last page).
    The first page starts with the built-in default, so a client that reads one page sees what it
    always saw while a tenant has no more than DEFAULT_PAGE profiles."""
    limit, after = page_size(request.query.getall("limit", [])), decode_cursor(request.query.getall("cursor", []))
    scope = request_principal(request).voice_scope
    voices = await asyncio.to_thread(request.app[STATE].voices.page, scope, limit + 1, after)
    more, voices = len(voices) > limit, voices[:limit]
    first = [BUILTIN_DEFAULT] if after is None else []
    return web.json_response(
        {
            "voices": [*first, *(v.summary() for v in voices)],
            "next_cursor": encode_cursor(voices[-1].created_at, voices[-1].voice_id) if more else None,
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
