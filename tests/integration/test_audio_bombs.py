"""Decompression bombs on every route that takes audio, against real processes (issue 16, finding 1).

A 464 KiB FLAC declares 20 minutes of 8-channel 48 kHz audio (1.8 GB as float32). Voice uploads,
WebSocket ``context`` audio and ``csm-service say --voice`` refuse it by its header with a 4xx (or
exit 2) and stay up; a file that hides its length is cut at the limit; raw context audio is bounded
by its bytes; context audio costs a rate-limit token. A fresh server's peak RSS (VmHWM) barely
moves under the bombs. (RunPod jobs take no audio: a voice there is a stored profile id.)
"""

from __future__ import annotations

import base64
import functools
import io
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
import soundfile

from tests.integration.servers import ROOT, http_status, start_serve, wait_until
from tests.integration.test_voices import TRANSCRIPT, recording, upload

MAX_VOICE_SECONDS = 2  # the bounded server's --max-voice-seconds
MB = 1 << 20


def silent_flac(frames: int, rate: int, channels: int) -> bytes:
    """Digital silence compresses to almost nothing: the decompression bomb's payload."""
    buf = io.BytesIO()
    block = np.zeros((min(frames, rate * 10), channels), dtype="int16")
    with soundfile.SoundFile(buf, "w", rate, channels, format="FLAC") as f:
        for start in range(0, frames, len(block)):
            f.write(block[: frames - start])
    return buf.getvalue()


