"""WebSocket streaming extensions: chunks as generated, in-order replies, cancel, disconnect."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp

from tests.integration.servers import async_wait_until as wait_until


async def collect(ws, request_id: str, timeout: float = 120) -> tuple[list[dict], dict]:
    """Audio messages of ``request_id`` until its ``done``."""
    chunks = []
    while True:
        msg = await ws.receive_json(timeout=timeout)
        assert msg.get("request_id") == request_id, msg
        if msg["type"] == "done":
            return chunks, msg
        assert msg["type"] == "audio", msg
        chunks.append(msg)


def joined(chunks: list[dict]) -> bytes:
    return b"".join(base64.b64decode(c["audio_base64"]) for c in chunks)


def synth(text: str, **kw) -> dict:
    return {"type": "synthesize", "text": text, "voice_profile_id": "default", **kw}


async def test_chunks_arrive_while_generating_and_equal_whole_audio(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-stream")) as ws:
        await ws.send_json(synth("Stream this please", stream=True, request_id="r1", seed=11, max_audio_length_ms=4000))
        first = await ws.receive_json(timeout=60)
        assert first["type"] == "audio" and first["chunk_index"] == 0 and first["final"] is False
        # The utterance is still being generated on the engine when its first chunk arrives.
        assert served.metric("csm_engine_active_streams") >= 1
        rest, done = await collect(ws, "r1")
        chunks = [first, *rest]
        await ws.send_json(synth("Stream this please", seed=11, max_audio_length_ms=4000))
        whole = await ws.receive_json(timeout=120)
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))) and len(chunks) > 2
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c["format"] == "mulaw_8khz" for c in chunks)
    assert joined(chunks) == base64.b64decode(whole["audio_base64"])  # same seed: the same bytes
    assert done["chunks"] == len(chunks) and done["duration_ms"] == whole["duration_ms"] == 4000
    assert done["finish_reason"] == "max_length" and done["seed"] == 11
    assert 0 < done["time_to_first_audio_ms"] <= done["generation_time_ms"]
    assert done["real_time_factor"] > 0
    async with aiohttp.ClientSession() as http:
        body = {"text": "Stream this please", "seed": 11, "max_audio_length_ms": 4000, "output_format": "mulaw"}
        async with http.post(served.url + "/synthesize", json=body) as resp:
            http_audio = base64.b64decode((await resp.json())["audio_base64"])
    assert http_audio == joined(chunks)  # and the HTTP endpoint agrees byte for byte


async def test_replies_in_request_order(served):
    """A long request then two short ones: the short ones finish first on the engine, but every
    reply of request 1 comes before any of request 2, and so on."""
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-order")) as ws:
        await ws.send_json(synth("first and long", stream=True, request_id="a", max_audio_length_ms=2400))
        await ws.send_json(synth("second", stream=True, request_id="b", max_audio_length_ms=240))
        await ws.send_json(synth("third", request_id="c", max_audio_length_ms=160))  # not streamed
        seen = []
        while len([m for m in seen if m["type"] in ("done",) or m.get("request_id") == "c"]) < 3:
            seen.append(await ws.receive_json(timeout=120))
    order = [m["request_id"] for m in seen]
    assert order == sorted(order), order  # a..., b..., c
    assert seen[-1]["type"] == "audio" and seen[-1]["request_id"] == "c" and seen[-1]["duration_ms"] == 160


def _cancel_counters(served) -> tuple[float, float]:
    return served.metric("csm_engine_cancelled_running_total"), served.metric("csm_engine_frames_after_cancel_total")


async def test_cancel_stops_the_engine_within_one_frame(served):
    cancelled_before, after_before = _cancel_counters(served)
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-cancel")) as ws:
        await ws.send_json(synth("a very long answer", stream=True, request_id="long", max_audio_length_ms=60_000))
        assert (await ws.receive_json(timeout=60))["type"] == "audio"
        await ws.send_json({"type": "cancel", "request_id": "long"})
        while (msg := await ws.receive_json(timeout=30))["type"] != "cancelled":
            assert msg["type"] == "audio" and msg["request_id"] == "long"  # sent before the cancel
        assert msg == {"type": "cancelled", "request_id": "long", "request_ids": ["long"]}
        await wait_until(lambda: _cancel_counters(served)[0] == cancelled_before + 1, 10, "engine freed the slot")
        # The engine checks for cancels before every frame: at most one more frame after the cancel.
        assert _cancel_counters(served)[1] - after_before <= 1
        # No more audio of the cancelled request; the session keeps working.
        await ws.send_json({"type": "ping"})
        assert await ws.receive_json(timeout=10) == {"type": "pong"}
        await ws.send_json(synth("after the cancel", max_audio_length_ms=160, request_id="next"))
        assert (await ws.receive_json(timeout=60))["request_id"] == "next"


async def test_cancel_everything(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-cancel-all")) as ws:
        await ws.send_json(synth("one", stream=True, request_id="x1", max_audio_length_ms=60_000))
        await ws.send_json(synth("two", stream=True, request_id="x2", max_audio_length_ms=60_000))
        assert (await ws.receive_json(timeout=60))["request_id"] == "x1"
        await ws.send_json({"type": "cancel"})
        while (msg := await ws.receive_json(timeout=30))["type"] != "cancelled":
            assert msg["request_id"] == "x1"
        assert msg["request_id"] is None and msg["request_ids"] == ["x1", "x2"]
        await ws.send_json({"type": "cancel", "request_id": "x1"})  # already gone: nothing to stop
        assert await ws.receive_json(timeout=10) == {"type": "cancelled", "request_id": "x1", "request_ids": []}
    await wait_until(lambda: served.metric("csm_engine_active_streams") == 0, 10, "both slots freed")


async def test_disconnect_frees_the_slot(served):
    cancelled_before, _ = _cancel_counters(served)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(served.ws_url("call-hangup"))
        await ws.send_json(synth("the caller hangs up", stream=True, max_audio_length_ms=60_000))
        assert (await ws.receive_json(timeout=60))["type"] == "audio"
        assert served.metric("csm_edge_websocket_sessions_active") >= 1
        await ws.close()
    await wait_until(lambda: _cancel_counters(served)[0] == cancelled_before + 1, 10, "engine freed the slot")
    await wait_until(lambda: served.metric("csm_engine_active_streams") == 0, 10, "no active streams")


async def test_http_client_disconnect_frees_the_slot(served):
    cancelled_before, _ = _cancel_counters(served)
    async with aiohttp.ClientSession() as http:
        body = {"text": "nobody waits for this", "max_audio_length_ms": 60_000}
        request = asyncio.ensure_future(http.post(served.url + "/synthesize", json=body))
        await wait_until(lambda: served.metric("csm_engine_active_streams") >= 1, 30, "request running")
        request.cancel()  # the client hangs up
    await wait_until(lambda: _cancel_counters(served)[0] == cancelled_before + 1, 10, "engine freed the slot")


async def test_in_flight_limit_per_session(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-busy")) as ws:
        for i in range(4):  # the server allows 3 at once
            await ws.send_json(synth(f"request {i}", request_id=f"q{i}", max_audio_length_ms=800))
        rejected = await ws.receive_json(timeout=10)
        assert rejected["type"] == "error" and rejected["error"] == "Too many requests in flight"
        assert rejected["request_id"] == "q3"
        answered = [(await ws.receive_json(timeout=120))["request_id"] for _ in range(3)]
        assert answered == ["q0", "q1", "q2"]
        await ws.send_json(synth("room again", request_id="q4", max_audio_length_ms=80))
        assert (await ws.receive_json(timeout=60))["request_id"] == "q4"


async def test_many_sessions_at_once(served):
    """Sessions up to the limit all get their audio; one more is closed with 1013 (try again later)."""
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(served.ws_url(f"call-many-{i}")) for i in range(12)]
        try:
            async with http.ws_connect(served.ws_url("one-too-many")) as extra:
                msg = await extra.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013, msg
                assert "Too many sessions" in msg.extra
            started = time.perf_counter()
            for i, ws in enumerate(sockets):
                await ws.send_json(synth(f"caller {i}", max_audio_length_ms=400, seed=i))
            replies = [await ws.receive_json(timeout=120) for ws in sockets]
            assert all(r["type"] == "audio" and r["duration_ms"] == 400 for r in replies)
            assert time.perf_counter() > started
        finally:
            for ws in sockets:
                await ws.close()
    await wait_until(lambda: served.metric("csm_edge_websocket_sessions_active") == 0, 10, "sessions closed")
