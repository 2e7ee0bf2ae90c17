"""Twilio: the call control API's bodies (``/v1/calls``) and the media stream route's description.
The Media Streams messages themselves are :mod:`.twilio_stream`'s.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, create_model

from csm_service.api.base import NonBlank, ReplyModel, RequestModel, Says, copy_fields
from csm_service.api.speak import synthesize_request
from csm_service.api.twilio_stream import CALL_DEFAULTS
from csm_service.core.constants import DEFAULT_VOICE, ENGINE_MAX_AUDIO_MS


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


class BargeIn(ReplyModel):
    trigger: str = Field(description="interrupt, clear, dtmf or speech")
    inbound_frame: int = Field(description="inbound media frames the call had received when it happened")


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
    last_barge_in: BargeIn | None = Field(description="the most recent barge-in, if any")
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
