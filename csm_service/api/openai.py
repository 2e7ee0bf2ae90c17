"""OpenAI-compatible speech: ``POST /v1/audio/speech``'s body, and the voice and model lists.

:class:`OpenAISpeech` checks OpenAI's own fields first (every error a 400 naming the param);
the text and the native extensions are then checked as a native request
(:class:`~.speak.SynthesizeRequest`), after the voice is resolved. :func:`speech_request` is the
whole body as /openapi.json documents it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, create_model

from csm_service.api.base import NonBlank, OneOf, ReplyModel, RequestModel, Says, copy_fields, invalid, optional
from csm_service.api.speak import synthesize_request
from csm_service.core.constants import DEFAULT_VOICE, ENGINE_MAX_AUDIO_MS, MAX_SPEED, MIN_SPEED
from csm_service.core.formats import FILE_FORMATS, NO_ENCODER

# OpenAI's built-in voices (the openai SDK's speech_create_params.Voice): all are the default voice here.
OPENAI_VOICES = tuple("alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split())
STREAM_FORMATS = ("audio", "sse")
EXTENSION_FIELDS = ("seed", "temperature", "top_k", "speaker", "max_audio_length_ms", "raw_text")
MODEL_ID = "csm-1b"
MAX_MODEL_CHARS = 256
VOICE_NAMES = [DEFAULT_VOICE, *OPENAI_VOICES]  # /openapi.json adds the stored profiles' ids


def _voice_ref(voice: object) -> object:
    """``{"id": name}`` is ``name``."""
    return voice.get("id") if isinstance(voice, dict) else voice


def _available(name: object) -> object:
    if isinstance(name, str) and name in NO_ENCODER:
        raise invalid(f"{name} is not available here; use one of {', '.join(FILE_FORMATS)}")
    return name


VOICE_SCHEMA = {
    "oneOf": [
        {"type": "string", "enum": VOICE_NAMES},
        {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "enum": VOICE_NAMES}}},
    ],
    "description": "default, a voice profile id or name, or an OpenAI stock name (the default voice)",
}
Voice = Annotated[
    str,
    AfterValidator(str.strip),
    NonBlank(),
    BeforeValidator(_voice_ref),
    WithJsonSchema(VOICE_SCHEMA),
    Says({"*": 'required: a voice name or id (GET /v1/audio/voices), or {{"id": ...}}'}),
]
ResponseFormat = Annotated[str, OneOf(tuple(FILE_FORMATS)), BeforeValidator(_available)]


class OpenAISpeech(RequestModel):
    """OpenAI's fields, in the order they are checked."""

    model: Annotated[
        str,
        Field(max_length=MAX_MODEL_CHARS, description=f"Any name; {MODEL_ID} serves them all"),
        NonBlank(),
        Says({"*": f"required: a model name of at most {MAX_MODEL_CHARS} characters ({MODEL_ID} serves all)"}),
    ]
    input: Annotated[str, Field(description="The text to speak"), Says({"*": "required: the text to speak"})]
    response_format: Annotated[
        ResponseFormat | None, Says({"type": "must be a string", "choice": "must be one of {choices}, got {short!r}"})
    ] = "mp3"
    speed: Annotated[
        Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)] | None,
        Says({"*": "must be a number from {minimum} to {maximum}, got {value!r}"}, limit=120),
    ] = 1.0
    stream_format: Annotated[
        Annotated[str, OneOf(STREAM_FORMATS)] | None,
        Says({"*": "must be one of {choices}, got {value!r}"}, limit=120),
    ] = "audio"
    instructions: Annotated[str | None, Says({"type": "must be a string"})] = Field(
        None,
        description="Accepted for compatibility and ignored: CSM takes no style prompt. The voice comes from"
        " `voice` (a voice profile); delivery follows the text itself",
    )
    voice: Voice  # resolved to a voice profile after the fields above are checked


@lru_cache(maxsize=32)
def speech_request(max_text_chars: int | None, max_audio_ms: int = ENGINE_MAX_AUDIO_MS) -> type[OpenAISpeech]:
    """The body as documented: OpenAI's fields, ``input`` as the native ``text`` is checked, and the
    native extensions with this server's bounds."""
    native = synthesize_request(max_text_chars, max_audio_ms)
    text = Annotated[str, Field(max_length=max_text_chars, description="The text to speak"), NonBlank()]
    return create_model(
        "SpeechRequest",
        __base__=OpenAISpeech,
        __module__=__name__,
        input=(text, ...),
        **copy_fields(native, EXTENSION_FIELDS),
    )


class OpenAIErrorDetail(ReplyModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(ReplyModel):
    """OpenAI's error shape (the SDK reads ``error.message``)."""

    error: OpenAIErrorDetail


class Named(ReplyModel):
    id: str
    name: str = optional()


class AudioVoices(ReplyModel):
    """Open WebUI's voice list: the default, then the caller's tenant's profiles."""

    voices: list[Named]


class AudioModels(ReplyModel):
    models: list[Named]


class ModelCard(ReplyModel):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(ReplyModel):
    """OpenAI's ``GET /v1/models``."""

    object: str
    data: list[ModelCard]
