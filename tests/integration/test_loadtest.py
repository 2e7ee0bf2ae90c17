"""The load test tool: a small run against the real server is clean, and its checks do catch lost
and misordered replies (against a deliberately broken fake server)."""

from __future__ import annotations

import json

from aiohttp import web

from csm_service.tools.loadtest import parse_args, run
from tests.integration.servers import free_port


async def test_small_load_against_the_real_server_is_clean(served):
    args = parse_args(["--url", served.url, "--sessions", "8", "--http-clients", "2", "--max-audio-ms", "160"])
    report = await run(args, served.proc.proc.pid)
    assert report.ws_completed == report.ws_requests == 16
    assert report.http_completed == report.http_requests == 4
    assert (report.lost, report.misordered, report.errors, report.connect_failures) == (0, 0, {}, 0)
    assert report.ttfa_ms["p50"] > 0 and report.rss_mb["peak"] > 0
    assert report.audio_seconds == 20 * 0.16


async def _broken_ws(request: web.Request) -> web.WebSocketResponse:
    """Answers the second request first, skips a chunk index, and never answers the third."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    ids = []
    async for msg in ws:
        ids.append(json.loads(msg.data)["request_id"])
        if len(ids) == 3:
            break
    audio = {"type": "audio", "audio_base64": "", "duration_ms": 80, "final": False}
    await ws.send_json({**audio, "request_id": ids[1], "chunk_index": 0})  # out of order
    await ws.send_json({**audio, "request_id": ids[0], "chunk_index": 0})
    await ws.send_json({**audio, "request_id": ids[0], "chunk_index": 2})  # index 1 skipped
    await ws.send_json({"type": "done", "request_id": ids[0]})
    await ws.send_json({"type": "done", "request_id": ids[1]})
    await ws.close()  # ids[2] is lost
    return ws


async def test_the_checks_catch_misordered_and_lost_replies():
    app = web.Application()
    app.router.add_get("/v1/native/ws/{sid}", _broken_ws)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        args = parse_args(["--url", f"http://127.0.0.1:{port}", "--sessions", "1", "--requests-per-session", "3"])
        args.http_clients = 0
        args.timeout_s = 5
        report = await run(args)
    finally:
        await runner.cleanup()
    assert report.misordered == 2  # the early reply and the skipped chunk index
    assert report.lost == 1
    assert report.ws_completed == 2
