"""Voice profiles: the ``POST /v1/voices`` upload (multipart form fields, all text), the list's
paging (``GET /v1/voices?limit=&cursor=``) and the profiles ``/v1/voices`` answers with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from csm_service.api.base import NonBlank, ReplyModel, RequestModel, Says, optional
from csm_service.api.errors import ApiError
from csm_service.core.constants import MAX_SPEAKER, NUM_CODEBOOKS
from csm_service.core.errors import INVALID_MESSAGE_FORMAT

MAX_TRANSCRIPT_CHARS, MAX_NAME_CHARS, MAX_DESCRIPTION_CHARS = 2000, 100, 500
DEFAULT_PAGE, MAX_PAGE = 100, 500  # GET /v1/voices: profiles per page (the default fits max_voices_per_tenant)
CURSOR = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?-[A-Za-z0-9_]{1,64}")  # created_at-voice_id, ASCII only
REQUIRED = Says(
    {"missing": "required, non-empty", "blank": "required, non-empty", "too_long": "at most {max_length} characters"}
)


@dataclass(frozen=True)
class FormInt:
    """A form field holding an integer from ``minimum`` to ``maximum`` in digits (surrounding
    whitespace ignored); empty is ``empty``."""

    minimum: int
    maximum: int
    empty: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._parse, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> JsonSchemaValue:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum, "default": self.empty}

    def _parse(self, raw: object) -> object:
        text = raw.strip() if isinstance(raw, str) else raw
        if text == "":
            return self.empty
        if isinstance(text, str) and text.isdigit():
            try:
                if self.minimum <= int(text) <= self.maximum:
                    return int(text)
            except ValueError:  # digits int() does not read, such as "²"
                pass
        raise PydanticCustomError("form_int", "not an integer in range", {"raw": str(text)[:20]})


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def FormText(max_chars: int, required: bool, **field: Any) -> Any:  # a type, spelled as one
    """A text field, stripped; ``required``: not blank either."""
    checks = (NonBlank(False), REQUIRED) if required else (Says({"too_long": "at most {max_length} characters"}),)
    return Annotated[str, Field(max_length=max_chars, **field), *checks, BeforeValidator(_strip)]


class VoiceUpload(RequestModel):
    """A voice profile's reference recording and what it says (multipart/form-data)."""

    # Checked in this order; the recording last (400 when it is missing).

    transcript: FormText(MAX_TRANSCRIPT_CHARS, True, description="What it says")
    name: FormText(MAX_NAME_CHARS, True)
    description: FormText(MAX_DESCRIPTION_CHARS, False) = ""
    speaker: Annotated[
        int, FormInt(0, MAX_SPEAKER, 0), Says({"*": "must be an integer from {minimum} to {maximum}, got {raw!r}"})
    ] = 0
    file: Annotated[
        bytes,
        WithJsonSchema(
            {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "WAV, FLAC, OGG or MP3 at any rate, 0.5 s up to the server's limit (30 s)",
            }
        ),
        Says({"missing": "required (the voice's reference recording)"}, {"missing": (400, INVALID_MESSAGE_FORMAT)}),
    ]


class Voice(ReplyModel):
    """A voice profile (the built-in default has only voice_id, name, description and builtin)."""

    voice_id: str
    name: str
    builtin: bool
    description: str = optional()
    speaker: int = optional()
    transcript: str = optional()
    num_frames: int = optional(description="80 ms Mimi frames of the prompt")
    duration_ms: float = optional()
    created_at: float = optional(description="Unix time")
    shared: bool = optional(description="No owner: every tenant may use it")
    codes: list[list[int]] = optional(
        description=f"[{NUM_CODEBOOKS}][num_frames] Mimi codes (with ?include_codes=true)"
    )


class VoiceList(ReplyModel):
    voices: list[Voice]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page")


def page_size(raw: list[str]) -> int:
    """``limit`` (each value it was given in the query): profiles per page, DEFAULT_PAGE if absent."""
    if not raw:
        return DEFAULT_PAGE
    if len(raw) > 1 or not raw[0].isascii() or not raw[0].isdigit() or not 1 <= int(raw[0]) <= MAX_PAGE:
        raise ApiError(400, INVALID_MESSAGE_FORMAT, f"limit: an integer from 1 to {MAX_PAGE}, once", "limit")
    return int(raw[0])


def encode_cursor(created_at: float, voice_id: str) -> str:
    """Where the next page starts: after the profile ``(created_at, voice_id)``. Clients treat it
    as opaque; any string of CURSOR's form is a valid place to start (keyset pagination)."""
    created = repr(created_at)
    return f"{created if 'e' not in created else f'{created_at:.6f}'}-{voice_id}"


def decode_cursor(raw: list[str]) -> tuple[float, str] | None:
    """``cursor`` (each value it was given in the query): the ``next_cursor`` of the previous page."""
    if not raw:
        return None
    if len(raw) > 1 or not CURSOR.fullmatch(raw[0]):
        raise ApiError(400, INVALID_MESSAGE_FORMAT, "cursor: pass the next_cursor of the previous page", "cursor")
    created_at, voice_id = raw[0].split("-", 1)
    return float(created_at), voice_id
