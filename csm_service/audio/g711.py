"""G.711 mu-law / A-law (raw bytes, no header: what Twilio sends and accepts)."""

from __future__ import annotations

import sys
import warnings

import numpy as np

with warnings.catch_warnings():  # stdlib audioop is deprecated on 3.11/3.12; audioop-lts on >= 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

assert sys.byteorder == "little", "audioop works on native-endian samples; PCM16 here is little-endian"


def pcm16_to_mulaw(pcm16: np.ndarray) -> bytes:
    return audioop.lin2ulaw(np.ascontiguousarray(pcm16, dtype="<i2").tobytes(), 2)


def pcm16_to_alaw(pcm16: np.ndarray) -> bytes:
    return audioop.lin2alaw(np.ascontiguousarray(pcm16, dtype="<i2").tobytes(), 2)


def mulaw_to_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(data, 2), dtype="<i2")


def alaw_to_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(audioop.alaw2lin(data, 2), dtype="<i2")
