"""Barge-in on the caller's voice: voiced frames (Silero VAD) that are louder than our own echo.

A VAD answers "is this speech?", not "is this the caller?": the bot's own audio, echoed back by the
phone or the line, is speech too. So a voiced frame counts only when it is no more than
``echo_gate_db`` below the loudest audio the call sent in the last :data:`ECHO_WINDOW_S` (a
Geigel-style double-talk test: an echo returns some 20 dB or more down, a caller talking over the
bot is about as loud as it). :data:`SPEECH_FRAMES` such frames in a run barge in; one unvoiced
frame inside the run (:data:`HANGOVER_FRAMES`) does not break it.

Everything is per call and bounded: the VAD's fixed state, a run counter, and the levels of at
most :data:`ECHO_FRAMES` sent frames.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.edge.twilio.vad import SileroStream

VOICED = 0.5  # Silero's probability at and above which a frame is speech (the model's own default)
SPEECH_FRAMES = 3  # voiced 20 ms frames in a run that barge in (espeak-ng speech: 120 ms after onset)
HANGOVER_FRAMES = 1  # unvoiced frames a run survives
ECHO_WINDOW_S = 1.5  # a sent frame may come back as echo this long after it was sent (lead + round trip)
ECHO_FRAMES = 128  # sent-frame levels kept: 1.5 s of frames plus a full lead sent at once
MAX_FRAME_BYTES = 480  # of a media payload, only the last 60 ms is heard (Twilio sends 20 ms)


def samples(frame: bytes) -> np.ndarray:
    """mu-law -> float samples, full scale = 1.0."""
    return mulaw_to_pcm16(frame).astype(np.float32) / 32768


def rms(pcm: np.ndarray) -> float:
    return math.sqrt(float(np.mean(pcm * pcm))) if pcm.size else 0.0


class EchoGate:
    """The levels of the audio a call sent lately; quieter inbound audio may be their echo."""

    def __init__(self, gate_db: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = 10 ** (-gate_db / 20)
        self.clock = clock
        self.sent_levels: deque[tuple[float, float]] = deque(maxlen=ECHO_FRAMES)  # (sent at, RMS)

    def sent(self, frame: bytes) -> None:
        self.sent_levels.append((self.clock(), rms(samples(frame))))

    def could_be_echo(self, level: float) -> bool:
        oldest = self.clock() - ECHO_WINDOW_S
        while self.sent_levels and self.sent_levels[0][0] < oldest:
            self.sent_levels.popleft()
        loudest = max((sent for _, sent in self.sent_levels), default=0.0)
        return level < loudest * self.ratio


class CallerSpeech:
    """Listens to a call's inbound 20 ms mu-law frames; :meth:`heard` says when the caller speaks."""

    def __init__(self, echo_gate_db: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.vad = SileroStream()
        self.echo = EchoGate(echo_gate_db, clock)
        self.run = 0  # voiced frames in the current run
        self.misses = 0  # unvoiced frames since the last voiced one

    def sent(self, frame: bytes) -> None:
        """A frame went out to the caller (it may come back as echo)."""
        self.echo.sent(frame)

    def heard(self, payload: bytes) -> bool:
        """One inbound frame -> whether the caller is now speaking (the run is long enough)."""
        frame = payload[-MAX_FRAME_BYTES:]
        voiced = False
        if frame:
            pcm = samples(frame)
            voiced = self.vad.feed(pcm) >= VOICED and not self.echo.could_be_echo(rms(pcm))
        if voiced:
            self.run, self.misses = self.run + 1, 0
        else:
            self.misses += 1
            if self.misses > HANGOVER_FRAMES:
                self.run = 0
        if self.run >= SPEECH_FRAMES:
            self.run = 0
            return True
        return False

    def idle(self) -> None:
        """Nothing is playing (no barge-in to make): the next audio heard starts afresh."""
        if self.run or self.misses or self.vad.probability:
            self.vad.reset()
            self.run = self.misses = 0
