"""Rolling updates do not hang up calls: SIGTERM to a real `csm-service serve` process.

/health turns 503 at once and new sessions, Twilio streams and HTTP requests are refused, but live
WebSocket sessions and Twilio calls go on (new utterances included) until they end; then the
process exits 0. Past the call-drain deadline, every utterance still in flight ends with the same
final error ("Shutting down") and the sessions close with 1001.
"""

from __future__ import annotations

import asyncio
import base64
import signal

import aiohttp

from csm_service.tools.twilio_sim import TwilioSimulator
from tests.integration.servers import async_wait_until, http_status, metric, start_serve, wait_until


async def _streaming(
    http: aiohttp.ClientSession, port: int, session_id: str, audio_ms: int
) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    """A session with one streamed utterance under way: the socket and its first chunk."""
    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/{session_id}")
    await ws.send_json(
        {"type": "synthesize", "text": "finish me", "stream": True, "request_id": "r", "max_audio_length_ms": audio_ms}
    )
    reply = await ws.receive_json(timeout=60)
    assert reply["type"] == "audio" and reply["chunk_index"] == 0, reply
    return ws, reply


async def _replies_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict]:
    """Replies up to and including the first of type ``kind``."""
    replies = []
    while True:
        reply = await ws.receive_json(timeout=120)
        replies.append(reply)
        if reply["type"] == kind:
            return replies


async def test_sigterm_lets_live_calls_finish_and_speak_again_then_exits_zero(tmp_path):
    proc, port = start_serve(tmp_path, "--drain-timeout-s", "60")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        async with aiohttp.ClientSession() as http:
            twilio = TwilioSimulator(f"ws://127.0.0.1:{port}/v1/twilio/media-stream", "MZ" + "1" * 32, {})
            await twilio.__aenter__()
            await async_wait_until(lambda: http_status(port, f"/v1/calls/{twilio.stream_sid}") == 200, 30, "call")
            ws, first = await _streaming(http, port, "draining-call", 3200)
            proc.signal(signal.SIGTERM)

            # Health turns 503 (with Retry-After) while the utterance is still being generated.
            await async_wait_until(lambda: http_status(port, "/health") == 503, 30, "health 503 after SIGTERM")
            async with http.get(f"{base}/health") as resp:
                assert (await resp.json())["status"] == "draining" and resp.headers["Retry-After"]
            # New work is refused: HTTP with 503 + Retry-After, a new session and a new Twilio stream with 1001.
            async with http.post(f"{base}/synthesize", json={"text": "new", "max_audio_length_ms": 80}) as resp:
                body = await resp.json()
                assert resp.status == 503 and "Shutting down" in body["detail"] and resp.headers["Retry-After"]
            async with http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/late-call") as late:
                msg = await late.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            async with TwilioSimulator(f"ws://127.0.0.1:{port}/v1/twilio/media-stream", "MZ" + "2" * 32, {}) as new:
                assert await new.closed(30) == 1001

            # The live session finishes its utterance, then speaks a second one.
            replies = [first, *await _replies_until(ws, "done")]
            assert [r["chunk_index"] for r in replies if r["type"] == "audio"] == list(range(len(replies) - 1))
            assert replies[-1]["duration_ms"] == 3200, replies[-1]
            await ws.send_json({"type": "synthesize", "text": "one more", "request_id": "second"})
            second = await ws.receive_json(timeout=120)
            assert second["type"] == "audio" and second["request_id"] == "second", second
            assert len(base64.b64decode(second["audio_base64"])) > 0

            # The live Twilio call speaks too, and Twilio plays it to its mark.
            async with http.post(f"{base}/v1/calls/{twilio.stream_sid}/say", json={"text": "still here"}) as resp:
                assert resp.status == 202, await resp.text()
                said = (await resp.json())["utterance_id"]
            await async_wait_until(lambda: said in twilio.echoed, 120, "the call's utterance played")
            assert proc.proc.poll() is None  # still up: a session and a call are live

            await ws.close()
            await twilio.stop()
            await twilio.__aexit__(None, None, None)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        print(proc.log()[-3000:])
        proc.stop()


async def test_call_drain_deadline_ends_every_stream_with_one_final_message(tmp_path):
    proc, port = start_serve(tmp_path, "--call-drain-s", "1", "--drain-timeout-s", "5", "--max-batch", "4")
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        async with aiohttp.ClientSession() as http:
            ws, _ = await _streaming(http, port, "too-long", 160_000)
            idle = await http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/idle")
            body = {"text": "a long one over http", "max_audio_length_ms": 160_000}
            posted = asyncio.ensure_future(http.post(f"http://127.0.0.1:{port}/synthesize", json=body))
            sse_body = {
                "model": "csm-1b",
                "input": "a long one",
                "voice": "alloy",
                "response_format": "pcm",
                "stream_format": "sse",
            }
            sse_body["max_audio_length_ms"] = 160_000
            sse = await http.post(f"http://127.0.0.1:{port}/v1/audio/speech", json=sse_body)
            assert sse.status == 200 and (await sse.content.readline()).startswith(b"data: ")  # audio under way
            await async_wait_until(lambda: metric(port, "csm_engine_active_streams") == 3, 60, "all generating")
            proc.signal(signal.SIGTERM)

            replies = await _replies_until(ws, "error")
            final = replies[-1]
            assert final["error"] == "Shutting down" and "call-drain deadline" in final["detail"], final
            assert final["request_id"] == "r"
            msg = await ws.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            msg = await idle.receive(timeout=30)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            resp = await posted
            answer = await resp.json()
            assert resp.status == 503 and answer["detail"] == final["error"] + ": " + final["detail"], answer
            assert resp.headers["Retry-After"]
            events = [line for line in (await sse.read()).decode().splitlines() if line.startswith("data: ")]
            assert '"type": "error"' in events[-1] or '"type":"error"' in events[-1], events[-1][:200]
            assert "Shutting down" in events[-1] and "call-drain deadline" in events[-1], events[-1][:300]
            await ws.close()
            await idle.close()
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        print(proc.log()[-3000:])
        proc.stop()
