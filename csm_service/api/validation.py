"""Validate a parsed JSON value against a model; a failure becomes an :class:`~.errors.ApiError`.

Pydantic reports every error; the client sees the first (the models list their fields in the
order they are checked) in the edge's own words: ``"<field>: <detail>"``, status 422 (or the
caller's) with the seed's "Invalid message format", unless the field's :class:`~.base.Says`
says otherwise. The common details, by error kind and the field's JSON type:

- type: ``must be an integer, got str`` (a string, a number, true or false)
- range: ``must be an integer from 0 to 2147483647, got -1``; a number: ``must be in (0, 5], got 9``
- too_long: ``must be at most 128 characters``; choice: ``must be one of none, session, got 'x'``
- blank: ``must be non-empty``; missing: ``required field missing``
- not an object at all: 400 ``expected a JSON object, got list``
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from csm_service.api.base import REF_TEMPLATE, OpenApiSchema, Says
from csm_service.api.errors import ApiError
from csm_service.core.errors import INVALID_MESSAGE_FORMAT

M = TypeVar("M", bound=BaseModel)

KINDS = {
    "missing": "missing",
    "model_type": "object",  # a nested object (the body itself not an object: 400, see api_error)
    "greater_than": "range",
    "greater_than_equal": "range",
    "less_than": "range",
    "less_than_equal": "range",
    "string_too_long": "too_long",
    "blank": "blank",
    "one_of": "choice",
    "invalid": "invalid",
}
TYPE_WORDS = {  # pydantic's error type -> what the value must be
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
}
COMMON = {
    "missing": "required field missing",
    "too_long": "must be at most {max_length} characters",
    "blank": "must be non-empty",
    "choice": "must be one of {choices}, got {value!r}",
    "invalid": "{detail}",
}
NO_SAYS = Says()


def validate(model: type[M], data: object, status: int = 422) -> M:
    """``data`` (already parsed JSON) as ``model``; ApiError (``status`` for a bad field) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise api_error(exc, model, status) from None


def api_error(exc: ValidationError, model: type[BaseModel], status: int = 422) -> ApiError:
    """The first of ``exc``'s errors, as the client sees it."""
    error = exc.errors(include_url=False)[0]
    value = error.get("input")
    if not error["loc"]:
        return ApiError(400, INVALID_MESSAGE_FORMAT, f"expected a JSON object, got {type(value).__name__}")
    name = str(error["loc"][0])
    kind = KINDS.get(error["type"], "type")
    if kind == "missing" and len(error["loc"]) > 1:  # inside a nested object: as if of the wrong type
        kind = "type"
    says = _says(model, name)
    schema = field_schemas(model).get(name, {})
    facts = {**schema, **(error.get("ctx") or {}), "value": value, "type": type(value).__name__}
    facts.update(short=str(value)[:40], length=len(value) if isinstance(value, str) else 0)
    template = says.texts.get(kind) or says.texts.get("*") or COMMON.get(kind) or _by_type(error["type"], schema)
    try:
        detail = template.format(**facts)[: says.limit]
    except (KeyError, IndexError, TypeError, ValueError):  # a template this error cannot fill: pydantic's words
        detail = error["msg"]
    status, message = says.errors.get(kind, (status, INVALID_MESSAGE_FORMAT))
    return ApiError(status, message, f"{name}: {detail}", name)


def _by_type(error_type: str, schema: dict[str, Any]) -> str:
    if KINDS.get(error_type) != "range":
        return f"must be {TYPE_WORDS.get(error_type, 'valid')}, got {{type}}"
    types = schema.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        return "must be an integer from {minimum} to {maximum}, got {value}"
    low = schema.get("exclusiveMinimum", schema.get("minimum"))
    opening = "(" if "exclusiveMinimum" in schema else "["
    return f"must be in {opening}{low:g}, {schema.get('maximum'):g}], got {{value!r}}"


def _says(model: type[BaseModel], name: str) -> Says:
    info = model.model_fields.get(name)
    return next((m for m in info.metadata if isinstance(m, Says)), NO_SAYS) if info else NO_SAYS


@cache
def field_schemas(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each field's JSON Schema (its constraints, for the error texts), computed once per model."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=OpenApiSchema)
    choices = {name: ", ".join(str(c) for c in prop["enum"] if c is not None) for name, prop in _enums(schema)}
    return {name: {**prop, **({"choices": choices[name]} if name in choices else {})} for name, prop in _props(schema)}


def _props(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(schema.get("properties", {}).items())


def _enums(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, prop) for name, prop in _props(schema) if "enum" in prop]
