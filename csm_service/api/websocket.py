"""The native WebSocket's messages (``/v1/native/ws/{session_id}``, JSON text frames).

Client: ``synthesize`` (the native request, :mod:`.speak`), ``context`` (a caller turn), ``ping``,
``close``, ``cancel``, ``auth``. Server: ``audio``, ``done``, ``pong``, ``authenticated``,
``cancelled``, ``context_added``, ``error``. /openapi.json lists both unions
(``WsClientMessage``, ``WsServerMessage``) and the route's description is written from them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, RootModel, ValidationError, create_model, model_validator

from csm_service.api.base import NonBlank, OneOf, ReplyModel, RequestModel, Says, message_forms, optional
from csm_service.api.speak import ContextMode, Stream, SynthesizeRequest
from csm_service.core.constants import MAX_SPEAKER

WS_FORMAT = "mulaw_8khz"  # the seed: always G.711 mu-law at 8 kHz on the WebSocket
CALLER_FORMATS = ("mulaw_8khz", "pcm16_8khz", "pcm16_24khz", "wav")
CALLER_TEXT = "required: what the caller said"


class WsSynthesize(SynthesizeRequest):
    """Synthesize: replies come in the order the requests were sent."""

    type: Literal["synthesize"]
    stream: Stream = False
    context: ContextMode | None = "none"


def CallerText(max_chars: int | None) -> Any:  # a type, spelled as one
    says = Says(
        {
            "missing": CALLER_TEXT,
            "type": CALLER_TEXT,
            "blank": CALLER_TEXT,
            "too_long": "at most {max_length} characters",
        }
    )
    return Annotated[str, Field(max_length=max_chars, description="What the caller said"), NonBlank(False), says]


class WsContext(RequestModel):
    """A caller turn for the session's conversation (answered by ``context_added``); ``format``
    matters only with ``audio_base64``. Null ``speaker`` or ``format`` is an error."""

    null_is_a_value = ("speaker", "format")

    type: Literal["context"] = "context"
    text: CallerText(None)
    speaker: Annotated[
        int, Field(ge=0, le=MAX_SPEAKER), Says({"*": "must be an integer from {minimum} to {maximum}"})
    ] = 1
    format: Annotated[str, OneOf(CALLER_FORMATS), Says({"*": "must be one of {choices}, got {short!r}"})] = WS_FORMAT
    audio_base64: Annotated[str | None, Says({"type": "must be a base64 string"})] = Field(
        None, description="The caller's audio in ``format`` (a WAV file for wav)"
    )

    @model_validator(mode="before")
    @classmethod
    def _format_only_with_audio(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("audio_base64") is None and "format" in data:
            return {k: v for k, v in data.items() if k != "format"}
        return data


@lru_cache(maxsize=32)
def ws_context(max_text_chars: int | None) -> type[WsContext]:
    """:class:`WsContext` with this server's ``--max-text-chars``."""
    return create_model("WsContext", __base__=WsContext, __module__=__name__, text=(CallerText(max_text_chars), ...))


class WsCancel(RequestModel):
    """Cancel every unfinished request, or the one with ``request_id`` (answered by ``cancelled``)."""

    type: Literal["cancel"]
    request_id: Annotated[str | None, Says({"type": "must be a string"})] = None


class WsAuth(RequestModel):
    """With API keys on and none sent at the upgrade: the first message (else the socket closes, 1008)."""

    type: Literal["auth"]
    api_key: str

    @classmethod
    def key_of(cls, message: dict | None) -> str | None:
        """The key an auth message carries, or None (no message, or no key in it)."""
        try:
            return cls.model_validate(message).api_key if message is not None else None
        except ValidationError:
            return None


class WsPing(RequestModel):
    type: Literal["ping"]


class WsClose(RequestModel):
    type: Literal["close"]


class WsClientMessage(RootModel[Any]):
    root: Annotated[WsSynthesize | WsContext | WsPing | WsClose | WsCancel | WsAuth, Field(discriminator="type")]


class WsAudio(ReplyModel):
    """The whole utterance; with ``"stream": true`` one per chunk (then ``done``)."""

    type: Literal["audio"]
    audio_base64: str = Field(description="G.711 mu-law, 8000 Hz, mono, no header (Twilio-ready)")
    duration_ms: int
    generation_time_ms: int
    format: Literal["mulaw_8khz"]
    request_id: str = optional(description="With stream, or when the request named one")
    chunk_index: int = optional(description="With stream")
    final: bool = optional(description="With stream")


class WsDone(ReplyModel):
    """After the last chunk of a streamed request (more timing fields may follow)."""

    type: Literal["done"]
    request_id: str
    chunks: int
    duration_ms: int
    time_to_first_audio_ms: int | None
    generation_time_ms: int
    real_time_factor: float | None
    finish_reason: str
    seed: int
    seed_str: str = optional(description="The seed as a decimal string (JavaScript's numbers stop at 2**53)")


class WsPong(ReplyModel):
    type: Literal["pong"]


class WsAuthenticated(ReplyModel):
    type: Literal["authenticated"]


class WsCancelled(ReplyModel):
    type: Literal["cancelled"]
    request_id: str | None
    request_ids: list[str]


class WsContextAdded(ReplyModel):
    type: Literal["context_added"]
    speaker: int
    num_frames: int
    turns: int


class WsError(ReplyModel):
    type: Literal["error"]
    error: str = Field(description="A stable message, e.g. Model not loaded, Invalid message format, Empty text")
    detail: str = optional()
    field: str = optional()
    retry_after_ms: int = optional()
    request_id: str = optional()


class WsServerMessage(RootModel[Any]):
    root: Annotated[
        WsAudio | WsDone | WsPong | WsAuthenticated | WsCancelled | WsContextAdded | WsError,
        Field(discriminator="type"),
    ]


# The route's description in /openapi.json: the messages from the models above, then the protocol.
WEBSOCKET_DOC = f"""Real-time synthesis. Client messages (JSON text frames, schema WsClientMessage):
{message_forms(WsClientMessage)}. A context message is a caller turn for the session's conversation; with
API keys on and none sent at the upgrade, the first message is auth (a wrong or missing key closes the socket
with 1008). Server messages (schema WsServerMessage): {message_forms(WsServerMessage)}. With "stream": true,
one audio message per chunk (with request_id, chunk_index, final), then done. Errors: "Model not loaded",
"Invalid message format", "Empty text", "Text too long", "Message too large", "Unknown message type",
"Too many requests in flight", "Rate limit exceeded" (with retry_after_ms), "Overloaded", "Shutting down",
"Synthesis failed". Replies to synthesize requests come in the order the requests were sent. Audio is G.711
mu-law, 8000 Hz, mono, no header (Twilio-ready). Close codes: 1008 authentication failed, 1013 too many
sessions (try again later), 1001 server shutting down (after in-flight requests finish), 1000 "idle timeout"
after `CSM_WS_IDLE_TIMEOUT_S` with no message and no work (send `ping` to keep a quiet session open)."""
