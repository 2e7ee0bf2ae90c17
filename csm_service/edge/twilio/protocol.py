"""Twilio Media Streams messages (JSON text frames).

In, from Twilio: ``connected``, ``start`` (``streamSid``, ``callSid``, ``customParameters``,
``mediaFormat``), ``media`` (base64 mu-law 8 kHz, 20 ms per message), ``dtmf``, ``mark`` (echoed
when the audio before it has played, or was cleared), ``stop``. Out, to Twilio: ``media``,
``mark`` and ``clear``. Reference: twilio.com/docs/voice/media-streams/websocket-messages.
"""

from __future__ import annotations

import base64
import binascii
import json

from csm_service.edge import safe_json

FRAME_BYTES = 160  # 20 ms of G.711 mu-law at 8 kHz
MULAW_SILENCE = 0xFF  # mu-law's code for zero: pads the last frame of an utterance
INBOUND_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")
MAX_MARK_CHARS = 128


class ProtocolError(ValueError):
    """A message that is not what Twilio sends; logged and counted, never fatal to the call."""


def _dump(message: dict[str, object]) -> str:
    return json.dumps(message, separators=(",", ":"))


def media_message(stream_sid: str, frame: bytes) -> str:
    return _dump({"event": "media", "streamSid": stream_sid, "media": {"payload": base64.b64encode(frame).decode()}})


def mark_message(stream_sid: str, name: str) -> str:
    return _dump({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return _dump({"event": "clear", "streamSid": stream_sid})


def parse_event(data: str, max_depth: int = safe_json.DEFAULT_MAX_DEPTH) -> dict:
    """A text frame -> its JSON object with a known ``event`` (so ``event`` is a bounded metrics
    label); ProtocolError otherwise, never anything else (a nested frame must not end the call)."""
    try:
        message = safe_json.loads(data, max_depth)
    except safe_json.JsonError as exc:
        raise ProtocolError(str(exc)) from None
    if not isinstance(message, dict) or message.get("event") not in INBOUND_EVENTS:
        event = message.get("event") if isinstance(message, dict) else None
        raise ProtocolError(f"unknown event {str(event)[:40]!r}; expected one of {', '.join(INBOUND_EVENTS)}")
    return message


def section(message: dict, name: str) -> dict:
    """The event's own object (``start``, ``media``, ``dtmf``, ``mark``): a dict, or ProtocolError."""
    value = message.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"{message['event']}: missing object {name!r}")
    return value


def dtmf_digit(message: dict) -> str:
    """The key of a ``dtmf`` event (one character), or ProtocolError."""
    digit = section(message, "dtmf").get("digit")
    if not isinstance(digit, str):
        raise ProtocolError("dtmf: digit must be a string")
    return digit[:1]


def media_payload(message: dict) -> bytes:
    payload = section(message, "media").get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("media: payload must be a base64 string")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media: payload is not valid base64") from None


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
