"""Limits with clear answers, on a real server: request rate per API key (HTTP 429 + Retry-After,
WebSocket error + retry_after_ms), idle sessions closed unless pinged, an operator's audio cap."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.integration.servers import http_status, start_serve, wait_until

KEYS = ["key-http-1", "key-http-2", "key-ws", "key-idle", "key-cap"]
IDLE_S = 1.5


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    flags = ["--rate-limit-per-s", "0.5", "--rate-limit-burst", "2"]
    flags += ["--ws-idle-timeout-s", str(IDLE_S), "--max-audio-length-ms", "8000", "--ws-auth-timeout-s", "1"]
    proc, port = start_serve(tmp_path_factory.mktemp("limits"), *flags, env={"CSM_API_KEYS": ",".join(KEYS)})
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        yield port
    finally:
        print(proc.log()[-3000:])
        proc.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


SHORT = {"text": "hello", "max_audio_length_ms": 80}


async def test_http_rate_limit_is_per_key_with_retry_after(limited):
    url = f"http://127.0.0.1:{limited}/synthesize"
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the burst
            async with http.post(url, json=SHORT, headers=auth("key-http-1")) as resp:
                assert resp.status == 200
        async with http.post(url, json=SHORT, headers=auth("key-http-1")) as resp:
            body = await resp.json()
            assert resp.status == 429, body
            assert body["error"] == "Too Many Requests" and "Rate limit exceeded" in body["detail"]
            retry_after = int(resp.headers["Retry-After"])
            assert 1 <= retry_after <= 2  # one token per 2 s
        async with http.post(url, json=SHORT, headers=auth("key-http-2")) as resp:
            assert resp.status == 200  # another key has its own budget
        await asyncio.sleep(retry_after)
        async with http.post(url, json=SHORT, headers=auth("key-http-1")) as resp:
            assert resp.status == 200  # Retry-After was long enough
        async with http.get(f"http://127.0.0.1:{limited}/health") as resp:
            assert resp.status == 200  # health is never limited


async def test_ws_rate_limit_answers_an_error_and_keeps_the_session(limited):
    url = f"ws://127.0.0.1:{limited}/v1/native/ws/rate"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=auth("key-ws")) as ws:
        for i in range(2):
            await ws.send_json({"type": "synthesize", **SHORT, "request_id": f"ok{i}"})
        await ws.send_json({"type": "synthesize", **SHORT, "request_id": "over"})
        replies = [await ws.receive_json(timeout=60) for _ in range(3)]
        limited_reply = next(r for r in replies if r["type"] == "error")
        assert limited_reply["error"] == "Rate limit exceeded" and limited_reply["request_id"] == "over"
        assert 0 < limited_reply["retry_after_ms"] <= 2000
        assert sorted(r["request_id"] for r in replies if r["type"] == "audio") == ["ok0", "ok1"]
        end = time.monotonic() + limited_reply["retry_after_ms"] / 1000
        while time.monotonic() < end:  # wait as told, pinging (the session would be idle otherwise)
            await ws.send_json({"type": "ping"})
            assert (await ws.receive_json(timeout=10))["type"] == "pong"
            await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        await ws.send_json({"type": "synthesize", **SHORT, "request_id": "later"})
        reply = await ws.receive_json(timeout=60)
        assert reply["type"] == "audio" and reply["request_id"] == "later"


async def test_idle_session_is_closed_unless_pinged_or_busy(limited):
    url = f"ws://127.0.0.1:{limited}/v1/native/ws/idle"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=auth("key-idle")) as ws:
        for _ in range(6):  # 3 s of pings, twice the idle timeout: still open
            await ws.send_json({"type": "ping"})
            assert (await ws.receive_json(timeout=10))["type"] == "pong"
            await asyncio.sleep(IDLE_S / 3)
        # Work in flight is not idleness, however long it takes.
        await ws.send_json({"type": "synthesize", "text": "a long answer", "max_audio_length_ms": 4000})
        reply = await ws.receive_json(timeout=120)
        assert reply["type"] == "audio" and reply["duration_ms"] == 4000
        answered = time.monotonic()
        msg = await ws.receive(timeout=IDLE_S * 4)
        waited = time.monotonic() - answered
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000 and msg.extra == "idle timeout", msg
        assert waited >= IDLE_S * 0.9


async def test_operator_audio_cap_is_enforced_and_published(limited):
    async with aiohttp.ClientSession() as http:
        body = {"text": "too long", "max_audio_length_ms": 8080}
        async with http.post(f"http://127.0.0.1:{limited}/synthesize", json=body, headers=auth("key-cap")) as resp:
            err = await resp.json()
            assert resp.status == 422 and err["field"] == "max_audio_length_ms" and "8000" in err["detail"]
        async with http.get(f"http://127.0.0.1:{limited}/openapi.json") as resp:
            spec = await resp.json()
    props = spec["components"]["schemas"]["SynthesizeRequest"]["properties"]
    assert props["max_audio_length_ms"]["maximum"] == 8000


async def test_session_without_auth_is_closed_after_the_auth_timeout(limited):
    url = f"ws://127.0.0.1:{limited}/v1/native/ws/no-auth"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:  # keys on, none sent
        opened = time.monotonic()
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
        assert 0.9 <= time.monotonic() - opened < 5
