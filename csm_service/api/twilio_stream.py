"""Twilio Media Streams: the JSON text frames of the WebSocket Twilio opens to us (the models, and
reading and writing them). Reference: twilio.com/docs/voice/media-streams/websocket-messages.

In, from Twilio: ``connected``, ``start`` (``streamSid``, ``callSid``, ``customParameters``,
``mediaFormat``), ``media`` (base64 mu-law 8 kHz, 20 ms per message), ``dtmf``, ``mark`` (echoed
when the audio before it has played, or was cleared), ``stop``; each event's own object is checked
when the call reads it (:func:`media_payload`, ...). Out, to Twilio: ``media``, ``mark`` and
``clear``, with :func:`frames` cutting audio into the 20 ms payloads Twilio expects.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, Field, RootModel, ValidationError

from csm_service.api import safe_json
from csm_service.api.base import OneOf, ReplyModel, RequestModel, Says, invalid
from csm_service.api.validation import api_error

INBOUND_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")
MAX_STREAM_SID_CHARS = 64
FRAME_BYTES = 160  # 20 ms of G.711 mu-law at 8 kHz
MULAW_SILENCE = 0xFF  # mu-law's code for zero: pads the last frame of an utterance
# <Parameter> names (start.customParameters) that set defaults for every utterance of the call.
CALL_DEFAULTS = ("voice", "speaker", "seed", "temperature", "top_k", "max_audio_length_ms", "raw_text")
BARGE_IN_MODES = ("dtmf", "speech")  # <Parameter name="barge_in">: either or both, comma-separated


def _section(name: str, type_error: str | None = None) -> Says:
    """A missing or non-object event object, and its field's wrong type."""
    missing = f"missing object {name!r}"
    return Says({"missing": missing, "object": missing, **({"type": type_error} if type_error else {})})


def _base64(payload: object) -> object:
    if not isinstance(payload, str):
        return payload  # the type check names it
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("payload is not valid base64") from None


class TwilioEvent(RequestModel):
    """Any message from Twilio: its ``event`` is one of INBOUND_EVENTS."""

    event: Annotated[str, OneOf(INBOUND_EVENTS)]
    streamSid: Any = None  # Twilio spells its fields so


class MediaPayload(RequestModel):
    payload: Annotated[bytes, BeforeValidator(_base64), Field(description="base64 mu-law 8 kHz, 20 ms")]


class TwilioMedia(TwilioEvent):
    event: Literal["media"]
    media: Annotated[MediaPayload, _section("media", "payload must be a base64 string")]


class DtmfKey(RequestModel):
    digit: str


class TwilioDtmf(TwilioEvent):
    event: Literal["dtmf"]
    dtmf: Annotated[DtmfKey, _section("dtmf", "digit must be a string")]


class MarkName(RequestModel):
    name: Any = Field(None, description="The name of a mark we sent (anything else is ignored)")


class TwilioMark(TwilioEvent):
    """A mark we sent, echoed once the audio before it has played (or was cleared)."""

    event: Literal["mark"]
    mark: Annotated[MarkName, _section("mark")]


class StartInfo(RequestModel):
    """What the call is: its ids and the TwiML ``<Parameter>`` elements (any values are taken)."""

    streamSid: Any = None
    callSid: Any = None
    accountSid: Any = None
    customParameters: Any = Field(None, description=f"greeting, barge_in, api_key, and {', '.join(CALL_DEFAULTS)}")
    mediaFormat: Any = None


class TwilioStart(TwilioEvent):
    event: Literal["start"]
    start: Annotated[StartInfo, _section("start")]

    def stream_sid(self) -> object:
        """The start object's streamSid, else the message's (unchecked)."""
        return self.start.streamSid or self.streamSid


class TwilioConnected(TwilioEvent):
    event: Literal["connected"]


class TwilioStop(TwilioEvent):
    event: Literal["stop"]


class TwilioInbound(RootModel[Any]):
    root: Annotated[
        TwilioConnected | TwilioStart | TwilioMedia | TwilioDtmf | TwilioMark | TwilioStop, Field(discriminator="event")
    ]


class MediaOut(ReplyModel):
    payload: str


class TwilioSendMedia(ReplyModel):
    """20 ms of mu-law 8 kHz, paced in real time a little ahead of the playhead."""

    event: Literal["media"] = "media"
    streamSid: str
    media: MediaOut


class MarkOut(ReplyModel):
    name: str


class TwilioSendMark(ReplyModel):
    """After each utterance; Twilio echoes it once played."""

    event: Literal["mark"] = "mark"
    streamSid: str
    mark: MarkOut


class TwilioSendClear(ReplyModel):
    """Barge-in: Twilio drops the audio it holds."""

    event: Literal["clear"] = "clear"
    streamSid: str


class TwilioOutbound(RootModel[Any]):
    root: Annotated[TwilioSendMedia | TwilioSendMark | TwilioSendClear, Field(discriminator="event")]


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


def typed_value(value: str) -> object:
    """A customParameters string -> int, float, bool or the string."""
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(value)
    return {"true": True, "false": False}.get(value.lower(), value)


@dataclass(frozen=True)
class CallParameters:
    """A start event's TwiML ``<Parameter>`` elements, as the call uses them."""

    custom: dict[str, str]  # every parameter, as strings
    defaults: dict[str, object]  # the CALL_DEFAULTS among them, typed: defaults for every utterance
    barge_in: tuple[str, ...]  # the BARGE_IN_MODES asked for

    @classmethod
    def of(cls, start: dict) -> CallParameters:
        """From the object :func:`start_info` returns (anything in customParameters is taken)."""
        given = start.get("customParameters") or {}
        custom = {str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {}
        modes = {m.strip() for m in custom.get("barge_in", "").split(",") if m.strip()}
        return cls(
            custom,
            {k: typed_value(v) for k, v in custom.items() if k in CALL_DEFAULTS},
            tuple(m for m in BARGE_IN_MODES if m in modes),
        )
