"""OpenAI-compatible speech on a real server, driven by the official ``openai`` Python client.

The same seed gives the same engine codes whichever API asks, so every format is checked against
the native ``/synthesize`` audio: raw PCM byte for byte, WAV's samples, FLAC's (lossless) decoded
samples, mu-law byte for byte; MP3 and Opus decode to 24 kHz audio of the right length.
"""

from __future__ import annotations

import base64
import io
import json

import aiohttp
import numpy as np
import openai
import pytest
import soundfile

from tests.integration.test_voices import recording, upload

SAY = "Hello there, thanks for calling."
EXTRA = {"seed": 11, "max_audio_length_ms": 800, "raw_text": True}


OPEN_CLIENTS: list[openai.AsyncOpenAI] = []


def client(served) -> openai.AsyncOpenAI:
    made = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="not-needed-here", max_retries=0)
    OPEN_CLIENTS.append(made)
    return made


@pytest.fixture(autouse=True)
async def close_clients():
    """Close the test's clients on its own event loop. One left open is closed by its ``__del__``
    whenever the collector reaches it, on a later test's loop: "Event loop is closed"."""
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


async def native(served, output_format: str, **extra) -> bytes:
    body = {"text": SAY, "output_format": output_format, **EXTRA, **extra}
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return base64.b64decode((await resp.json())["audio_base64"])


async def speech(served, response_format: str, **kwargs) -> bytes:
    result = await client(served).audio.speech.create(
        model="tts-1",
        voice=kwargs.pop("voice", "alloy"),
        input=kwargs.pop("input", SAY),
        response_format=response_format,
        extra_body={**EXTRA, **kwargs.pop("extra", {})},
        **kwargs,
    )
    return result.content


async def test_pcm_and_wav_equal_the_native_audio(served):
    reference = await native(served, "pcm16_24khz")
    assert len(reference) > 0
    assert await speech(served, "pcm") == reference
    wav = await speech(served, "wav")
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24_000
    assert samples.tobytes() == reference


async def test_flac_is_lossless_and_mp3_opus_decode(served):
    reference = np.frombuffer(await native(served, "pcm16_24khz"), dtype="<i2")
    flac, rate = soundfile.read(io.BytesIO(await speech(served, "flac")), dtype="int16")
    assert rate == 24_000 and np.array_equal(flac, reference)
    for fmt in ("mp3", "opus"):
        data = await speech(served, fmt)
        decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        assert rate == 24_000, fmt
        assert abs(len(decoded) - len(reference)) <= 2400, (fmt, len(decoded), len(reference))  # codec padding
        assert np.isfinite(decoded).all()


async def test_mulaw_extension_equals_native(served):
    assert await speech(served, "mulaw") == await native(served, "mulaw")


async def test_streamed_body_arrives_in_pieces_and_equals_whole(served):
    reference = await native(served, "pcm16_24khz", max_audio_length_ms=1600)
    pieces = []
    async with client(served).audio.speech.with_streaming_response.create(
        model="csm-1b",
        voice="default",
        input=SAY,
        response_format="pcm",
        extra_body={**EXTRA, "max_audio_length_ms": 1600},
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        async for piece in response.iter_bytes():
            pieces.append(piece)
    assert b"".join(pieces) == reference
    assert len(pieces) > 1  # the first chunk did not wait for the last


async def test_sse_deltas_and_done(served):
    reference = await native(served, "pcm16_24khz")
    events = []
    async with client(served).audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=SAY, response_format="pcm", stream_format="sse", extra_body=EXTRA
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == reference
    usage = events[-1]["usage"]
    assert usage["output_tokens"] == len(reference) // 2 // 1920  # 80 ms frames of 1920 samples
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert events[-1]["seed"] == EXTRA["seed"]


@pytest.mark.parametrize("speed", [0.5, 2.0])
async def test_speed_changes_duration_not_rate(served, speed):
    reference = await native(served, "pcm16_24khz")
    stretched = await speech(served, "pcm", speed=speed)
    assert len(stretched) // 2 == round(len(reference) // 2 / speed)


async def test_voice_profiles_by_id_and_name(served):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(recording(), name="Front Desk Openai")) as resp:
            voice = await resp.json()
            assert resp.status == 201, voice
        async with http.get(f"{served.url}/v1/audio/voices") as resp:
            listed = (await resp.json())["voices"]
        async with http.get(f"{served.url}/v1/audio/models") as resp:
            assert (await resp.json())["models"][0]["id"] == "csm-1b"
    assert listed[0] == {"id": "default", "name": "Default"}
    assert {"id": voice["voice_id"], "name": "Front Desk Openai"} in listed
    by_id = await speech(served, "pcm", voice=voice["voice_id"])
    by_name = await speech(served, "pcm", voice="front desk openai")
    assert by_id == by_name
    assert by_id != await speech(served, "pcm", voice="alloy")  # the profile is in the prompt
    models = await client(served).models.list()
    assert [m.id for m in models.data] == ["csm-1b"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": "aac"}, "response_format"),
        ({"response_format": "ogg"}, "response_format"),
        ({"voice": "no-such-voice"}, "voice"),
        ({"input": ""}, "input"),
        ({"speed": 5.0}, "speed"),
        ({"extra_body": {"stream_format": "chunks"}}, "stream_format"),
        ({"extra_body": {"temperature": -1}}, "temperature"),
    ],
)
async def test_bad_requests_are_openai_errors(served, kwargs, param):
    args = {"model": "tts-1", "voice": "alloy", "input": SAY, "response_format": "pcm", **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        await client(served).audio.speech.create(**args)
    body = caught.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error", body
    assert param in body["message"]
    # the server is still fine
    assert await speech(served, "pcm")


async def test_missing_model_and_non_json(served):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/audio/speech", json={"input": SAY, "voice": "alloy"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "model"
        async with http.post(f"{served.url}/v1/audio/speech", data=b"{nope") as resp:
            assert resp.status == 400
            assert "invalid JSON" in (await resp.json())["error"]["message"]


async def test_every_openai_voice_name_is_the_default_voice(served):
    """The openai SDK's current names (marin and cedar were once refused) speak as the default voice."""
    from typing import get_args

    from openai.types.audio.speech_create_params import Voice

    names = next(get_args(arg) for arg in get_args(Voice) if get_args(arg))  # the Literal's values
    assert {"marin", "cedar"} <= set(names)
    reference = await speech(served, "pcm", voice="default")
    for name in names:
        assert await speech(served, "pcm", voice=name) == reference, name


async def test_models_retrieve_known_and_unknown(served):
    model = await client(served).models.retrieve("csm-1b")
    assert model.id == "csm-1b" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        await client(served).models.retrieve("gpt-no-such-model")
    body = caught.value.body  # OpenAI's shape: the SDK hands over {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["code"] == "model_not_found", body
    assert "gpt-no-such-model" in body["message"]
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/v1/audio/no-such-route") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"
