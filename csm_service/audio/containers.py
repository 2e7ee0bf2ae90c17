"""Audio files for ``/v1/audio/speech`` and ``csm-service say``: WAV, FLAC, MP3, Opus, raw PCM/G.711.

Raw formats and WAV stream as they are generated (a streamed WAV's header carries the "unknown
length" sizes 0xFFFFFFFF, as OpenAI's does). FLAC, MP3 and Opus are written by libsndfile through
soundfile (libsndfile >= 1.1 for MP3) once the utterance is complete, since their headers or page
structure need the whole signal. AAC has no encoder here.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class FileFormat:
    name: str
    content_type: str
    sample_rate: int
    streams: bool  # bytes can be sent as they are generated
    sndfile: tuple[str, str] | None = None  # (format, subtype) for soundfile
    g711: str | None = None  # "mulaw" / "alaw": 8 kHz telephony bytes


FILE_FORMATS = {
    f.name: f
    for f in (
        FileFormat("wav", "audio/wav", 24_000, streams=True),
        FileFormat("pcm", "audio/pcm", 24_000, streams=True),  # s16le mono, as OpenAI's
        FileFormat("flac", "audio/flac", 24_000, streams=False, sndfile=("FLAC", "PCM_16")),
        FileFormat("mp3", "audio/mpeg", 24_000, streams=False, sndfile=("MP3", "MPEG_LAYER_III")),
        FileFormat("opus", "audio/ogg", 24_000, streams=False, sndfile=("OGG", "OPUS")),
        FileFormat("mulaw", "audio/basic", 8_000, streams=True, g711="mulaw"),
        FileFormat("alaw", "audio/x-alaw-basic", 8_000, streams=True, g711="alaw"),
    )
}
NO_ENCODER = ("aac",)  # OpenAI names we cannot produce


def streaming_wav_header(sample_rate: int) -> bytes:
    """A PCM16 mono WAV header whose RIFF and data sizes say "unknown" (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


def encode_file(pcm16: np.ndarray, fmt: FileFormat) -> bytes:
    """int16 [T] at ``fmt.sample_rate`` -> a complete file (FLAC, MP3 or Opus) via libsndfile."""
    if fmt.sndfile is None:
        raise ValueError(f"{fmt.name} is not written by libsndfile")
    container, subtype = fmt.sndfile
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", fmt.sample_rate, 1, subtype, format=container) as out:
        out.write(np.ascontiguousarray(pcm16, dtype=np.int16))
    return buf.getvalue()
