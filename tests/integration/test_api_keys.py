"""API keys on a real `serve` process: HTTP Bearer, the three WebSocket ways, gRPC metadata, and
what stays open (/health, gRPC health)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.servers import free_port, http_status, start_serve, wait_until

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    keys_file = tmp / "keys.txt"
    keys_file.write_text("# operators' keys\nkey-two\n")
    grpc_port = free_port()
    env = {"CSM_API_KEYS": KEYS[0], "CSM_API_KEYS_FILE": str(keys_file)}
    proc, port = start_serve(tmp, env=env, grpc_port=grpc_port)
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "keyed serve healthy")  # /health stays open
        yield port, grpc_port
    finally:
        print(proc.log()[-2000:])
        proc.stop()


BODY = {"text": "with a key", "max_audio_length_ms": 160}


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": "Basic a2V5LW9uZQ=="}, 401),
        ({"Authorization": f"Bearer {KEYS[0]}"}, 200),
        ({"Authorization": f"bearer {KEYS[1]}"}, 200),  # the key from the file
    ],
)
async def test_http_bearer(keyed, headers, status):
    port, _ = keyed
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/synthesize", json=BODY, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == status, body
            if status == 401:
                assert body["error"] == "Unauthorized" and resp.headers["WWW-Authenticate"] == "Bearer"


async def test_websocket_key_in_header_or_query(keyed):
    port, _ = keyed
    url = f"ws://127.0.0.1:{port}/v1/native/ws/keyed"
    async with aiohttp.ClientSession() as http:
        for kwargs in ({"headers": {"Authorization": f"Bearer {KEYS[0]}"}}, {"params": {"api_key": KEYS[1]}}):
            async with http.ws_connect(url, **kwargs) as ws:
                await ws.send_json({"type": "synthesize", "text": "hi", "max_audio_length_ms": 80})
                assert (await ws.receive_json(timeout=30))["type"] == "audio"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, params={"api_key": "wrong"})
        assert info.value.status == 401


async def test_websocket_auth_message(keyed):
    port, _ = keyed
    url = f"ws://127.0.0.1:{port}/v1/native/ws/keyed-msg"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_json({"type": "auth", "api_key": KEYS[0]})
            assert await ws.receive_json(timeout=10) == {"type": "authenticated"}
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=10) == {"type": "pong"}
        for first in ({"type": "auth", "api_key": "wrong"}, {"type": "synthesize", "text": "no key"}):
            async with http.ws_connect(url) as ws:
                await ws.send_json(first)
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


async def test_grpc_needs_metadata_but_health_is_open(keyed):
    from csm_service.rpc.client import EngineClient
    from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

    _, grpc_port = keyed
    request = pb.SynthesizeRequest(text="grpc with a key", max_audio_length_ms=160)
    bare = EngineClient(f"127.0.0.1:{grpc_port}")
    keyed_client = EngineClient(f"127.0.0.1:{grpc_port}", metadata=(("authorization", f"Bearer {KEYS[1]}"),))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bare.synthesize(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in bare.stream_chunks(request, timeout=30):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await keyed_client.synthesize(request, timeout=30)).num_frames == 2
        x_api_key = EngineClient(f"127.0.0.1:{grpc_port}", metadata=(("x-api-key", KEYS[0]),))
        assert (await x_api_key.synthesize(request, timeout=30)).num_frames == 2
        await x_api_key.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # probes carry no key
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await bare.close()
        await keyed_client.close()


async def test_twilio_stream_key_in_custom_parameters_and_control_api_bearer(keyed):
    """Twilio sends no Authorization header and its stream URL takes no query string, so the key
    comes as <Parameter name="api_key">; without a valid one the stream is closed with 1008."""
    from csm_service.tools.twilio_sim import TwilioSimulator

    port, _ = keyed
    url = f"ws://127.0.0.1:{port}/v1/twilio/media-stream"
    for custom in ({}, {"api_key": "nope"}):
        twilio = TwilioSimulator(url, "MZ" + "d" * 32, custom)
        async with twilio:
            assert await twilio.closed() == 1008
    calls = f"http://127.0.0.1:{port}/v1/calls"
    async with TwilioSimulator(url, "MZ" + "e" * 32, {"api_key": KEYS[1]}), aiohttp.ClientSession() as http:
        async with http.get(calls) as resp:
            assert resp.status == 401  # the control API needs the bearer key like every other route
        bearer = {"Authorization": f"Bearer {KEYS[1]}"}  # the key that started the call: its tenant owns it
        end = time.monotonic() + 30  # until the call is registered (a generous deadline, not a count)
        while True:
            async with http.get(calls, headers=bearer) as resp:
                listed = [c["stream_sid"] for c in (await resp.json())["calls"]]
            if listed or time.monotonic() > end:
                break
            await asyncio.sleep(0.05)
        assert listed == ["MZ" + "e" * 32]
        say = {"text": "keyed call", "max_audio_length_ms": 160}
        async with http.post(f"{calls}/{listed[0]}/say", json=say, headers=bearer) as resp:
            assert resp.status == 202
