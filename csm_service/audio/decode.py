"""Uploaded audio files (WAV, FLAC, OGG/Vorbis/Opus, MP3; any rate) -> mono float32 samples.

libsndfile (through soundfile) reads all of them from memory; no torch, no ffmpeg.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile

ACCEPTED = ("WAV", "FLAC", "OGG", "MP3")


class BadAudio(ValueError):
    """The bytes are not audio we can read, or hold no samples."""


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """-> (samples float32 [N] in [-1, 1], mixed to mono, sample rate)."""
    if not data:
        raise BadAudio("the file is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.format not in ACCEPTED:
                raise BadAudio(f"{f.format} files are not accepted; send WAV, FLAC, OGG or MP3")
            samples = f.read(dtype="float32", always_2d=True)  # [N, channels]
            rate = f.samplerate
    except BadAudio:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"not a readable audio file (WAV, FLAC, OGG or MP3): {exc}") from None
    if samples.shape[0] == 0:
        raise BadAudio("the file holds no audio samples")
    mono = samples.mean(axis=1).astype(np.float32)
    if not np.isfinite(mono).all():
        raise BadAudio("the audio holds NaN or infinite samples")
    return np.clip(mono, -1.0, 1.0), int(rate)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
