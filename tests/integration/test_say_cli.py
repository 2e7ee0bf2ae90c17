"""``csm-service say`` as a user runs it: formats, --stream to a pipe, --voice, progress bars.

Its own process loads tiny-random with the same weights as the shared server, so the same seed
gives the same codes and so the same audio, up to float rounding: the server decodes in batches of
its slots and this process one at a time, which can move a sample by a least significant bit.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import aiohttp
import numpy as np
import soundfile

from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.say import Encoder, choose_format
from tests.integration.servers import ROOT
from tests.integration.test_voices import TRANSCRIPT, recording, upload

TEXT = "Your table is ready."
COMMON = ["--model", "tiny-random", "--max-audio-length-ms", "800", "--sample-seed", "3"]


def say(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "csm_service.cli", "say", TEXT, *COMMON, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=180)


def assert_close(pcm: bytes, reference: bytes, lsb: int = 2) -> None:
    a, b = np.frombuffer(pcm, dtype="<i2").astype(int), np.frombuffer(reference, dtype="<i2").astype(int)
    assert a.shape == b.shape and a.size > 0
    assert np.abs(a - b).max() <= lsb, np.abs(a - b).max()


async def server_audio(served, output_format: str, **fields: object) -> bytes:
    body = {"text": TEXT, "output_format": output_format, "seed": 3, "max_audio_length_ms": 800, **fields}
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return base64.b64decode((await resp.json())["audio_base64"])


async def test_stream_to_a_pipe_and_files_equal_the_server(served, tmp_path):
    streamed = say("--stream", "--no-progress")
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert_close(streamed.stdout, await server_audio(served, "pcm16_24khz"))
    assert b"generating" not in streamed.stderr  # --no-progress

    mulaw = say("--stream", "--format", "mulaw", "--no-progress")
    reference = await server_audio(served, "mulaw")
    ours, theirs = (mulaw_to_pcm16(x).astype(int) for x in (mulaw.stdout, reference))
    assert ours.shape == theirs.shape
    step = np.maximum(np.abs(ours), np.abs(theirs)) // 16 + 8  # one mu-law quantisation step at that level
    assert (np.abs(ours - theirs) <= step).all()

    flac_path = tmp_path / "out.flac"
    result = say("-o", str(flac_path))
    assert result.returncode == 0, result.stderr.decode()
    samples, rate = soundfile.read(flac_path, dtype="int16")
    assert rate == 24_000 and samples.tobytes() == streamed.stdout
    err = result.stderr.decode()
    assert "generating" in err and "100%" in err and "rtf=" in err  # the progress bar
    assert f"wrote {flac_path}" in err

    # -o x.wav and -o x.mp3 run the same path as the FLAC above (the format from the extension, then
    # the whole file from the kept audio): that step in this process, on the streamed audio (one
    # model load per format would add ~10 s each; test_loading runs `say -o x.wav` as a process).
    for suffix in ("wav", "mp3"):
        path = tmp_path / f"same.{suffix}"
        path.write_bytes(Encoder(choose_format(None, str(path), stream=False)).whole_file(streamed.stdout))
        decoded, rate = soundfile.read(path, dtype="int16")
        assert rate == 24_000
        if suffix == "wav":
            assert decoded.tobytes() == streamed.stdout
        else:
            assert abs(len(decoded) - len(samples)) <= 2400


async def test_voice_profile_and_voice_file(served, tmp_path):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(recording(), name="CLI voice")) as resp:
            voice = await resp.json()
            assert resp.status == 201, voice
    by_profile = say("--stream", "--no-progress", "--voice", voice["voice_id"], "--data-dir", served.data_dir)
    assert by_profile.returncode == 0, by_profile.stderr.decode()
    assert_close(by_profile.stdout, await server_audio(served, "pcm16_24khz", voice_profile_id=voice["voice_id"]))

    wav = tmp_path / "me.wav"
    wav.write_bytes(recording())
    by_file = say("--stream", "--no-progress", "--voice", str(wav), "--voice-text", TRANSCRIPT)
    assert by_file.returncode == 0, by_file.stderr.decode()
    assert by_file.stdout == by_profile.stdout  # the same recording, encoded here instead of by the server


def test_usage_errors_exit_2_with_a_message(tmp_path):
    cases = [
        (["--format", "aiff"], "--format"),
        (["--stream", "--format", "flac"], "--stream"),
        (["--voice", "voice_nope", "--data-dir", str(tmp_path)], "--voice"),
        (["--voice", str(ROOT / "pyproject.toml")], "--voice-text"),
    ]
    for args, flag in cases:
        result = say("--no-progress", *args)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, err)
        assert f"error: {flag}" in err, (args, err)
        assert "loading" not in err, (args, err)  # told before the model loads, not after
