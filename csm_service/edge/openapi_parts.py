"""Small builders shared by the OpenAPI documents (:mod:`.openapi`, :mod:`.openapi_ecosystem`)."""

from __future__ import annotations

ERROR = {"$ref": "#/components/schemas/Error"}


def json_body(schema: dict) -> dict:
    """A request body's or response's ``content`` as JSON of ``schema``."""
    return {"content": {"application/json": {"schema": schema}}}


def error_doc(description: str, schema: dict = ERROR) -> dict:
    """An error response: ``description`` and the error body's schema (the native ``Error``)."""
    return {"description": description, **json_body(schema)}
