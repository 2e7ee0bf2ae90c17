"""``GET /``: the browser playground, one static page (no CDN, no build step).

It speaks to the public API only: ``GET /v1/voices``, ``POST /v1/voices`` (upload) and
``POST /v1/audio/speech`` (PCM streamed into Web Audio), and shows time to first audio and the
real-time factor as the browser measured them.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web


@cache
def page() -> str:
    return resources.files("csm_service.edge").joinpath("static/playground.html").read_text(encoding="utf-8")


async def playground(request: web.Request) -> web.Response:
    return web.Response(text=page(), content_type="text/html", headers={"Cache-Control": "no-cache"})