def flac_claiming(data: bytes, total_frames: int) -> bytes:
    """The FLAC with STREAMINFO's 36-bit total-samples field set to ``total_frames`` (0: unknown)."""
    out = bytearray(data)
    assert out[:4] == b"fLaC" and out[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    field = int.from_bytes(out[18:26], "big")  # ... sample rate, channels, bits, then the 36 bits
    out[18:26] = ((field & ~((1 << 36) - 1)) | total_frames).to_bytes(8, "big")
    return bytes(out)


@functools.cache
def flac_bomb() -> bytes:
    """The issue's bomb: 20 min x 8 channels x 48 kHz of digital silence, about 464 KiB."""
    return silent_flac(20 * 60 * 48_000, 48_000, 8)


@functools.cache
def stereo_bomb() -> bytes:
    """20 min of stereo 48 kHz (460 MB as float32): within the channels, refused by its length."""
    return silent_flac(20 * 60 * 48_000, 48_000, 2)


@functools.cache
def context_bomb() -> bytes:
    """1.5 min x 8 channels x 48 kHz of silence: a FLAC small enough for one WebSocket message."""
    return silent_flac(90 * 48_000, 48_000, 8)


def wav(seconds: float, rate: int = 8_000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((int(seconds * rate), channels), dtype="int16"), rate, format="WAV")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serve(tmp_path_factory, name: str, *flags: str):
    proc, port = start_serve(tmp_path_factory.mktemp(name), *flags)
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
    except TimeoutError:
        proc.stop()
        print(proc.log()[-3000:])
        raise
    return proc, port


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    """Voice audio up to 2 s; WebSocket messages up to 256 KiB (so raw audio, not the message, is the bound)."""
    flags = ["--max-voice-seconds", str(MAX_VOICE_SECONDS), "--max-ws-message-bytes", str(256 << 10)]
    proc, port = serve(tmp_path_factory, "bombs", *flags)
    try:
        yield port
    finally:
        print(proc.log()[-3000:])
        proc.stop()


async def post_voice(port: int, audio: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/voices", data=upload(audio)) as resp:
            return resp.status, await resp.json()


async def test_voice_upload_bombs_get_422_and_the_server_goes_on(bounded):
    for bomb, detail in [
        (flac_bomb(), "file: 8 channels; at most 2"),
        (stereo_bomb(), "file: 1200.0 s (its header says); at most 2 s"),
        (flac_claiming(stereo_bomb(), 0), "file: over 2 s of audio (more than its header says)"),  # hides its length
    ]:
        status, body = await post_voice(bounded, bomb)
        assert status == 422 and body["field"] == "file" and detail in body["detail"], body
    assert len(flac_bomb()) < 600 << 10
    status, body = await post_voice(bounded, recording(1.5))
    assert status == 201, body
    assert http_status(bounded, "/health") == 200


async def context_reply(ws: aiohttp.ClientWebSocketResponse, audio: bytes, fmt: str | None) -> dict:
    message = {"type": "context", "text": "Hello?", "audio_base64": b64(audio), **({"format": fmt} if fmt else {})}
    await ws.send_json(message)
    return await ws.receive_json(timeout=30)


async def test_websocket_context_bombs_get_errors_and_the_session_goes_on(bounded):
    url = f"ws://127.0.0.1:{bounded}/v1/native/ws/bombs"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        for audio, fmt, field, detail in [
            (context_bomb(), "wav", "format", "'wav' declared, but audio_base64 holds a FLAC file"),
            (context_bomb(), None, "format", "'mulaw_8khz' declared, but audio_base64 holds a FLAC file"),
            (wav(0.25, channels=8), "wav", "audio_base64", "8 channels; at most 2"),
            (wav(3.0), "wav", "audio_base64", "3.0 s (its header says); at most 2 s"),
            (wav(0.5), "pcm16_8khz", "format", "'pcm16_8khz' declared, but audio_base64 holds a WAV file"),
            (b"\xff" * (MAX_VOICE_SECONDS * 8_000 + 1), "mulaw_8khz", "audio_base64", "at most 2 s"),
            (b"\x00" * (MAX_VOICE_SECONDS * 48_000 + 2), "pcm16_24khz", "audio_base64", "at most 2 s"),
        ]:
            reply = await context_reply(ws, audio, fmt)
            assert reply["type"] == "error" and reply["field"] == field and detail in reply["detail"], reply
        # At the bound, raw audio is taken (2 s of mu-law: 25 frames of 80 ms), and so is a short WAV.
        reply = await context_reply(ws, b"\xff" * (MAX_VOICE_SECONDS * 8_000), "mulaw_8khz")
        assert reply["type"] == "context_added" and reply["num_frames"] == 25, reply
        reply = await context_reply(ws, wav(0.5, rate=16_000), "wav")
        assert reply["type"] == "context_added", reply
        await ws.send_json({"type": "synthesize", "text": "Yes.", "max_audio_length_ms": 160, "context": "session"})
        assert (await ws.receive_json(timeout=60))["type"] == "audio"
    assert http_status(bounded, "/health") == 200


async def test_context_audio_costs_a_rate_limit_token_like_a_synthesis(tmp_path_factory):
    proc, port = serve(tmp_path_factory, "bombs-rate", "--rate-limit-per-s", "0.001", "--rate-limit-burst", "3")
    try:
        url = f"ws://127.0.0.1:{port}/v1/native/ws/rate"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            for _ in range(3):  # the burst, spent on caller audio
                assert (await context_reply(ws, b"\xff" * 800, "mulaw_8khz"))["type"] == "context_added"
            reply = await context_reply(ws, b"\xff" * 800, "mulaw_8khz")
            assert reply["type"] == "error" and reply["error"] == "Rate limit exceeded", reply
            await ws.send_json({"type": "synthesize", "text": "Hi.", "max_audio_length_ms": 80})
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "error" and reply["error"] == "Rate limit exceeded", reply  # the same bucket
            await ws.send_json({"type": "context", "text": "No audio, no engine work."})
            assert (await ws.receive_json(timeout=30))["type"] == "context_added"  # text alone is free
            await ws.send_json({"type": "ping"})
            assert (await ws.receive_json(timeout=10))["type"] == "pong"
    finally:
        print(proc.log()[-3000:])
        proc.stop()


# What `say` costs at its peak: run it under a parent that reports its only child's ru_maxrss.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "try:\n"
    "    r = subprocess.run(sys.argv[1:], capture_output=True, timeout=240)\n"
    "    status, err = r.returncode, r.stderr\n"
    "except subprocess.TimeoutExpired as exc:  # killed; the old code encoded 20 minutes of audio\n"
    "    status, err = 'timeout', exc.stderr or b''\n"
    "sys.stderr.buffer.write(err)\n"
    "print(status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def say_peak(voice: str, *extra: str) -> tuple[int, int, str]:
    """``csm-service say --voice FILE`` -> (exit status or -1 if it ran 240 s, peak RSS in bytes, stderr)."""
    cmd = [sys.executable, "-m", "csm_service.cli", "say", "Hi.", "--model", "tiny-random", "--no-progress"]
    cmd += ["--max-audio-length-ms", "160", "--voice", voice, "--voice-text", TRANSCRIPT, *extra]
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], cwd=ROOT, capture_output=True, timeout=300)
    status, peak_kb = result.stdout.decode().split()[-2:]
    return int(status) if status != "timeout" else -1, int(peak_kb) * 1024, result.stderr.decode(errors="replace")


