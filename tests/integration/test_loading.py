"""Calls that arrive while the model loads (real processes: an edge whose engine is not up yet).

A Twilio stream accepted before any engine worker serves is held, its greeting queued, and spoken
once a worker is ready; past ``--ready-wait-s`` the stream is closed so Twilio goes on to the next
TwiML verb. Every 503 in the meantime carries Retry-After.
"""

from __future__ import annotations

import json
import urllib.request

import aiohttp

from csm_service.tools.twilio_sim import TwilioSimulator
from tests.integration.servers import async_wait_until, free_port, http_status, metric, start_edge, start_engine


def _call(port: int, sid: str) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/calls/{sid}", timeout=5).read())


async def test_twilio_call_during_loading_is_held_then_greeted(tmp_path):
    engine_port = free_port()
    edge, edge_port = start_edge(tmp_path, f"127.0.0.1:{engine_port}", "--ready-wait-s", "300")
    procs = [edge]
    try:
        await async_wait_until(lambda: http_status(edge_port, "/health") == 503, 60, "edge up, no engine")
        url = f"ws://127.0.0.1:{edge_port}/v1/twilio/media-stream"
        async with TwilioSimulator(
            url, "MZ" + "3" * 32, {"greeting": "hello there", "max_audio_length_ms": "800"}
        ) as twilio:
            sid = twilio.stream_sid
            await async_wait_until(lambda: http_status(edge_port, f"/v1/calls/{sid}") == 200, 30, "call listed")
            greeting = _call(edge_port, sid)["utterances"][0]
            assert greeting["status"] == "queued", greeting  # held, not failed
            async with aiohttp.ClientSession() as http:
                for path, kwargs in (("/synthesize", {"json": {"text": "hi"}}),):
                    async with http.post(f"http://127.0.0.1:{edge_port}{path}", **kwargs) as resp:
                        assert resp.status == 503 and resp.headers["Retry-After"], await resp.text()
                for path in ("/health", "/ping"):
                    async with http.get(f"http://127.0.0.1:{edge_port}{path}") as resp:
                        assert resp.status in (503, 204)
                        if resp.status == 503:
                            assert resp.headers["Retry-After"]

            engine, _, metrics_port = start_engine(tmp_path, grpc_port=engine_port)
            procs.append(engine)
            await async_wait_until(lambda: metric(metrics_port, "csm_engine_ready") == 1, 120, "engine ready")
            await async_wait_until(lambda: greeting["utterance_id"] in twilio.echoed, 120, "greeting played")
            assert sum(r.event == "media" for r in twilio.log) >= 800 // 20
            assert _call(edge_port, sid)["utterances"][0]["status"] == "played"
    finally:
        for proc in procs:
            print(proc.log()[-2000:])
            proc.stop()


async def test_twilio_call_is_closed_when_no_engine_gets_ready(tmp_path):
    edge, edge_port = start_edge(tmp_path, f"127.0.0.1:{free_port()}", "--ready-wait-s", "0.5")
    try:
        await async_wait_until(lambda: http_status(edge_port, "/health") == 503, 60, "edge up, no engine")
        url = f"ws://127.0.0.1:{edge_port}/v1/twilio/media-stream"
        async with TwilioSimulator(url, "MZ" + "4" * 32, {"greeting": "anyone?"}) as twilio:
            assert await twilio.closed(60) == 1013  # so Twilio goes on to the next TwiML verb
            assert not any(r.event == "media" for r in twilio.log)
    finally:
        print(edge.log()[-2000:])
        edge.stop()
