"""Bad input on the WebSocket gets a clear error and the session keeps working; the edge alone
(no worker serving) answers "Model not loaded"; the edge process never loads torch."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.integration.servers import async_wait_until, http_status, metric, start_edge, start_engine, wait_until

BAD_MESSAGES = [
    # (what is sent, the error text, the detail must mention)
    ("{not json", "Invalid message format", "invalid JSON"),
    (b"\x00\x01binary", "Invalid message format", "binary"),
    ("[1, 2, 3]", "Invalid message format", "type"),
    ('"just a string"', "Invalid message format", "type"),
    ('{"text": "no type"}', "Invalid message format", "type"),
    ('{"type": 5}', "Invalid message format", "type"),
    ('{"type": "dance"}', "Unknown message type", "dance"),
    ('{"type": "synthesize"}', "Empty text", "text"),
    ('{"type": "synthesize", "text": ""}', "Empty text", "text"),
    ('{"type": "synthesize", "text": " \\n\\t "}', "Empty text", "text"),
    ('{"type": "synthesize", "text": 42}', "Invalid message format", "text"),
    ('{"type": "synthesize", "text": ["a"]}', "Invalid message format", "text"),
    ('{"type": "synthesize", "text": "hi", "speaker": "zero"}', "Invalid message format", "speaker"),
    ('{"type": "synthesize", "text": "hi", "speaker": true}', "Invalid message format", "speaker"),
    ('{"type": "synthesize", "text": "hi", "stream": "yes"}', "Invalid message format", "stream"),
    ('{"type": "synthesize", "text": "hi", "max_audio_length_ms": 5}', "Invalid message format", "max_audio_length_ms"),
    ('{"type": "synthesize", "text": "hi", "seed": -1}', "Invalid message format", "seed"),
    ('{"type": "synthesize", "text": "hi", "request_id": 7}', "Invalid message format", "request_id"),
    ('{"type": "synthesize", "text": "hi", "voice_profile_id": "ghost"}', "Unknown voice profile", "ghost"),
    (json.dumps({"type": "synthesize", "text": "x" * 501}), "Text too long", "500"),
    (json.dumps({"type": "synthesize", "text": "hi", "pad": "x" * 5000}), "Message too large", "4096"),
    ('{"type": "cancel", "request_id": 3}', "Invalid message format", "request_id"),
    ("[" * 4000, "Invalid message format", "nested"),  # issue 16: once a RecursionError that ended the session
    ('{"type": "synthesize", "text": "\\ud800"}', "Invalid message format", "surrogate"),
]


async def test_each_bad_message_gets_its_error_and_the_session_survives(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-bad")) as ws:
        for data, error, mention in BAD_MESSAGES:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "error" and reply["error"] == error, (data[:80], reply)
            assert mention in json.dumps(reply), (data[:80], reply)
        await ws.send_json({"type": "synthesize", "text": "still here", "max_audio_length_ms": 160})
        reply = await ws.receive_json(timeout=60)
        assert reply["type"] == "audio" and reply["duration_ms"] == 160


async def test_request_id_is_echoed_on_errors(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-bad-id")) as ws:
        await ws.send_json({"type": "synthesize", "text": "", "request_id": "r-9"})
        assert (await ws.receive_json(timeout=10))["request_id"] == "r-9"


@pytest.fixture(scope="module")
def lonely_edge(tmp_path_factory):
    """An edge whose only engine address has nothing listening."""
    from tests.integration.servers import free_port

    proc, port = start_edge(tmp_path_factory.mktemp("edge"), f"127.0.0.1:{free_port()}")
    try:
        wait_until(lambda: http_status(port, "/health") in (200, 503), 60, "edge up")
        yield proc, port
    finally:
        print(proc.log()[-2000:])
        proc.stop()


async def test_no_worker_means_model_not_loaded(lonely_edge):
    _, port = lonely_edge
    url = f"http://127.0.0.1:{port}"
    assert http_status(port, "/ping") == 204  # RunPod: still initializing
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            body = await resp.json()
            assert resp.status == 503
            assert body["status"] == "loading" and body["model_loaded"] is False and "device" in body
        async with http.post(url + "/synthesize", json={"text": "anyone?"}) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["error"] == "Service Unavailable"
            assert body["detail"].startswith("Model not loaded")
        async with http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/call-lonely") as ws:
            await ws.send_json({"type": "synthesize", "text": "anyone?", "voice_profile_id": "default"})
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "error" and reply["error"] == "Model not loaded"
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=10) == {"type": "pong"}


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_edge_alone_in_front_of_an_engine_worker_without_torch(tmp_path):
    engine, grpc_port, metrics_port = start_engine(tmp_path)
    edge, port = start_edge(tmp_path, f"127.0.0.1:{grpc_port}")
    try:
        await async_wait_until(lambda: metric(metrics_port, "csm_engine_ready") == 1.0, 120, "engine ready")
        await async_wait_until(lambda: http_status(port, "/health") == 200, 60, "edge healthy")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert (await resp.json())["device"] == "cpu"
            body = {"text": "through the edge", "max_audio_length_ms": 320, "output_format": "mulaw"}
            async with http.post(f"http://127.0.0.1:{port}/synthesize", json=body) as resp:
                assert resp.status == 200 and (await resp.json())["duration_ms"] == 320
        assert "libtorch" in _maps(engine.proc.pid)  # the check can see torch where it is loaded
        assert "libtorch" not in _maps(edge.proc.pid)
    finally:
        edge.stop()
        engine.stop()
