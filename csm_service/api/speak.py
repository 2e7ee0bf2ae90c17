"""The native synthesis request: ``POST /synthesize``'s body, the WebSocket ``synthesize``
message without its ``type`` (:mod:`.websocket` adds it), and a RunPod job's ``input``.

The seed's fields and defaults (``text``, ``speaker`` 0, ``max_audio_length_ms`` 30000,
``output_format`` "wav", ``voice_profile_id``) and the extensions. The fields are listed in the
order they are checked, so a body with several bad fields is told about the same one as always.
:func:`synthesize_request` gives the model with a server's own bounds (``--max-text-chars``,
``--max-audio-length-ms``), for validation and for /openapi.json alike; :func:`parse_speak` checks
a body with it and gives the :class:`SpeakParams` a handler reads (then :meth:`SpeakParams.to_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from csm_service.api.base import Integer, NonBlank, OneOf, RequestModel, Says
from csm_service.api.seed import SEED_SAYS, Seed
from csm_service.api.validation import validate
from csm_service.core.constants import (
    DEFAULT_MAX_AUDIO_MS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_VOICE,
    ENGINE_MAX_AUDIO_MS,
    FRAME_MS,
    MAX_SPEAKER,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    NUM_MIMI_CODES,
)
from csm_service.core.errors import EMPTY_TEXT, TEXT_TOO_LONG
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest

MIN_AUDIO_MS = FRAME_MS  # one frame
MAX_REQUEST_ID_CHARS = 128
MAX_VOICE_ID_CHARS = 64
MAX_FORMAT_CHARS = 256  # output_format: a longer string is not a format name
CONTEXT_MODES = ("none", "session")
MAX_CONTEXT_CHARS = 16
# output_format (case-insensitive): the seed's "wav" and "mulaw", and raw extensions -> the
# format the response names (HTTP_FORMATS below: its encoding and sample rate).
OUTPUT_FORMATS = {
    "wav": "wav",
    "mulaw": "mulaw_8khz",
    "mulaw_8khz": "mulaw_8khz",
    "alaw": "alaw_8khz",
    "alaw_8khz": "alaw_8khz",
    "pcm16": "pcm16_24khz",
    "pcm16_24khz": "pcm16_24khz",
    "pcm16_8khz": "pcm16_8khz",
}
TEXT_SAYS = Says(
    texts={"too_long": "{length} characters, at most {maxLength}"},
    errors={"missing": (400, EMPTY_TEXT), "blank": (422, EMPTY_TEXT), "too_long": (422, TEXT_TOO_LONG)},
)


def SpeechText(max_chars: int | None) -> Any:  # a type, spelled as one
    """``text``: non-blank, at most ``max_chars`` (None: the engine's own limit applies)."""
    return Annotated[str, Field(max_length=max_chars, description="Text to synthesize"), NonBlank(False), TEXT_SAYS]


def AudioMs(max_ms: int) -> Any:
    """``max_audio_length_ms``: one 80 ms frame up to ``max_ms``."""
    return Annotated[Integer(MIN_AUDIO_MS, max_ms) | None, Field(description="Max audio length in ms")]


def _floor(temperature: float) -> float:
    return max(float(temperature), MIN_TEMPERATURE)


def _default_voice(voice: str) -> str:
    return voice or DEFAULT_VOICE


OutputFormat = Annotated[str, Field(max_length=MAX_FORMAT_CHARS), OneOf(tuple(OUTPUT_FORMATS), casefold=True)]
VoiceId = Annotated[str, Field(max_length=MAX_VOICE_ID_CHARS), AfterValidator(_default_voice)]
Temperature = Annotated[float, Field(gt=0, le=MAX_TEMPERATURE), AfterValidator(_floor)]
Stream = Annotated[bool, Field(description="WebSocket: audio chunk by chunk, then done")]
ContextMode = Annotated[
    str,
    Field(max_length=MAX_CONTEXT_CHARS, description='WebSocket: "session" puts the earlier turns first'),
    OneOf(CONTEXT_MODES),
]


class SynthesizeRequest(RequestModel):
    """Text to speech. An optional field set to null takes its default."""

    null_is_a_value = ("stream",)  # stream: null is refused, as it always was

    text: SpeechText(None)
    output_format: OutputFormat | None = Field(
        "wav", description='"wav" (24 kHz WAV file) or "mulaw" (raw G.711 mu-law, 8 kHz); raw extensions'
    )
    voice_profile_id: VoiceId | None = Field(
        DEFAULT_VOICE,
        description='A voice profile on this server; empty or null: "default"',
        json_schema_extra={"enum": [DEFAULT_VOICE, "", None]},  # /openapi.json adds the stored ones
    )
    temperature: Temperature | None = Field(
        None,
        description=f"values below {MIN_TEMPERATURE:g} sample as {MIN_TEMPERATURE:g} (greedy)",
        json_schema_extra={"default": DEFAULT_TEMPERATURE},
    )
    stream: SkipJsonSchema[Stream] = False  # WebSocket fields: checked everywhere, documented there
    raw_text: bool | None = Field(False, description="skip text normalisation")
    context: SkipJsonSchema[ContextMode | None] = "none"
    speaker: Integer(0, MAX_SPEAKER) | None = Field(
        None, description="Speaker ID (0-based)", json_schema_extra={"default": 0}
    )
    max_audio_length_ms: AudioMs(ENGINE_MAX_AUDIO_MS) = DEFAULT_MAX_AUDIO_MS
    top_k: Integer(1, NUM_MIMI_CODES) | None = Field(None, json_schema_extra={"default": DEFAULT_TOP_K})
    seed: Annotated[Seed | None, SEED_SAYS] = Field(
        None, description="same seed and inputs, same audio; JavaScript: as a string"
    )
    request_id: Annotated[str, Field(max_length=MAX_REQUEST_ID_CHARS)] | None = Field(None, description="echoed back")


@lru_cache(maxsize=32)
def synthesize_request(max_text_chars: int | None, max_audio_ms: int = ENGINE_MAX_AUDIO_MS) -> type[SynthesizeRequest]:
    """:class:`SynthesizeRequest` with this server's bounds: at most ``max_text_chars`` of text,
    ``max_audio_length_ms`` up to ``max_audio_ms`` (its default too, when lower than 30000)."""
    if max_text_chars is None and max_audio_ms == ENGINE_MAX_AUDIO_MS:
        return SynthesizeRequest
    return create_model(
        "SynthesizeRequest",
        __base__=SynthesizeRequest,
        __module__=__name__,
        text=(SpeechText(max_text_chars), ...),
        max_audio_length_ms=(AudioMs(max_audio_ms), min(DEFAULT_MAX_AUDIO_MS, max_audio_ms)),
    )


@dataclass(frozen=True)
class HttpFormat:
    name: str  # the response's "format"
    encoding: AudioEncoding
    sample_rate: int
    is_wav: bool = False  # a WAV file around PCM16 (never streamed)


WAV = HttpFormat("wav", AudioEncoding.PCM16_24KHZ, 24_000, is_wav=True)
MULAW = HttpFormat("mulaw_8khz", AudioEncoding.MULAW_8KHZ, 8_000)
ALAW = HttpFormat("alaw_8khz", AudioEncoding.ALAW_8KHZ, 8_000)
PCM16 = HttpFormat("pcm16_24khz", AudioEncoding.PCM16_24KHZ, 24_000)
PCM16_8KHZ = HttpFormat("pcm16_8khz", AudioEncoding.PCM16_8KHZ, 8_000)
_BY_NAME = {fmt.name: fmt for fmt in (WAV, MULAW, ALAW, PCM16, PCM16_8KHZ)}
# output_format values (the seed's "wav" and "mulaw", and raw extensions) -> their format.
HTTP_FORMATS = {value: _BY_NAME[name] for value, name in OUTPUT_FORMATS.items()}


@dataclass(frozen=True)
class SpeakParams:
    """A checked synthesis request, as a handler reads it."""

    text: str
    speaker: int | None = None  # None: the voice profile's speaker, or 0
    max_audio_length_ms: int = DEFAULT_MAX_AUDIO_MS
    output_format: HttpFormat = WAV
    voice_profile_id: str = DEFAULT_VOICE
    temperature: float | None = None
    top_k: int | None = None
    seed: int | None = None
    request_id: str | None = None
    stream: bool = False
    session_context: bool = False  # WebSocket "context": "session": earlier turns precede the text
    raw_text: bool = False  # skip the engine's text normalisation

    def to_request(self, encoding: AudioEncoding, prompt: Segment | None = None) -> SpeechRequest:
        """The speech request, the voice's ``prompt`` first (a cached prefix) when there is one (its
        speaker unless the request names one); unset sampling fields take the engine's defaults."""
        context = (prompt,) if prompt is not None else ()
        speaker = prompt.speaker if self.speaker is None and prompt is not None else self.speaker
        return SpeechRequest(
            text=self.text,
            speaker=speaker or 0,
            max_audio_length_ms=self.max_audio_length_ms,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_k=DEFAULT_TOP_K if self.top_k is None else self.top_k,
            seed=self.seed,
            context=context,
            prefix_segments=len(context),
            normalize_text=not self.raw_text,
            encoding=encoding,
            request_id=self.request_id or "",
        )


def parse_speak(body: object, max_text_chars: int | None, max_audio_ms: int = ENGINE_MAX_AUDIO_MS) -> SpeakParams:
    """A JSON object -> SpeakParams, checked by :class:`SynthesizeRequest` with this server's bounds.
    Raises ApiError: 400 for a non-object or a missing ``text``, 422 for a field of the wrong type or
    value (``max_audio_length_ms`` above ``max_audio_ms``)."""
    request = validate(synthesize_request(max_text_chars, max_audio_ms), body)
    return SpeakParams(
        text=request.text,
        speaker=request.speaker,
        max_audio_length_ms=request.max_audio_length_ms,  # type: ignore[arg-type]  # never null: defaulted
        output_format=HTTP_FORMATS[request.output_format.lower()],  # type: ignore[union-attr]
        voice_profile_id=request.voice_profile_id,  # type: ignore[arg-type]
        temperature=request.temperature,
        top_k=request.top_k,
        seed=request.seed,
        request_id=request.request_id,
        stream=request.stream,
        session_context=request.context == "session",
        raw_text=bool(request.raw_text),
    )
