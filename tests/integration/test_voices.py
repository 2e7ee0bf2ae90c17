"""Voice profiles on a real server: create, list, get, delete over HTTP in four audio formats; the
stored codes are Mimi's encoding of the upload; a synthesis with a profile puts its codes in the
engine's prompt (as a cached prefix); bad uploads get clear 4xx errors and store nothing."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
import soxr
import torch

from csm_service.audio.decode import decode_audio, to_pcm16
from csm_service.codec.mimi import MimiCodec
from csm_service.model.tokenizer import ByteTokenizer
from csm_service.voices import VoiceStore

TRANSCRIPT = "Hi, this is Sam from the front desk."


def recording(seconds: float = 2.0, rate: int = 16_000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(5)
    signal = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    soundfile.write(buf, signal.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def upload(
    audio: bytes | None, transcript: str | None = TRANSCRIPT, name: str | None = "Sam", **extra
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if audio is not None:
        form.add_field("file", audio, filename="voice.bin", content_type="application/octet-stream")
    for key, value in {"transcript": transcript, "name": name, **extra}.items():
        if value is not None:
            form.add_field(key, str(value))
    return form


async def voice_count(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/v1/voices") as resp:
        return len((await resp.json())["voices"])


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [("WAV", "PCM_16", 16_000), ("FLAC", None, 44_100), ("OGG", "VORBIS", 48_000), ("MP3", None, 22_050)],
)
async def test_create_list_get_delete(served, fmt, subtype, rate):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(recording(2.0, rate, fmt, subtype))) as resp:
            voice = await resp.json()
            assert resp.status == 201, voice
        assert voice["voice_id"].startswith("voice_") and voice["name"] == "Sam" and voice["speaker"] == 0
        assert voice["transcript"] == TRANSCRIPT and abs(voice["duration_ms"] - 2000) < 60
        assert voice["num_frames"] == pytest.approx(25, abs=1)  # 2 s of 80 ms frames
        assert resp.headers["Location"] == f"/v1/voices/{voice['voice_id']}"
        async with http.get(f"{served.url}/v1/voices") as resp:
            listed = (await resp.json())["voices"]
        assert listed[0]["voice_id"] == "default" and listed[0]["builtin"]
        assert voice["voice_id"] in [v["voice_id"] for v in listed]
        async with http.get(f"{served.url}/v1/voices/{voice['voice_id']}?include_codes=true") as resp:
            full = await resp.json()
        assert np.asarray(full["codes"]).shape == (32, voice["num_frames"])
        async with http.get(f"{served.url}/openapi.json") as resp:
            enum = (await resp.json())["components"]["schemas"]["SynthesizeRequest"]["properties"]["voice_profile_id"]
            assert voice["voice_id"] in enum["enum"]
        async with http.delete(f"{served.url}/v1/voices/{voice['voice_id']}") as resp:
            assert resp.status == 204
        async with http.get(f"{served.url}/v1/voices/{voice['voice_id']}") as resp:
            assert resp.status == 404 and (await resp.json())["detail"].startswith("Unknown voice profile")
        async with http.delete(f"{served.url}/v1/voices/{voice['voice_id']}") as resp:
            assert resp.status == 404


async def test_stored_codes_are_mimis_encoding_of_the_upload(served):
    audio = recording(1.5, 16_000)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(audio, name="Round trip")) as resp:
            voice = await resp.json()
        async with http.get(f"{served.url}/v1/voices/{voice['voice_id']}?include_codes=true") as resp:
            served_codes = np.asarray((await resp.json())["codes"])
    # What the edge sends (PCM16) and the engine does (soxr HQ to 24 kHz, Mimi), by hand:
    samples, rate = decode_audio(audio)
    pcm = np.frombuffer(to_pcm16(samples), dtype="<i2").astype(np.float32) / 32768.0
    pcm24 = soxr.resample(pcm, rate, 24_000, quality="HQ").astype(np.float32)
    expected = MimiCodec(None, torch.device("cpu"), seed=0, tiny=True).encode(pcm24)
    np.testing.assert_array_equal(served_codes, expected)
    # ... and the SQLite row holds exactly those codes (read back from disk, a fresh connection).
    store = VoiceStore(Path(served.data_dir))
    try:
        np.testing.assert_array_equal(store.get(voice["voice_id"]).codes, expected)
    finally:
        store.close()


async def test_synthesis_with_a_profile_puts_its_codes_in_the_prompt(served):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(recording(1.0), speaker=3)) as resp:
            voice = await resp.json()
        body = {"text": "Hello", "max_audio_length_ms": 160, "seed": 4, "output_format": "mulaw"}
        async with http.post(f"{served.url}/synthesize", json=body) as resp:
            plain = await resp.json()
        results = []
        for _ in range(2):
            async with http.post(
                f"{served.url}/synthesize", json={**body, "voice_profile_id": voice["voice_id"]}
            ) as resp:
                results.append(await resp.json())
                assert resp.status == 200
        # The engine saw the profile: its transcript rows, its frames and the end frame come first.
        transcript_rows = len(ByteTokenizer().encode(f"[3]{TRANSCRIPT}"))
        speaker_shift = len(ByteTokenizer().encode("[3]Hello")) - len(ByteTokenizer().encode("[0]Hello"))
        added = transcript_rows + voice["num_frames"] + 1 + speaker_shift  # the voice's speaker is used
        assert results[0]["prompt_positions"] == plain["prompt_positions"] + added
        assert not results[0]["prefix_cache_hit"] and results[1]["prefix_cache_hit"]
        assert results[0]["audio_base64"] == results[1]["audio_base64"]  # a hit sounds the same
        assert results[0]["audio_base64"] != plain["audio_base64"]
        assert served.metric("csm_engine_prefix_cache_hits_total") >= 1

        # The WebSocket takes the same profile; an unknown one is a clear error there and on HTTP.
        async with http.ws_connect(served.ws_url("voice-call")) as ws:
            await ws.send_json(
                {
                    "type": "synthesize",
                    "text": "Hello",
                    "voice_profile_id": voice["voice_id"],
                    "stream": True,
                    "max_audio_length_ms": 160,
                    "seed": 4,
                }
            )
            while (reply := await ws.receive_json(timeout=60))["type"] != "done":
                pass
            assert reply["prefix_cache_hit"] and reply["prompt_positions"] == results[0]["prompt_positions"]
            await ws.send_json({"type": "synthesize", "text": "Hello", "voice_profile_id": "voice_nope"})
            reply = await ws.receive_json(timeout=10)
            assert reply["error"] == "Unknown voice profile" and "voice_nope" in reply["detail"]
        async with http.post(f"{served.url}/synthesize", json={**body, "voice_profile_id": "voice_nope"}) as resp:
            assert resp.status == 422 and (await resp.json())["field"] == "voice_profile_id"


BAD_UPLOADS = [
    # (form, status, what the detail must say)
    (lambda: upload(b"this is not audio at all" * 20), 422, "not a readable audio file"),
    (lambda: upload(b""), 422, "empty"),
    (lambda: upload(recording(31.0, 8_000)), 422, "at most 30 s"),
    (lambda: upload(recording(0.2, 16_000)), 422, "at least 0.5 s"),
    (lambda: upload(recording(), transcript=None), 422, "transcript"),
    (lambda: upload(recording(), transcript="   "), 422, "transcript"),
    (lambda: upload(recording(), name=None), 422, "name"),
    (lambda: upload(recording(), speaker="-1"), 422, "speaker"),
    (lambda: upload(None), 400, "file"),
]


@pytest.mark.parametrize(("make_form", "status", "mention"), BAD_UPLOADS)
async def test_bad_uploads_get_clear_errors_and_store_nothing(served, make_form, status, mention):
    async with aiohttp.ClientSession() as http:
        before = await voice_count(http, served.url)
        async with http.post(f"{served.url}/v1/voices", data=make_form()) as resp:
            body = await resp.json()
            assert resp.status == status and mention in body["detail"], body
        assert await voice_count(http, served.url) == before


async def test_non_multipart_and_default_voice_rules(served):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", json={"name": "x"}) as resp:
            assert resp.status == 400 and "multipart" in (await resp.json())["detail"]
        async with http.delete(f"{served.url}/v1/voices/default") as resp:
            assert resp.status == 409
        async with http.get(f"{served.url}/v1/voices/default") as resp:
            assert (await resp.json())["builtin"] is True
