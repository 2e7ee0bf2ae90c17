"""Tenants on a real `serve` process with keys on: voices and Twilio calls belong to the tenant
whose key made them (another tenant gets 404, as if they did not exist; an admin key sees all);
each tenant's utterances in flight are capped on every route while other tenants are served; the
gRPC port caps each key; a tenant's voice count is capped; GET /v1/voices pages. Keys off, one
tenant as before, with the in-flight cap per client address."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import numpy as np
import pytest
import soundfile

from csm_service.rpc.client import EngineClient
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.tools.twilio_sim import TwilioSimulator
from csm_service.voices import VoiceStore
from tests.integration.servers import free_port, http_status, metric, start_serve, wait_until

KEY_FILE = """\
# tenants of the test server
key-acme-1 tenant=acme
key-acme-2 tenant=acme   # a second key of the same tenant
key-globex
key-quota tenant=quota
key-pages tenant=pages
key-ops tenant=ops scope=admin
"""
INFLIGHT, VOICES, GRPC_INFLIGHT = 2, 3, 1
LONG_MS = 163_840  # the most a request may ask for: far longer than any test holds it
SHORT = {"text": "short", "max_audio_length_ms": 160}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    keys = tmp / "keys.txt"
    keys.write_text(KEY_FILE)
    grpc_port = free_port()
    flags = ["--max-inflight-per-key", str(INFLIGHT), "--max-voices-per-tenant", str(VOICES)]
    flags += ["--grpc-max-inflight-per-key", str(GRPC_INFLIGHT)]
    proc, port = start_serve(tmp, *flags, env={"CSM_API_KEYS_FILE": str(keys)}, grpc_port=grpc_port)
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "tenant server healthy")
        yield {"url": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}", "data_dir": tmp / f"data-{port}"}
    finally:
        print(proc.log()[-3000:])
        proc.stop()


def recording(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def voice_form(name: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", recording(), filename="v.wav", content_type="audio/wav")
    form.add_field("transcript", "Hello from the front desk.")
    form.add_field("name", name)
    return form


async def create_voice(http: aiohttp.ClientSession, url: str, key: str, name: str) -> tuple[int, dict]:
    async with http.post(f"{url}/v1/voices", data=voice_form(name), headers=bearer(key)) as resp:
        return resp.status, await resp.json()


async def listed_ids(http: aiohttp.ClientSession, url: str, key: str, path: str = "/v1/voices") -> list[str]:
    async with http.get(f"{url}{path}", headers=bearer(key)) as resp:
        assert resp.status == 200, await resp.text()
        return [v.get("voice_id") or v.get("id") for v in (await resp.json())["voices"]]


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Wait for ``condition`` (polled), failing with ``what`` past a generous deadline."""
    end = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_voices_belong_to_their_tenant(tenants):
    url = tenants["url"]
    async with aiohttp.ClientSession() as http:
        status, voice = await create_voice(http, url, "key-acme-1", "Acme Front Desk")
        assert status == 201 and voice["shared"] is False, voice
        vid = voice["voice_id"]
        # The same tenant, by another key, sees and uses it.
        assert vid in await listed_ids(http, url, "key-acme-2")
        async with http.get(f"{url}/v1/voices/{vid}", headers=bearer("key-acme-2")) as resp:
            assert resp.status == 200
        # Another tenant: 404 exactly like an id that does not exist, never 403 (ids cannot be probed).
        async with http.get(f"{url}/v1/voices/{vid}", headers=bearer("key-globex")) as resp:
            other = (resp.status, await resp.json())
        missing = "voice_" + "0" * 16
        async with http.get(f"{url}/v1/voices/{missing}", headers=bearer("key-globex")) as resp:
            nothing = (resp.status, await resp.json())
        assert other[0] == nothing[0] == 404
        assert other[1]["detail"].replace(vid, missing) == nothing[1]["detail"]
        assert vid not in await listed_ids(http, url, "key-globex")
        assert vid not in await listed_ids(http, url, "key-globex", "/v1/audio/voices")
        async with http.delete(f"{url}/v1/voices/{vid}", headers=bearer("key-globex")) as resp:
            assert resp.status == 404
        # ... nor can it speak with it: the same "unknown voice" as any unknown id, on every route.
        body = {**SHORT, "voice_profile_id": vid}
        async with http.post(f"{url}/synthesize", json=body, headers=bearer("key-globex")) as resp:
            assert resp.status == 422 and (await resp.json())["detail"].startswith("Unknown voice profile")
        for voice_field in (vid, "Acme Front Desk"):
            speech = {"model": "tts-1", "input": "hi", "voice": voice_field, "response_format": "pcm"}
            async with http.post(f"{url}/v1/audio/speech", json=speech, headers=bearer("key-globex")) as resp:
                assert resp.status == 400 and "unknown voice" in (await resp.json())["error"]["message"]
        async with http.ws_connect(f"{url}/v1/native/ws/globex", headers=bearer("key-globex")) as ws:
            await ws.send_json({"type": "synthesize", **body})
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "error" and reply["error"] == "Unknown voice profile", reply
            await ws.send_json({"type": "synthesize", **SHORT})  # the built-in default is everyone's
            assert (await ws.receive_json(timeout=60))["type"] == "audio"
        # Its owner speaks with it, by id and (OpenAI) by name.
        async with http.post(f"{url}/synthesize", json=body, headers=bearer("key-acme-2")) as resp:
            assert resp.status == 200
        speech = {"model": "tts-1", "input": "hi", "voice": "acme front desk", "response_format": "pcm"}
        speech["max_audio_length_ms"] = 160
        async with http.post(f"{url}/v1/audio/speech", json=speech, headers=bearer("key-acme-1")) as resp:
            assert resp.status == 200 and len(await resp.read()) > 0
        # The admin sees every tenant's voices, and may delete them.
        status, theirs = await create_voice(http, url, "key-globex", "Globex")
        assert status == 201
        admin_view = await listed_ids(http, url, "key-ops")
        assert vid in admin_view and theirs["voice_id"] in admin_view
        async with http.get(f"{url}/v1/voices/{vid}", headers=bearer("key-ops")) as resp:
            assert resp.status == 200
        async with http.delete(f"{url}/v1/voices/{theirs['voice_id']}", headers=bearer("key-ops")) as resp:
            assert resp.status == 204
    # The gRPC port holds its callers to the same rule: the engine resolves the id for the caller's tenant.
    request = pb.SynthesizeRequest(text="grpc", max_audio_length_ms=160, voice_profile_id=vid)
    for key, ok in (("key-globex", False), ("key-acme-1", True)):
        client = EngineClient(tenants["grpc"], metadata=(("authorization", f"Bearer {key}"),))
        try:
            if ok:
                assert (await client.synthesize(request, timeout=60)).num_frames == 2
            else:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.synthesize(request, timeout=60)
                assert (
                    info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no voice profile" in info.value.details()
                )
        finally:
            await client.close()


