"""A caller's turn of the conversation (the WebSocket ``context`` message): what the caller said,
and optionally its audio, which the engine encodes to Mimi codes so the next utterance hears it.

The audio is bounded before it is decoded: raw mu-law or PCM16 by its byte length, a WAV file by
its header (nothing but WAV is taken here), and either by ``max_voice_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses

import numpy as np

from csm_service.api.errors import ApiError
from csm_service.api.validation import validate
from csm_service.api.websocket import ws_context
from csm_service.audio.decode import AudioLimits, BadAudio, UnacceptedFormat, prompt_audio, to_pcm16
from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.core.request import Segment
from csm_service.core.service import PromptAudio
from csm_service.edge.speech import encode_prompt
from csm_service.edge.state import EdgeState
from csm_service.edge.voices_api import INVALID_AUDIO, _audio_error, _field_error

RAW_CALLER_FORMATS = {"mulaw_8khz": (8_000, 1), "pcm16_8khz": (8_000, 2), "pcm16_24khz": (24_000, 2)}  # rate, width
CONTAINER_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "RF64", b"fLaC": "FLAC", b"OggS": "OGG", b"ID3": "MP3"}


def _caller_audio(raw: str, fmt: str, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """A caller turn's audio (base64, in ``fmt``) -> (samples, rate); ApiError 422 when unreadable,
    not what ``fmt`` declares, or longer than ``limits`` allow."""
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


async def caller_turn(state: EdgeState, message: dict) -> Segment:
    """``{"type": "context", "text", "speaker"?, "audio_base64"?, "format"?}`` (checked by
    :class:`~csm_service.api.websocket.WsContext`) -> a context segment: the caller's words
    (and their Mimi codes when audio is sent) for the conversation."""
    turn = validate(ws_context(state.cfg.max_text_chars), message)
    text, speaker = turn.text, turn.speaker
    if turn.audio_base64 is None:
        return Segment(speaker, text)
    limits = AudioLimits.from_config(state.cfg)
    samples, rate = await asyncio.to_thread(_caller_audio, turn.audio_base64, turn.format, limits)
    encoded = await encode_prompt(state.backend, PromptAudio(to_pcm16(samples), rate, text, speaker))
    return encoded.segment
