"""Render the real-speech test fixtures: espeak-ng speech as Twilio sends it (8 kHz mu-law, raw).

The VAD tests (tests/unit/test_twilio_vad.py, tests/integration/test_twilio.py) need real speech,
not a tone: a detector that fires on a sine would pass a tone test and still cut a greeting on hum.
The rendered files are committed under tests/data/, so CI needs neither espeak-ng nor this script;
run it again (``apt-get install -y espeak-ng``, then ``.venv/bin/python scripts/render_speech_fixtures.py``)
only to change them. Each file starts at speech onset (leading silence trimmed), so a test can count
detection latency in frames from byte 0, and its active speech is levelled to -20 dBFS RMS, a usual
level for a phone line.
"""

from __future__ import annotations

import io
import pathlib
import subprocess

import numpy as np
import soundfile
import soxr

from csm_service.audio.g711 import pcm16_to_mulaw

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
RATE = 8000
FIXTURES = {
    # the caller, who barges in
    "caller_speech.ulaw": ("en-us", "Hello? Hi, I would like to talk to someone about my bill, please."),
    # the bot, whose audio comes back as echo
    "bot_speech.ulaw": ("en-gb", "Thanks for calling the front desk. How can I help you today?"),
}
ACTIVE_RMS_DBFS = -20.0
ONSET_LEVEL = 0.01  # |sample| above this (about -40 dBFS) is where speech starts


def render(voice: str, text: str) -> np.ndarray:
    """espeak-ng's WAV (22,050 Hz) -> float mono at 8 kHz, from onset, levelled."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text], check=True, capture_output=True)
    samples, rate = soundfile.read(io.BytesIO(wav.stdout), dtype="float32")
    audio = soxr.resample(samples, rate, RATE, quality="HQ")
    onset = int(np.argmax(np.abs(audio) > ONSET_LEVEL))
    audio = audio[onset:]
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = rms[rms > ONSET_LEVEL]  # the frames with speech in them
    gain = 10 ** (ACTIVE_RMS_DBFS / 20) / float(np.sqrt(np.mean(active**2)))
    return np.clip(audio * gain, -1.0, 1.0)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (voice, text) in FIXTURES.items():
        audio = render(voice, text)
        pcm16 = np.round(audio * 32767).astype("<i2")
        (OUT / name).write_bytes(pcm16_to_mulaw(pcm16))
        print(f"{name}: {len(pcm16) / RATE:.2f} s, {voice}: {text!r}")


if __name__ == "__main__":
    main()