async def test_calls_belong_to_their_tenant(tenants):
    url = tenants["url"]
    sid = "MZ" + "a" * 32
    stream = url.replace("http", "ws") + "/v1/twilio/media-stream"
    calls = f"{url}/v1/calls"
    async with TwilioSimulator(stream, sid, {"api_key": "key-acme-1"}) as twilio, aiohttp.ClientSession() as http:

        async def call_of(key: str) -> tuple[int, dict]:
            async with http.get(f"{calls}/{sid}", headers=bearer(key)) as resp:
                return resp.status, await resp.json()

        async def listed(key: str) -> list[str]:
            async with http.get(calls, headers=bearer(key)) as resp:
                return [c["stream_sid"] for c in (await resp.json())["calls"]]

        await until(lambda: _true_if(listed("key-acme-2"), [sid]), 30, "the call is registered")
        await twilio.dtmf("7")  # the caller types a PIN digit
        await until(lambda: _dtmf_is(call_of("key-acme-2"), "7"), 30, "the digit is recorded")
        # Another tenant: the call does not exist for it.
        assert await listed("key-globex") == []
        status, body = await call_of("key-globex")
        assert status == 404 and body["error"] == "Not Found" and "7" not in str(body)
        for action, payload in (("say", {"text": "hijacked"}), ("clear", {})):
            async with http.post(f"{calls}/{sid}/{action}", json=payload, headers=bearer("key-globex")) as resp:
                assert resp.status == 404, (action, await resp.text())
        # Its tenant (either key) and the admin see it; its tenant speaks on it.
        assert sid in await listed("key-ops") and (await call_of("key-ops"))[1]["dtmf"] == "7"
        say = {"text": "from acme", "max_audio_length_ms": 160}
        async with http.post(f"{calls}/{sid}/say", json=say, headers=bearer("key-acme-2")) as resp:
            assert resp.status == 202
        assert [u["text"] for u in (await call_of("key-acme-1"))[1]["utterances"]] == ["from acme"]


async def _true_if(listing: Awaitable[list[str]], wanted: list[str]) -> bool:
    return await listing == wanted


async def _dtmf_is(call: Awaitable[tuple[int, dict]], digits: str) -> bool:
    status, body = await call
    return status == 200 and body["dtmf"] == digits


