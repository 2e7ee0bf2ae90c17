"""Twilio Media Streams messages (JSON text frames).

In, from Twilio: ``connected``, ``start`` (``streamSid``, ``callSid``, ``customParameters``,
``mediaFormat``), ``media`` (base64 mu-law 8 kHz, 20 ms per message), ``dtmf``, ``mark`` (echoed
when the audio before it has played, or was cleared), ``stop``. Out, to Twilio: ``media``,
``mark`` and ``clear``. Reference: twilio.com/docs/voice/media-streams/websocket-messages.
The messages are :mod:`csm_service.api.twilio`'s models.
"""

from __future__ import annotations

import base64
from typing import TypeVar

from pydantic import ValidationError

from csm_service.api.twilio import (
    INBOUND_EVENTS,
    MAX_STREAM_SID_CHARS,
    MarkOut,
    MediaOut,
    TwilioDtmf,
    TwilioEvent,
    TwilioMark,
    TwilioMedia,
    TwilioSendClear,
    TwilioSendMark,
    TwilioSendMedia,
    TwilioStart,
)
from csm_service.api.validation import api_error
from csm_service.edge import safe_json

FRAME_BYTES = 160  # 20 ms of G.711 mu-law at 8 kHz
MULAW_SILENCE = 0xFF  # mu-law's code for zero: pads the last frame of an utterance
E = TypeVar("E", bound=TwilioEvent)


class ProtocolError(ValueError):
    """A message that is not what Twilio sends; logged and counted, never fatal to the call."""


def media_message(stream_sid: str, frame: bytes) -> str:
    media = MediaOut(payload=base64.b64encode(frame).decode())
    return TwilioSendMedia(streamSid=stream_sid, media=media).model_dump_json()


def mark_message(stream_sid: str, name: str) -> str:
    return TwilioSendMark(streamSid=stream_sid, mark=MarkOut(name=name)).model_dump_json()


def clear_message(stream_sid: str) -> str:
    return TwilioSendClear(streamSid=stream_sid).model_dump_json()


def parse_event(data: str, max_depth: int = safe_json.DEFAULT_MAX_DEPTH) -> dict:
    """A text frame -> its JSON object with a known ``event`` (so ``event`` is a bounded metrics
    label); ProtocolError otherwise, never anything else (a nested frame must not end the call).
    The event's own object is checked when it is read (:func:`media_payload`, ...)."""
    try:
        message = safe_json.loads(data, max_depth)
    except safe_json.JsonError as exc:
        raise ProtocolError(str(exc)) from None
    try:
        TwilioEvent.model_validate(message)
    except ValidationError:
        event = message.get("event") if isinstance(message, dict) else None
        raise ProtocolError(f"unknown event {str(event)[:40]!r}; expected one of {', '.join(INBOUND_EVENTS)}") from None
    return message  # type: ignore[return-value]  # an object: the model took it


def _event(model: type[E], message: dict) -> E:
    """``message`` as the event ``model``; ProtocolError naming what is wrong with its object."""
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        raise ProtocolError(api_error(exc, model).detail) from None


def dtmf_digit(message: dict) -> str:
    """The key of a ``dtmf`` event (one character), or ProtocolError."""
    return _event(TwilioDtmf, message).dtmf.digit[:1]


def media_payload(message: dict) -> bytes:
    """The mu-law bytes of a ``media`` event, or ProtocolError."""
    return _event(TwilioMedia, message).media.payload


def mark_name(message: dict) -> object:
    """The name a ``mark`` event echoes (anything: a name we never sent is ignored), or ProtocolError."""
    return _event(TwilioMark, message).mark.name


def start_info(message: dict) -> dict:
    """A ``start`` event's object, its ``streamSid`` (or the message's) checked; ProtocolError otherwise."""
    sid = _event(TwilioStart, message).stream_sid()
    if not isinstance(sid, str) or not 1 <= len(sid) <= MAX_STREAM_SID_CHARS:
        raise ProtocolError(f"start: streamSid must be a string of 1 to {MAX_STREAM_SID_CHARS}")
    return {**message["start"], "streamSid": sid}


def frames(audio: bytes, pad_last: bool) -> tuple[list[bytes], bytes]:
    """Cut mu-law bytes into 20 ms frames -> (frames, remainder); ``pad_last`` pads the remainder
    with silence into a last frame instead of returning it."""
    whole = len(audio) - len(audio) % FRAME_BYTES
    out = [audio[i : i + FRAME_BYTES] for i in range(0, whole, FRAME_BYTES)]
    rest = audio[whole:]
    if pad_last and rest:
        out.append(rest + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(rest)))
        rest = b""
    return out, rest
