"""Graceful drain on SIGTERM with a real `csm-service serve` process: health turns 503 first, new
work is refused, the utterance in flight finishes, WebSockets close with 1001, the exit code is 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from tests.integration.servers import async_wait_until, http_status, start_serve, wait_until


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


async def test_sigterm_drains_then_exits_zero(tmp_path):
    proc, port = start_serve(tmp_path, "--drain-timeout-s", "60")
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            ws, first = await _streaming(http, port, "draining-call", 8000)
            chunks = [first]
            proc.signal(signal.SIGTERM)

            # Health turns 503 first, while the utterance is still being generated.
            await async_wait_until(lambda: http_status(port, "/health") == 503, 5, "health 503 after SIGTERM")
            async with http.get(f"{base}/health") as resp:
                assert (await resp.json())["status"] == "draining"
            # New work is refused: HTTP with 503 + Retry-After, a new session with close 1001.
            async with http.post(f"{base}/synthesize", json={"text": "new", "max_audio_length_ms": 80}) as resp:
                body = await resp.json()
                assert resp.status == 503 and "Shutting down" in body["detail"] and resp.headers["Retry-After"]
            async with http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/late-call") as late:
                msg = await late.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            # ... and so is a new request on the open session, which still gets its own audio.
            await ws.send_json({"type": "synthesize", "text": "one more", "request_id": "late"})

            # The accepted utterance finishes: every chunk, then done, then the 1001 close.
            replies = []
            while True:
                msg = await ws.receive(timeout=60)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                replies.append(msg.json())
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            refused = [r for r in replies if r.get("request_id") == "late"]
            assert refused and refused[0]["error"] == "Shutting down"
            chunks += [r for r in replies if r["type"] == "audio"]
            done = [r for r in replies if r["type"] == "done"]
            assert len(done) == 1 and done[0]["duration_ms"] == 8000
            assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))) and chunks[-1]["final"]
            await ws.close()
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        print(proc.log()[-3000:])
        proc.stop()


async def test_drain_deadline_closes_sessions_and_still_exits_zero(tmp_path):
    proc, port = start_serve(tmp_path, "--drain-timeout-s", "1")
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        async with aiohttp.ClientSession() as http:
            ws, _ = await _streaming(http, port, "too-long", 160_000)
            proc.signal(signal.SIGTERM)
            while (msg := await ws.receive(timeout=30)).type == aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            await ws.close()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        print(proc.log()[-3000:])
        proc.stop()
