"""Small builders shared by the OpenAPI documents (:mod:`.openapi`, :mod:`.openapi_ecosystem`)."""

from __future__ import annotations

from csm_service.edge.access import NATIVE_WS_PREFIX, is_open

ERROR = {"$ref": "#/components/schemas/Error"}
BEARER = {"bearer": []}
WS_KEY_WAYS = [BEARER, {"api_key": []}]  # the native WebSocket also takes ?api_key= (and an auth message)


def json_body(schema: dict) -> dict:
    """A request body's or response's ``content`` as JSON of ``schema``."""
    return {"content": {"application/json": {"schema": schema}}}


def error_doc(description: str, schema: dict = ERROR) -> dict:
    """An error response: ``description`` and the error body's schema (the native ``Error``)."""
    return {"description": description, **json_body(schema)}


def secure(paths: dict, keys_on: bool, public_metrics: bool) -> None:
    """Each operation's ``security`` as this server enforces it: with keys on, required on every
    protected operation (bearer; the native WebSocket also ?api_key=) and absent on the open ones;
    with keys off, absent everywhere (a key is neither needed nor checked)."""
    for path, methods in paths.items():
        for op in methods.values():
            op.pop("security", None)
            if not keys_on or is_open(path, public_metrics):
                continue
            native_ws = path.startswith(NATIVE_WS_PREFIX)
            op["security"] = [dict(way) for way in WS_KEY_WAYS] if native_ws else [dict(BEARER)]
            if not native_ws:
                op["responses"].setdefault("401", error_doc("No or a wrong API key (Authorization: Bearer)"))