async def _hold(http: aiohttp.ClientSession, url: str, key: str, name: str) -> aiohttp.ClientWebSocketResponse:
    """A session with one long utterance streaming: in flight until the session cancels it. (One
    per session: a session answers in order, so a second one's audio would wait for the first's.)"""
    ws = await http.ws_connect(f"{url}/v1/native/ws/{name}", headers=bearer(key))
    await ws.send_json(
        {"type": "synthesize", "text": "a long one", "stream": True, "max_audio_length_ms": LONG_MS, "request_id": name}
    )
    reply = await ws.receive_json(timeout=60)
    assert reply["type"] == "audio" and reply["request_id"] == name, reply
    return ws


async def test_utterances_in_flight_are_capped_per_tenant_on_every_route(tenants):
    url = tenants["url"]
    sid = "MZ" + "b" * 32
    stream = url.replace("http", "ws") + "/v1/twilio/media-stream"
    async with aiohttp.ClientSession() as http, TwilioSimulator(stream, sid, {"api_key": "key-acme-2"}):
        holders = [await _hold(http, url, "key-acme-1", f"acme-holds-{i}") for i in range(INFLIGHT)]
        ws = holders[0]  # acme's whole allowance is held

        async def refused_everywhere() -> None:
            # HTTP, by the tenant's other key: 429 with Retry-After.
            async with http.post(f"{url}/synthesize", json=SHORT, headers=bearer("key-acme-2")) as resp:
                body = await resp.json()
                assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1, body
                assert f"at most {INFLIGHT} utterances in flight per tenant" in body["detail"]
            # The WebSocket: an error with retry_after_ms; the session stays open.
            await ws.send_json({"type": "synthesize", **SHORT, "request_id": "one-more"})
            reply = await ws.receive_json(timeout=30)
            while reply["type"] == "audio":  # the held streams go on meanwhile
                reply = await ws.receive_json(timeout=30)
            assert reply["error"] == "Too many requests in flight" and reply["retry_after_ms"] >= 1000, reply
            # OpenAI's route: 429 rate_limit_error.
            speech = {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "pcm"}
            async with http.post(f"{url}/v1/audio/speech", json=speech, headers=bearer("key-acme-1")) as resp:
                assert resp.status == 429 and (await resp.json())["error"]["type"] == "rate_limit_error"
            # A Twilio call of the tenant: say is 429.
            async with http.post(f"{url}/v1/calls/{sid}/say", json=SHORT, headers=bearer("key-acme-2")) as resp:
                assert resp.status == 429, await resp.text()

        await until(lambda: _call_listed(http, url, sid), 30, "the call is registered")
        await refused_everywhere()
        # Meanwhile another tenant is served, on HTTP and on the WebSocket.
        async with http.post(f"{url}/synthesize", json=SHORT, headers=bearer("key-globex")) as resp:
            assert resp.status == 200
        async with http.ws_connect(f"{url}/v1/native/ws/globex-served", headers=bearer("key-globex")) as other:
            await other.send_json({"type": "synthesize", **SHORT})
            assert (await other.receive_json(timeout=60))["type"] == "audio"
        await refused_everywhere()  # acme's utterances were in flight the whole time
        # Cancelled, they give their places back at once.
        for holder in holders:
            await holder.send_json({"type": "cancel"})
        await until(lambda: _synthesizes(http, url, "key-acme-2"), 60, "acme is served again")
        for holder in holders:
            await holder.close()


async def _call_listed(http: aiohttp.ClientSession, url: str, sid: str) -> bool:
    async with http.get(f"{url}/v1/calls", headers=bearer("key-acme-1")) as resp:
        return sid in [c["stream_sid"] for c in (await resp.json())["calls"]]


async def _synthesizes(http: aiohttp.ClientSession, url: str, key: str) -> bool:
    async with http.post(f"{url}/synthesize", json=SHORT, headers=bearer(key)) as resp:
        assert resp.status in (200, 429), await resp.text()
        return resp.status == 200


