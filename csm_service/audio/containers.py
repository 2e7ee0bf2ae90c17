"""Audio files for ``/v1/audio/speech`` and ``csm-service say``: WAV, FLAC, MP3, Opus, raw PCM/G.711.

Raw formats and WAV stream as they are generated (a streamed WAV's header carries the "unknown
length" sizes 0xFFFFFFFF, as OpenAI's does). FLAC, MP3 and Opus are written by libsndfile through
soundfile (libsndfile >= 1.1 for MP3) once the utterance is complete, since their headers or page
structure need the whole signal. AAC has no encoder here. The formats themselves are
:mod:`csm_service.core.formats`.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from csm_service.core.formats import FileFormat


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
