"""``GET /openapi.json`` and ``GET /docs``: the spec (:mod:`csm_service.api.openapi`) with this
server's bounds, its voice profiles, and the security :mod:`.access` enforces.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from csm_service.api.openapi import build_spec, render_docs
from csm_service.edge.access import is_open
from csm_service.edge.state import STATE, EdgeState


def _spec(state: EdgeState, voice_ids: tuple[str, ...] = ()) -> dict:
    """This server's spec: its bounds, and a key needed wherever :func:`~.access.is_open` says so."""
    cfg = state.cfg
    public_metrics = cfg.public_metrics
    needs_key = (lambda path: not is_open(path, public_metrics)) if state.checker.enabled else None
    return build_spec(cfg.max_audio_length_ms, cfg.max_text_chars, voice_ids, needs_key)


async def openapi_json(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # Voice ids are the tenants' data: an open route lists them only on a server without keys.
    keys_on = state.checker.enabled
    voice_ids = tuple(await asyncio.to_thread(state.voices.ids)) if state.voices and not keys_on else ()
    return web.json_response(_spec(state, voice_ids))


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=render_docs(_spec(request.app[STATE])), content_type="text/html")