async def test_grpc_port_caps_each_key(tenants):
    def client(key: str) -> EngineClient:
        return EngineClient(tenants["grpc"], metadata=(("authorization", f"Bearer {key}"),))

    long = pb.SynthesizeRequest(
        text="held on the gRPC port", max_audio_length_ms=LONG_MS, encoding=pb.AUDIO_ENCODING_MULAW_8KHZ
    )
    globex, acme, ops = client("key-globex"), client("key-acme-1"), client("key-ops")
    held = []
    try:
        held.append(globex.synthesize_stream(long, timeout=120))
        await held[-1].read()  # globex's one call in flight
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await globex.synthesize(pb.SynthesizeRequest(text="one more", max_audio_length_ms=160), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {GRPC_INFLIGHT}" in info.value.details()
        # Another key is served meanwhile; an admin key (an edge's) is not capped.
        held.append(acme.synthesize_stream(long, timeout=120))
        await held[-1].read()
        for _ in range(2):
            held.append(ops.synthesize_stream(long, timeout=120))
            await held[-1].read()
        # The edge in front (serve's own, internal key) is not held to globex's gRPC cap either.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{tenants['url']}/synthesize", json=SHORT, headers=bearer("key-globex")) as resp:
                assert resp.status == 200
        held.pop(0).cancel()  # globex's place comes back once its call ends
        request = pb.SynthesizeRequest(text="again", max_audio_length_ms=160)

        async def globex_served() -> bool:
            try:
                return (await globex.synthesize(request, timeout=60)).num_frames == 2
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        await until(globex_served, 30, "globex served again on gRPC")
    finally:
        for call in held:
            call.cancel()
        for c in (globex, acme, ops):
            await c.close()


async def test_voice_count_is_capped_per_tenant(tenants):
    url = tenants["url"]
    async with aiohttp.ClientSession() as http:
        made = []
        for i in range(VOICES):
            status, voice = await create_voice(http, url, "key-quota", f"quota {i}")
            assert status == 201, voice
            made.append(voice["voice_id"])
        status, body = await create_voice(http, url, "key-quota", "one too many")
        assert status == 409 and body["detail"].startswith(f"Voice limit reached: at most {VOICES}"), body
        status, _ = await create_voice(http, url, "key-acme-2", "another tenant")  # others are not affected
        assert status == 201
        async with http.delete(f"{url}/v1/voices/{made[0]}", headers=bearer("key-quota")) as resp:
            assert resp.status == 204
        status, _ = await create_voice(http, url, "key-quota", "room again")
        assert status == 201


async def test_pages_walk_every_voice(tenants):
    url = tenants["url"]
    async with aiohttp.ClientSession() as http:
        own = []
        for i in range(VOICES):
            status, voice = await create_voice(http, url, "key-pages", f"page {i}")
            assert status == 201, voice
            own.append(voice["voice_id"])

        async def walk(key: str, limit: int) -> list[str]:
            seen, cursor, pages = [], None, 0
            while True:
                query = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
                async with http.get(f"{url}/v1/voices", params=query, headers=bearer(key)) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                ids = [v["voice_id"] for v in body["voices"]]
                assert (ids[0] == "default") == (pages == 0)  # the built-in default opens the first page
                stored = [i for i in ids if i != "default"]
                assert len(stored) <= limit
                seen += stored
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    return seen

        store = VoiceStore(tenants["data_dir"])
        try:
            everything = store.ids()  # every tenant's, in the listing's order
        finally:
            store.close()
        assert len(everything) > VOICES
        for limit in (1, 2):
            assert await walk("key-pages", limit) == own  # its own, in order, each once
            assert await walk("key-ops", limit) == everything  # the admin: every tenant's
        # Without a limit: the first page is the whole list, as before pagination (null cursor).
        async with http.get(f"{url}/v1/voices", headers=bearer("key-pages")) as resp:
            body = await resp.json()
        assert [v["voice_id"] for v in body["voices"]] == ["default", *own] and body["next_cursor"] is None
        for query in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"cursor": "not a cursor"}):
            async with http.get(f"{url}/v1/voices", params=query, headers=bearer("key-pages")) as resp:
                assert resp.status == 400, query


async def test_keys_off_one_tenant_and_the_cap_per_client_address(tmp_path):
    """Keys off: everything is one tenant as before (anyone sees and deletes any voice, lists any
    call); the in-flight cap counts per client address, so another address is still served."""
    proc, port = start_serve(tmp_path, "--max-inflight-per-peer", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until, lambda: http_status(port, "/health") == 200, 120, "keys-off server")
        async with aiohttp.ClientSession() as http:
            status, voice = await create_voice(http, url, "", "Open")
            assert status == 201 and voice["shared"] is True
            async with http.get(f"{url}/v1/voices/{voice['voice_id']}") as resp:
                assert resp.status == 200
            long_body = {"text": "held", "max_audio_length_ms": LONG_MS}
            held = asyncio.ensure_future(http.post(f"{url}/synthesize", json=long_body))

            async def refused() -> bool:
                async with http.post(f"{url}/synthesize", json=SHORT) as resp:
                    return resp.status == 429

            running = lambda: metric(port, "csm_engine_active_streams") >= 1  # noqa: E731
            await asyncio.to_thread(wait_until, running, 60, "the long utterance running")
            assert await refused()  # this address's one utterance is in flight
            # Another client address (127.0.0.2 is loopback too) is served meanwhile.
            other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=other) as second:
                async with second.post(f"{url}/synthesize", json=SHORT) as resp:
                    assert resp.status == 200
            assert await refused()
            held.cancel()
            await until(lambda: _synthesizes(http, url, ""), 60, "served again after the hang-up")
            async with http.delete(f"{url}/v1/voices/{voice['voice_id']}") as resp:
                assert resp.status == 204
    finally:
        proc.stop()
