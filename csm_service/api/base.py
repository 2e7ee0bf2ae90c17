"""What every model of the api is built from: the base classes, the field types that carry both
their check and their JSON Schema, and the schema generator that writes /openapi.json's spelling.

- :class:`RequestModel`: frozen, strict (no "5" for 5, no true for 1), unknown fields ignored, and
  a null value means "not given" (the field's default) except for the fields a model names in
  ``null_is_a_value``.
- :func:`Integer`: an int within bounds that also takes a whole float (5000.0 is 5000).
- :class:`NonBlank`, :class:`OneOf`: a string with something besides whitespace; one of a list
  of names (optionally case-insensitive), published as the schema's ``enum``.
- :class:`Says`: how a field's errors read where they differ from the common wording
  (:mod:`.validation` turns pydantic's errors into an ApiError).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

REF_TEMPLATE = "#/components/schemas/{model}"


class RequestModel(BaseModel):
    """A body or message a client sends."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)
    null_is_a_value: ClassVar[tuple[str, ...]] = ()  # fields where null is an error, not "not given"

    @model_validator(mode="before")
    @classmethod
    def _null_means_not_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(value is None for value in data.values()):
            return {k: v for k, v in data.items() if v is not None or k in cls.null_is_a_value}
        return data


class ReplyModel(BaseModel):
    """A body or message the server sends (documented in /openapi.json; extra fields may follow)."""

    model_config = ConfigDict(frozen=True)


def optional(**field: Any) -> Any:
    """A reply field that may be left out (never null): ``seed: int = optional()``."""
    return Field(None, **field)


def _whole(value: object) -> object:
    """5000.0 is 5000; anything else is left for the int check."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def Integer(minimum: int, maximum: int, **field: Any) -> Any:  # a type, spelled as one
    """An int from ``minimum`` to ``maximum``; a whole float counts, a bool does not."""
    return Annotated[int, Field(ge=minimum, le=maximum, **field), BeforeValidator(_whole)]


@dataclass(frozen=True)
class Says:
    """A field's own wording: ``texts`` maps an error kind (missing, type, range, too_long, blank,
    choice; "*" for any) to a detail template, ``errors`` an error kind to (status, message).
    Templates are ``str.format``-ed with value, type, length, short (the value's first 40
    characters) and the field's schema (minimum, maximum, maxLength, choices, ...)."""

    texts: Mapping[str, str] = field(default_factory=dict)
    errors: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    limit: int | None = None  # cut the detail to this many characters


@dataclass(frozen=True)
class NonBlank:
    """A string with something besides whitespace (``str.strip``); checked before its type and
    length, so blank text is "blank" whatever its length. Schema: ``minLength`` 1 and ``pattern``."""

    pattern: bool = True  # publish ``pattern: \\S`` too

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(_not_blank, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> JsonSchemaValue:
        return {**handler(schema), "minLength": 1, **({"pattern": r"\S"} if self.pattern else {})}


def _not_blank(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank", "must be non-empty")
    return value


@dataclass(frozen=True)
class OneOf:
    """A string among ``choices`` (compared lower-cased when ``casefold``); the schema's enum."""

    choices: tuple[str, ...]
    casefold: bool = False

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def check(value: str) -> str:
            if (value.lower() if self.casefold else value) not in self.choices:
                raise PydanticCustomError("one_of", "must be one of {choices}", {"choices": ", ".join(self.choices)})
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> JsonSchemaValue:
        return {**handler(schema), "enum": list(self.choices)}


def copy_fields(model: type[BaseModel], names: tuple[str, ...]) -> dict[str, Any]:
    """``model``'s fields ``names`` as ``create_model`` arguments: another model documents them
    exactly as ``model`` checks them."""
    fields = model.model_fields
    return {name: (fields[name].annotation, fields[name]) for name in names if name in fields}


def invalid(detail: str) -> PydanticCustomError:
    """An error whose detail is already written (the field name is put before it)."""
    return PydanticCustomError("invalid", "{detail}", {"detail": detail})


def message_forms(union: type[BaseModel], tag: str = "type") -> str:
    """``{"type": "cancel", "request_id"?}``, ... for each message of a union (optional fields marked ?)."""
    forms = []
    for model in get_args(union.model_fields["root"].annotation):
        kind = get_args(model.model_fields[tag].annotation)[0]
        names = [f'"{n}"' + ("" if f.is_required() else "?") for n, f in model.model_fields.items() if n != tag]
        forms.append("`{" + ", ".join([f'"{tag}": "{kind}"', *names]) + "}`")
    return ", ".join(forms)


class OpenApiSchema(GenerateJsonSchema):
    """JSON Schema as /openapi.json spells it: a nullable simple type is ``"type": [T, "null"]``
    (null in its enum too), and fields carry no generated titles."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if not isinstance(inner.get("type"), str):
            return super().nullable_schema(schema)
        out = {**inner, "type": [inner["type"], "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default", ...) is None:  # null: "not given", which goes without saying
            del out["default"]
        return out

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False
