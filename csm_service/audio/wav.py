"""WAV (RIFF, PCM16 mono) writing and reading."""

from __future__ import annotations

import io
import wave

import numpy as np


def float_to_pcm16(pcm: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 (clipped)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")


def wav_bytes(pcm16: np.ndarray | bytes, sample_rate: int) -> bytes:
    """int16 samples (an array, or little-endian PCM16 bytes) -> a mono WAV file."""
    data = pcm16 if isinstance(pcm16, bytes) else np.ascontiguousarray(pcm16, dtype="<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data)
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 WAV bytes -> (float32 mono samples, sample rate). Stereo is averaged to mono."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"only 16-bit PCM WAV is supported, got {8 * w.getsampwidth()}-bit")
        channels, rate = w.getnchannels(), w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate
