"""Synthesis parameters from JSON (HTTP body or WebSocket message), validated with clear errors.

The seed's fields and defaults come first (``text``, ``speaker`` 0, ``max_audio_length_ms`` 30000,
``output_format`` "wav", ``voice_profile_id``); the rest are optional extensions. Types are checked
here; numeric ranges are the engine's (its INVALID_ARGUMENT becomes a 422 naming the field).
Unknown fields are ignored, so newer clients keep working against older servers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from csm_service.config import NUM_MIMI_CODES
from csm_service.edge.errors import EMPTY_TEXT, INVALID_MESSAGE_FORMAT, TEXT_TOO_LONG, ApiError
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

DEFAULT_MAX_AUDIO_MS = 30_000
MIN_AUDIO_MS = 80  # one frame
ENGINE_MAX_AUDIO_MS = 163_840  # 2048 positions of 80 ms: no utterance can be longer
DEFAULT_VOICE = "default"
MAX_REQUEST_ID_CHARS = 128
MAX_VOICE_ID_CHARS = 64
CONTEXT_MODES = ("none", "session")
MAX_INT32, MAX_UINT32, MAX_SEED = 2**31 - 1, 2**32 - 1, 2**63 - 1  # the proto fields' ranges
MAX_TEMPERATURE = 5.0
MIN_TEMPERATURE = 1e-6  # the proto's float32 would turn 5e-324 into 0; this low, sampling is argmax anyway


@dataclass(frozen=True)
class HttpFormat:
    name: str  # the response's "format"
    encoding: int  # csm.v1 AudioEncoding
    sample_rate: int
    is_wav: bool = False


WAV = HttpFormat("wav", pb.PCM16_24KHZ, 24_000, is_wav=True)
MULAW = HttpFormat("mulaw_8khz", pb.MULAW_8KHZ, 8_000)
# output_format values: the seed's "wav" and "mulaw", and raw extensions.
HTTP_FORMATS = {
    "wav": WAV,
    "mulaw": MULAW,
    "mulaw_8khz": MULAW,
    "alaw": HttpFormat("alaw_8khz", pb.ALAW_8KHZ, 8_000),
    "alaw_8khz": HttpFormat("alaw_8khz", pb.ALAW_8KHZ, 8_000),
    "pcm16": HttpFormat("pcm16_24khz", pb.PCM16_24KHZ, 24_000),
    "pcm16_24khz": HttpFormat("pcm16_24khz", pb.PCM16_24KHZ, 24_000),
    "pcm16_8khz": HttpFormat("pcm16_8khz", pb.PCM16_8KHZ, 8_000),
}


@dataclass(frozen=True)
class SpeakParams:
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

    def to_proto(self, encoding: int) -> pb.SynthesizeRequest:
        msg = pb.SynthesizeRequest(
            text=self.text,
            speaker=self.speaker or 0,
            max_audio_length_ms=self.max_audio_length_ms,
            encoding=encoding,
            request_id=self.request_id or "",
            raw_text=self.raw_text,
        )
        if self.temperature is not None:
            msg.temperature = self.temperature
        if self.top_k is not None:
            msg.top_k = self.top_k
        if self.seed is not None:
            msg.seed = self.seed
        return msg


def _invalid(field: str, detail: str) -> ApiError:
    return ApiError(422, INVALID_MESSAGE_FORMAT, f"{field}: {detail}", field)


def _integer(body: dict, field: str, default: int | None, minimum: int, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 5000.0 is 5000
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise _invalid(field, f"must be an integer from {minimum} to {maximum}, got {value}")
    return value


def _string(body: dict, field: str, default: str | None, max_chars: int = 256) -> str | None:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _invalid(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise _invalid(field, f"must be at most {max_chars} characters")
    return value


def parse_speak(body: object, max_text_chars: int, max_audio_ms: int = ENGINE_MAX_AUDIO_MS) -> SpeakParams:
    """A JSON object -> SpeakParams. Raises ApiError: 400 for a non-object or a missing ``text``,
    422 for a field of the wrong type or value (``max_audio_length_ms`` above ``max_audio_ms``)."""
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"expected a JSON object, got {type(body).__name__}")
    if "text" not in body or body["text"] is None:
        raise ApiError(400, EMPTY_TEXT, "text: required field missing", "text")
    text = body["text"]
    if not isinstance(text, str):
        raise _invalid("text", f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ApiError(422, EMPTY_TEXT, "text: must be non-empty", "text")
    if len(text) > max_text_chars:
        raise ApiError(422, TEXT_TOO_LONG, f"text: {len(text)} characters, at most {max_text_chars}", "text")
    fmt_name = _string(body, "output_format", "wav")
    fmt = HTTP_FORMATS.get(fmt_name.lower())  # type: ignore[union-attr]
    if fmt is None:
        raise _invalid("output_format", f"must be one of {', '.join(HTTP_FORMATS)}, got {fmt_name!r}")
    voice = _string(body, "voice_profile_id", DEFAULT_VOICE, MAX_VOICE_ID_CHARS) or DEFAULT_VOICE
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise _invalid("temperature", f"must be a number, got {type(temperature).__name__}")
        if not (math.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
            raise _invalid("temperature", f"must be in (0, {MAX_TEMPERATURE:g}], got {temperature!r}")
        temperature = max(float(temperature), MIN_TEMPERATURE)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", f"must be true or false, got {type(stream).__name__}")
    raw_text = False if body.get("raw_text") is None else body["raw_text"]
    if not isinstance(raw_text, bool):
        raise _invalid("raw_text", f"must be true or false, got {type(raw_text).__name__}")
    context = _string(body, "context", "none", 16)
    if context not in CONTEXT_MODES:
        raise _invalid("context", f"must be one of {', '.join(CONTEXT_MODES)}, got {context!r}")
    return SpeakParams(
        text=text,
        speaker=_integer(body, "speaker", None, 0, MAX_INT32),
        max_audio_length_ms=_integer(  # type: ignore[arg-type]
            body, "max_audio_length_ms", min(DEFAULT_MAX_AUDIO_MS, max_audio_ms), MIN_AUDIO_MS, max_audio_ms
        ),
        output_format=fmt,
        voice_profile_id=voice,
        temperature=float(temperature) if temperature is not None else None,
        top_k=_integer(body, "top_k", None, 1, NUM_MIMI_CODES),
        seed=_integer(body, "seed", None, 0, MAX_SEED),
        request_id=_string(body, "request_id", None, MAX_REQUEST_ID_CHARS),
        stream=stream,
        session_context=context == "session",
        raw_text=raw_text,
    )
