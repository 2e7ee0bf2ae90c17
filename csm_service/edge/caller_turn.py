"""A caller's turn of the conversation (the WebSocket ``context`` message): what the caller said,
and optionally its audio, which the engine encodes to Mimi codes so the next utterance hears it.

The audio is bounded before it is decoded: raw mu-law or PCM16 by its byte length, a WAV file by
its header (nothing but WAV is taken here), and either by ``max_voice_seconds``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses

import numpy as np

from csm_service.api.errors import audio_error, field_error
from csm_service.api.validation import validate
from csm_service.api.websocket import ws_context
from csm_service.audio.decode import AudioLimits, BadAudio, UnacceptedFormat, prompt_audio, raw_audio
from csm_service.core.request import Segment
from csm_service.edge.speech import encode_prompt
from csm_service.edge.state import EdgeState


def _caller_audio(raw: str, fmt: str, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """A caller turn's audio (base64, in ``fmt``) -> (samples, rate); ApiError 422 when unreadable,
    not what ``fmt`` declares, or longer than ``limits`` allow."""
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise field_error("audio_base64", "is not valid base64") from None
    if not data:
        raise audio_error("audio_base64", "empty")
    try:  # "wav" takes a WAV file and nothing else (a FLAC here was a decompression bomb)
        if fmt == "wav":
            return prompt_audio(data, dataclasses.replace(limits, formats=("WAV",)))
        return raw_audio(data, fmt, limits)  # bounded by its byte length before it is converted
    except UnacceptedFormat as exc:
        fix = "; send a WAV file" if fmt == "wav" else " (declare 'wav')"
        raise field_error("format", f"{fmt!r} declared, but audio_base64 holds a {exc.container} file{fix}") from None
    except BadAudio as exc:
        raise audio_error("audio_base64", exc) from None


async def caller_turn(state: EdgeState, message: dict) -> Segment:
    """``{"type": "context", "text", "speaker"?, "audio_base64"?, "format"?}`` (checked by
    :class:`~csm_service.api.websocket.WsContext`) -> a context segment: the caller's words
    (and their Mimi codes when audio is sent) for the conversation."""
    turn = validate(ws_context(state.cfg.max_text_chars), message)
    text, speaker = turn.text, turn.speaker
    if turn.audio_base64 is None:
        return Segment(speaker, text)
    limits = AudioLimits.from_config(state.cfg)
    segment, _ = await encode_prompt(
        state.backend, text, speaker, _caller_audio, turn.audio_base64, turn.format, limits
    )
    return segment
