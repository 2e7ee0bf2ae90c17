"""Barge-in on the caller's voice (csm_service/edge/twilio/caller_speech.py), on real speech and noise.

The speech is espeak-ng's, rendered by scripts/render_speech_fixtures.py into tests/data/ (8 kHz
mu-law, starting at speech onset). The noise is made here: white noise at -30 dBFS, 50 and 60 Hz
mains hum with its harmonics, and the bot's own speech echoed back 20 dB down while the call sends
it. Latency is counted in frames of audio fed, never in wall time.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.edge.twilio.caller_speech import ECHO_FRAMES, ECHO_WINDOW_S, CallerSpeech, EchoGate
from csm_service.edge.twilio.vad import WINDOW, SileroStream
from csm_service.tools.twilio_sim import frames_of, hum, mix, white_noise
from tests.fake_clock import FakeClock

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
CALLER = frames_of((DATA / "caller_speech.ulaw").read_bytes())
BOT = frames_of((DATA / "bot_speech.ulaw").read_bytes())
WITHIN_150_MS = 7  # frames of speech (140 ms) by which the caller must have been heard
ECHO_GAIN = 10 ** (-20 / 20)


def first_heard(detector: CallerSpeech, inbound: list[bytes], sent: list[bytes] | None = None) -> int | None:
    """Feed ``inbound`` frame by frame (with the call sending ``sent`` meanwhile) -> the 1-based frame
    at which the caller was heard, or None."""
    for i, frame in enumerate(inbound):
        if sent is not None:
            detector.sent(sent[i % len(sent)])
        if detector.heard(frame):
            return i + 1
    return None


def test_the_fixtures_are_speech_from_onset():
    pcm = mulaw_to_pcm16(b"".join(CALLER)).astype(np.float32) / 32768
    assert 3.0 < len(pcm) / 8000 < 8.0 and np.abs(pcm[:80]).max() > 0.005  # onset within the first 10 ms


def test_speech_is_heard_within_150_ms_of_onset():
    frames = first_heard(CallerSpeech(echo_gate_db=16), CALLER)
    assert frames is not None and frames <= WITHIN_150_MS, frames


def test_speech_over_the_bot_and_its_echo_is_heard():
    """Double talk: the call sends the bot's speech, its echo comes back -20 dB, the caller talks over it."""
    inbound = [mix(caller, bot, ECHO_GAIN) for caller, bot in zip(CALLER, BOT, strict=False)]
    frames = first_heard(CallerSpeech(echo_gate_db=16), inbound, sent=BOT)
    assert frames is not None and frames <= WITHIN_150_MS, frames


NOISE = {
    "white noise -30 dBFS": lambda: frames_of(white_noise(10.0, -30.0)),
    "50 Hz hum": lambda: frames_of(hum(10.0, 50.0, -30.0)),
    "60 Hz hum": lambda: frames_of(hum(10.0, 60.0, -30.0)),
}


@pytest.mark.parametrize("noise", NOISE, ids=list(NOISE))
def test_noise_never_barges_in(noise):
    assert first_heard(CallerSpeech(echo_gate_db=16), NOISE[noise]()) is None


def test_the_bots_own_echo_never_barges_in():
    """The bot's speech 20 dB down is still speech to a VAD; the echo gate knows it was just sent."""
    echo = [mix(b"\xff" * 160, bot, ECHO_GAIN) for bot in BOT] * 3
    assert first_heard(CallerSpeech(echo_gate_db=16), echo, sent=BOT) is None
    # without the gate (nothing sent), the same audio is heard: the gate is what stops it
    assert first_heard(CallerSpeech(echo_gate_db=16), echo) is not None


def test_echo_gate_forgets_after_its_window():
    clock = FakeClock()
    gate = EchoGate(gate_db=16, clock=clock)
    gate.sent(BOT[2])
    assert gate.could_be_echo(0.01)
    clock.now += ECHO_WINDOW_S + 0.001
    assert not gate.could_be_echo(0.01)
    for _ in range(ECHO_FRAMES * 3):  # a burst of sends keeps at most ECHO_FRAMES levels
        gate.sent(BOT[2])
    assert len(gate.sent_levels) == ECHO_FRAMES


def test_state_is_bounded_whatever_the_payload():
    detector = CallerSpeech(echo_gate_db=16)
    detector.heard(b"\x00" * 48_000)  # a huge media payload: only its last 60 ms is heard
    assert len(detector.vad.pending) < WINDOW
    detector.heard(b"")  # an empty one is not speech
    assert detector.run == 0


def test_idle_starts_afresh():
    detector = CallerSpeech(echo_gate_db=16)
    assert first_heard(detector, CALLER[:2]) is None and detector.vad.probability > 0
    detector.idle()
    assert detector.vad.probability == 0 and not detector.vad.state.any()
    # and the caller is heard again, from onset
    frames = first_heard(detector, CALLER)
    assert frames is not None and frames <= WITHIN_150_MS


def test_shared_model_matches_one_window_at_a_time():
    """Frames of 160 samples make the same windows as feeding 256 at a time."""
    pcm = mulaw_to_pcm16(b"".join(CALLER[:32])).astype(np.float32) / 32768  # 5120 samples = 20 windows
    by_frame, by_window = SileroStream(), SileroStream()
    for i in range(0, len(pcm), 160):
        by_frame.feed(pcm[i : i + 160])
    for i in range(0, len(pcm), WINDOW):
        by_window.feed(pcm[i : i + WINDOW])
    assert by_frame.probability == pytest.approx(by_window.probability, abs=1e-6)
    np.testing.assert_allclose(by_frame.state, by_window.state, atol=1e-6)
