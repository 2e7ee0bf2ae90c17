"""Twilio: the TwilioMedia Streams messages (twilio.com/docs/voice/media-streams/websocket-messages)
and the call control API's bodies (``/v1/calls``).

In, from Twilio: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; each event's
own object is checked when the call reads it (:mod:`csm_service.edge.twilio.protocol`). Out:
``media``, ``mark`` and ``clear``.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, RootModel, create_model

from csm_service.api.base import NonBlank, OneOf, ReplyModel, RequestModel, Says, copy_fields, invalid
from csm_service.api.speak import synthesize_request
from csm_service.core.constants import DEFAULT_VOICE, ENGINE_MAX_AUDIO_MS

INBOUND_EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")
MAX_STREAM_SID_CHARS = 64
# <Parameter> names (start.customParameters) that set defaults for every utterance of the call.
CALL_DEFAULTS = ("voice", "speaker", "seed", "temperature", "top_k", "max_audio_length_ms", "raw_text")


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


class SayControl(RequestModel):
    """``POST /v1/calls/{stream_sid}/say`` beyond the native fields (checked as a native request,
    the call's defaults first); ``interrupt: null`` is an error."""

    null_is_a_value = ("interrupt",)

    interrupt: Annotated[bool, Says({"type": "must be true or false"})] = Field(
        False, description="Barge in: cut what is playing"
    )


@lru_cache(maxsize=32)
def say_request(max_text_chars: int | None, max_audio_ms: int = ENGINE_MAX_AUDIO_MS) -> type[SayControl]:
    """The say body as documented, with this server's bounds."""
    text = Annotated[str, Field(max_length=max_text_chars, description="What to say on the call"), NonBlank()]
    voice = Field(None, description="voice id", json_schema_extra={"enum": [DEFAULT_VOICE, None]})
    return create_model(
        "SayRequest",
        __base__=SayControl,
        __module__=__name__,
        text=(text, ...),
        voice=(str | None, voice),
        **copy_fields(synthesize_request(max_text_chars, max_audio_ms), CALL_DEFAULTS),
    )


class CallRef(ReplyModel):
    stream_sid: str
    call_sid: str


class CallList(ReplyModel):
    calls: list[CallRef]


class UtteranceState(ReplyModel):
    utterance_id: str
    text: str
    voice_profile_id: str
    status: str = Field(description="queued, speaking, sent, played, interrupted, cleared or failed")
    error: str | None
    frames_sent: int
    duration_ms: int
    heard_ms: int | None
    seed: int | None
    time_to_first_frame_ms: float | None


class Call(ReplyModel):
    """A call connected to this edge: its parameters, DTMF, and every utterance's state."""

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    barge_in: list[str]
    started_at: float
    speaking: bool
    queued: int
    dtmf: str
    inbound_frames: int
    marks_received: int
    protocol_errors: int
    utterances: list[UtteranceState]


class SayAccepted(ReplyModel):
    utterance_id: str
    status: str
    ahead: int = Field(description="Utterances queued or speaking before it")


class Cleared(ReplyModel):
    cleared: list[str] = Field(description="The utterances cut short")


# The media stream route's description in /openapi.json.
CALL_DOC = f"""Twilio connects here from <Connect><Stream url="wss://HOST/v1/twilio/media-stream">.
Twilio's messages in (schema TwilioInbound): connected, start (streamSid, customParameters), media, mark,
dtmf, stop. Out (TwilioOutbound): media (20 ms of mu-law 8 kHz each, paced in real time a little ahead of
the playhead), a mark after each utterance (echoed once played), clear on barge-in.
<Parameter> names: greeting (said at once), {", ".join(CALL_DEFAULTS)} (defaults for the call),
barge_in ("dtmf", "speech" or both), and api_key when the server has API keys (Twilio sends no
Authorization header)."""