def test_say_voice_file_bombs_exit_2_at_the_cost_of_a_normal_voice(tmp_path):
    normal, bomb, hidden = tmp_path / "normal.wav", tmp_path / "bomb.flac", tmp_path / "hidden.flac"
    normal.write_bytes(recording(2.0))
    bomb.write_bytes(flac_bomb())
    hidden.write_bytes(flac_claiming(stereo_bomb(), 0))
    status, normal_peak, err = say_peak(str(normal), "-o", str(tmp_path / "out.wav"))
    assert status == 0, err
    status, bomb_peak, err = say_peak(str(bomb), "-o", str(tmp_path / "bomb.wav"))
    assert status == 2 and f"error: --voice {bomb}: 8 channels; at most 2" in err, err
    status, hidden_peak, err = say_peak(str(hidden), "-o", str(tmp_path / "hidden.wav"))
    assert status == 2 and "over 30 s of audio" in err, err
    print(f"say peak RSS: normal voice {normal_peak / MB:.0f} MiB, 464 KiB FLAC bomb {bomb_peak / MB:.0f} MiB")
    print(f"say peak RSS: 20 min stereo FLAC hiding its length {hidden_peak / MB:.0f} MiB")
    assert bomb_peak < normal_peak + 100 * MB and hidden_peak < normal_peak + 100 * MB


def vm_hwm(pid: int) -> int:
    """Peak resident memory of the process so far, in bytes (/proc/PID/status VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


async def test_peak_memory_of_a_fresh_server_under_the_bombs(tmp_path_factory):
    """Default limits. Before the fix the message raised VmHWM by 100s of MB, the upload by about 2 GB."""
    bomb, message_bomb = flac_bomb(), context_bomb()
    proc, port = serve(tmp_path_factory, "bombs-memory")
    pid = proc.proc.pid
    try:
        status, body = await post_voice(port, recording(1.5))  # what any upload costs is in the baseline
        assert status == 201, body
        before = vm_hwm(pid)
        message = {"type": "context", "text": "Hello?", "audio_base64": b64(message_bomb), "format": "wav"}
        url = f"ws://127.0.0.1:{port}/v1/native/ws/memory"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_json(message)
            assert (await ws.receive_json(timeout=120))["type"] == "error"
            await ws.send_json({"type": "ping"})
            assert (await ws.receive_json(timeout=10))["type"] == "pong"
        after_message = vm_hwm(pid)
        status, body = await post_voice(port, bomb)
        assert 400 <= status < 500, body
        after_upload = vm_hwm(pid)
        assert http_status(port, "/health") == 200
    finally:
        print(proc.log()[-3000:])
        proc.stop()
    upload_kib, message_kib = len(bomb) >> 10, len(b64(message_bomb)) >> 10
    print(f"VmHWM before the bombs: {before / MB:.0f} MiB")
    print(f"after the {message_kib} KiB context message: +{(after_message - before) / MB:.0f} MiB")
    print(f"after the {upload_kib} KiB FLAC upload: +{(after_upload - after_message) / MB:.0f} MiB more")
    assert after_message - before < 100 * MB
    assert after_upload - after_message < 100 * MB
