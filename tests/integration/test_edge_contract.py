"""The seed contract (CSM Voice API Reference), endpoint by endpoint, against `csm-service serve`.

Every field, default, format, status code, message type and error text of
`shared/seeds/003_11c37e0092a8f94d.txt` is checked here on a real server on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave

import aiohttp
import pytest

SEED_AUDIO_KEYS = {"type", "audio_base64", "duration_ms", "generation_time_ms", "format"}


async def post(served, body: object, raw: bytes | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else json.dumps(body).encode()
        async with http.post(
            served.url + "/synthesize", data=data, headers={"Content-Type": "application/json"}
        ) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


def decode_wav(b64: str) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(base64.b64decode(b64)), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


async def test_health(served):
    async with aiohttp.ClientSession() as http, http.get(served.url + "/health") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "healthy" and body["model_loaded"] is True and body["device"] == "cpu"
    assert body["model"] == "tiny-random" and body["engine"]["max_batch"] >= 1


def test_ping_on_the_health_port(served):
    from tests.integration.servers import http_status

    assert http_status(served.port, "/ping") == 200
    assert http_status(served.health_port, "/ping") == 200  # RunPod's PORT_HEALTH
    assert http_status(served.health_port, "/health") == 200


async def test_synthesize_curl_example_wav(served):
    # The seed's curl example, verbatim body.
    status, body, _ = await post(served, {"text": "Hello world", "max_audio_length_ms": 5000})
    assert status == 200
    assert {"audio_base64", "sample_rate", "duration_ms", "generation_time_ms", "format"} <= set(body)
    assert body["format"] == "wav" and body["sample_rate"] == 24000
    rate, channels, width, frames = decode_wav(body["audio_base64"])
    assert (rate, channels, width) == (24000, 1, 2)
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] == round(frames / 24)
    assert 0 < body["duration_ms"] <= 5000  # never longer than max_audio_length_ms
    assert isinstance(body["generation_time_ms"], int) and body["generation_time_ms"] > 0


async def test_synthesize_mulaw(served):
    status, body, _ = await post(
        served, {"text": "Hello world", "max_audio_length_ms": 800, "output_format": "mulaw", "seed": 1}
    )
    assert status == 200
    assert body["format"] == "mulaw_8khz" and body["sample_rate"] == 8000
    audio = base64.b64decode(body["audio_base64"])
    assert not audio.startswith(b"RIFF")  # raw G.711, no header: ready for Twilio
    assert len(audio) == 6400 and body["duration_ms"] == 800  # 8000 bytes per second


async def test_defaults_http_and_seed_python_websocket_example(served):
    """No max_audio_length_ms: 30000 ms (tiny-random never ends early), speaker 0, wav; the seed's
    own Python WebSocket client, run as written (only the URL points at this server)."""
    import websockets

    async def csm_client(session_id: str, text: str):
        url = served.ws_url(session_id)

        async with websockets.connect(url, max_size=None) as ws:
            # Send synthesis request
            await ws.send(json.dumps({"type": "synthesize", "text": text, "voice_profile_id": "default"}))

            # Wait for audio response
            response = await ws.recv()
            message = json.loads(response)

            if message["type"] == "audio":
                print(f"Generated {message['duration_ms']}ms of audio")
                return message
            elif message["type"] == "error":
                raise Exception(message["error"])

    (status, body, _), message = await asyncio.gather(post(served, {"text": "Hi"}), csm_client("session-123", "Hi"))
    assert status == 200 and body["format"] == "wav" and body["duration_ms"] == 30000
    assert decode_wav(body["audio_base64"])[3] == 30 * 24000
    assert set(message) == SEED_AUDIO_KEYS  # a seed client sees exactly the seed's fields
    assert message["format"] == "mulaw_8khz" and message["duration_ms"] == 30000
    assert len(base64.b64decode(message["audio_base64"])) == 30 * 8000


async def test_speaker_and_seed_reach_the_engine(served):
    def body(**kw):
        return {"text": "Same words", "max_audio_length_ms": 400, "output_format": "mulaw", "seed": 5, **kw}

    results = await asyncio.gather(
        post(served, body()), post(served, body()), post(served, body(speaker=1)), post(served, body(seed=6))
    )
    a, a_again, other_speaker, other_seed = (r[1]["audio_base64"] for r in results)
    assert a == a_again  # same seed, same request: same audio
    assert a != other_speaker and a != other_seed
    assert results[0][1]["seed"] == 5


@pytest.mark.parametrize(
    "body, status, error, field",
    [
        (b'{"text": "unterminated', 400, "Bad Request", None),
        (b"[1, 2]", 400, "Bad Request", None),
        ({"speaker": 1}, 400, "Bad Request", "text"),
        ({"text": None}, 400, "Bad Request", "text"),
        ({"text": 5}, 422, "Validation Error", "text"),
        ({"text": ""}, 422, "Validation Error", "text"),
        ({"text": "   "}, 422, "Validation Error", "text"),
        ({"text": "x" * 501}, 422, "Validation Error", "text"),
        ({"text": "hi", "speaker": "one"}, 422, "Validation Error", "speaker"),
        ({"text": "hi", "speaker": -1}, 422, "Validation Error", "speaker"),
        ({"text": "hi", "max_audio_length_ms": "long"}, 422, "Validation Error", "max_audio_length_ms"),
        ({"text": "hi", "max_audio_length_ms": 10}, 422, "Validation Error", "max_audio_length_ms"),
        ({"text": "hi", "max_audio_length_ms": 10**7}, 422, "Validation Error", "max_audio_length_ms"),
        ({"text": "hi", "output_format": "mp3"}, 422, "Validation Error", "output_format"),
        ({"text": "hi", "voice_profile_id": "nobody"}, 422, "Validation Error", "voice_profile_id"),
        ({"text": "hi", "temperature": "hot"}, 422, "Validation Error", "temperature"),
        ({"text": "hi", "temperature": 0}, 422, "Validation Error", "temperature"),
        ({"text": "hi", "top_k": 0}, 422, "Validation Error", "top_k"),
    ],
)
async def test_synthesize_errors(served, body, status, error, field):
    got_status, got, _ = await post(
        served, None if isinstance(body, bytes) else body, body if isinstance(body, bytes) else None
    )
    assert got_status == status, got
    assert got["error"] == error and got["detail"]
    assert got.get("field") == field


async def test_oversized_body_is_413_json(served):
    status, body, _ = await post(served, {"text": "hi", "padding": "x" * 70_000})
    assert status == 413 and body["error"] == "Payload Too Large"


async def test_unknown_route_and_method_are_json(served):
    async with aiohttp.ClientSession() as http:
        async with http.get(served.url + "/nope") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "Not Found"
        async with http.get(served.url + "/synthesize") as resp:
            assert resp.status == 405 and (await resp.json())["error"] == "Method Not Allowed"
            assert "POST" in resp.headers["Allow"]  # RFC 9110: a 405 lists what is allowed
        async with http.get(served.url + "/v1/native/ws/plain-get") as resp:
            assert resp.status == 426 and resp.headers["Upgrade"] == "websocket"
            assert "WebSocket" in (await resp.json())["detail"]


async def test_websocket_ping_pong_and_close(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-ping")) as ws:
        await ws.send_json({"type": "ping"})
        assert await ws.receive_json(timeout=10) == {"type": "pong"}
        await ws.send_json({"type": "close"})
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1000


async def test_websocket_audio_message(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-audio")) as ws:
        await ws.send_json(
            {
                "type": "synthesize",
                "text": "Hello, how are you?",
                "voice_profile_id": "default",
                "max_audio_length_ms": 800,
            }
        )
        message = await ws.receive_json(timeout=60)
    assert set(message) == SEED_AUDIO_KEYS
    assert message["type"] == "audio" and message["format"] == "mulaw_8khz"
    assert message["duration_ms"] == 800 and len(base64.b64decode(message["audio_base64"])) == 6400
    assert isinstance(message["generation_time_ms"], int) and message["generation_time_ms"] > 0


async def test_websocket_seed_error_texts(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("call-errors")) as ws:
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=10))["error"] == "Invalid message format"
        await ws.send_json({"type": "synthesize", "text": ""})
        assert (await ws.receive_json(timeout=10))["error"] == "Empty text"
        await ws.send_json({"type": "synthesize", "voice_profile_id": "default"})
        assert (await ws.receive_json(timeout=10))["error"] == "Empty text"
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=10)) == {"type": "pong"}  # still working


async def test_metrics(served):
    await post(served, {"text": "count me", "max_audio_length_ms": 160})
    async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    for name in (
        'csm_edge_requests_total{endpoint="synthesize",outcome="ok"}',
        "csm_edge_time_to_first_audio_seconds_bucket",
        "csm_edge_real_time_factor_bucket",
        "csm_edge_websocket_sessions_active",
        "csm_engine_frames_generated_total",
        "csm_engine_queue_depth",
    ):
        assert name in text, name
    assert served.metric('csm_edge_requests_total{endpoint="synthesize",outcome="ok"}') >= 1


async def test_openapi_and_docs(served):
    async with aiohttp.ClientSession() as http:
        async with http.get(served.url + "/openapi.json") as resp:
            spec = await resp.json()
        async with http.get(served.url + "/docs") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
    assert spec["openapi"].startswith("3.1")
    assert {"/health", "/synthesize", "/v1/native/ws/{session_id}", "/metrics"} <= set(spec["paths"])
    request_schema = spec["components"]["schemas"]["SynthesizeRequest"]
    assert request_schema["required"] == ["text"]
    assert request_schema["properties"]["max_audio_length_ms"]["default"] == 30000
    assert request_schema["properties"]["output_format"]["default"] == "wav"
    for path in spec["paths"]:
        assert path in page


LONG = "First a short sentence. Then another one follows it here. And a third, so the text comes in pieces."


@pytest.mark.parametrize(
    ("output_format", "bytes_per_ms"), [("mulaw", 8), ("alaw", 8), ("pcm16_8khz", 16), ("pcm16_24khz", 48)]
)
async def test_duration_ms_is_the_length_of_the_bytes_returned(served, output_format, bytes_per_ms):
    """duration_ms is what the returned audio lasts, to the ms, also for 8 kHz audio made in pieces
    (each piece's chunks were once summed: 4962 ms for 4960 ms of bytes)."""
    body = {"text": LONG, "max_audio_length_ms": 4960, "output_format": output_format, "seed": 3, "raw_text": True}
    status, reply, _ = await post(served, body)
    assert status == 200, reply
    assert reply["pieces"] > 1  # the served fixture's --max-piece-chars 60 splits the text
    audio = base64.b64decode(reply["audio_base64"])
    assert reply["duration_ms"] == round(len(audio) / bytes_per_ms), (len(audio), reply["duration_ms"])


async def test_seeds_past_2_53_round_trip_as_decimal_strings(served):
    """JavaScript holds integers exactly only up to 2**53: a seed also comes back as ``seed_str`` and
    may be sent as a decimal string, which is the same seed as the integer."""
    big = 2**53 + 1  # JSON.parse reads it as 2**53

    def body(seed: object) -> dict:
        return {"text": "Same words", "max_audio_length_ms": 400, "output_format": "mulaw", "seed": seed}

    (_, as_int, _), (_, as_str, _), (_, rounded, _), (_, drawn, _) = await asyncio.gather(
        post(served, body(big)),
        post(served, body(str(big))),
        post(served, body(2**53)),
        post(served, {"text": "Hi", "max_audio_length_ms": 400}),
    )
    assert as_int["seed"] == as_str["seed"] == big and as_int["seed_str"] == as_str["seed_str"] == str(big)
    assert as_int["audio_base64"] == as_str["audio_base64"] != rounded["audio_base64"]
    assert drawn["seed_str"] == str(drawn["seed"])  # a drawn seed (63 bits) too
    for bad in ("9223372036854775808", "-1", "007", "1e3", " 5"):
        status, reply, _ = await post(served, body(bad))
        assert status == 422 and reply["field"] == "seed", (bad, reply)
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("seed-str")) as ws:
        await ws.send_json(
            {"type": "synthesize", "text": "Hi", "seed": str(big), "stream": True, "max_audio_length_ms": 160}
        )
        while (message := await ws.receive_json(timeout=60))["type"] != "done":
            assert message["type"] == "audio", message
    assert message["seed"] == big and message["seed_str"] == str(big)
