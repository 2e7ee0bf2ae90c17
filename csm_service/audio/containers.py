"""Audio files for ``/v1/audio/speech`` and ``csm-service say``: WAV, FLAC, MP3, Opus, raw PCM/G.711.

Raw formats and WAV stream as they are generated (a streamed WAV's header carries the "unknown
length" sizes 0xFFFFFFFF, as OpenAI's does). MP3 and Opus stream too (:class:`StreamingFile`):
libsndfile (through soundfile, libsndfile >= 1.2) writes them frame by frame and page by page, and
each chunk's bytes go out as soon as it has written them. FLAC is written once the utterance is
complete (:func:`encode_file`, as are whole files for ``say``). AAC has no encoder here. The
formats themselves are :mod:`csm_service.core.formats`.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from csm_service.core.constants import FRAME_MS
from csm_service.core.formats import FileFormat

# MP3 streams at a constant bit rate: without the LAME/Xing tag (see StreamingFile) a variable-rate
# stream's length cannot be read from its size, and decoders (libsndfile's mpg123 among them) stop
# short. libsndfile maps compression level 0.6 to 64 kb/s at 24 kHz mono (measured: 65.5 kb/s).
MP3_STREAM_OPTIONS = {"bitrate_mode": "CONSTANT", "compression_level": 0.6}
SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # libsndfile's command (sndfile.h); soundfile has no wrapper
OGG_PAGE_MS = float(FRAME_MS)  # one Ogg page per engine frame; libsndfile's default holds ~1 s


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


class _Outbox(io.RawIOBase):
    """A write-only file that hands out what was appended since the last :meth:`take`. A write
    over bytes already handed out (libsndfile's MP3 tag, at close) cannot reach the client and is
    dropped; the bytes first written there stay."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._size = 0  # bytes written at the end so far
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = len(data)
        if self._pos == self._size:
            self._pending += data
            self._size += n
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data, self._pending = bytes(self._pending), bytearray()
        return data


class StreamingFile:
    """int16 chunks -> one MP3 or Ogg Opus file, its bytes handed out as libsndfile writes them.

    libsndfile reserves an MP3's first frame for the LAME/Xing tag and fills it in at close by
    seeking back; a streamed frame cannot be taken back, so it stays the placeholder it was written
    as, a silent frame (24 ms). Opus pages are cut every ``OGG_PAGE_MS``."""

    def __init__(self, fmt: FileFormat) -> None:
        if fmt.sndfile is None:
            raise ValueError(f"{fmt.name} is not written by libsndfile")
        container, subtype = fmt.sndfile
        options = MP3_STREAM_OPTIONS if container == "MP3" else {}
        self._out = _Outbox()
        self._file = sf.SoundFile(self._out, "w", fmt.sample_rate, 1, subtype, format=container, **options)
        if container == "OGG":
            latency = sf._ffi.new("double*", OGG_PAGE_MS)
            sf._snd.sf_command(self._file._file, SFC_SET_OGG_PAGE_LATENCY_MS, latency, sf._ffi.sizeof("double"))

    def write(self, pcm16: bytes) -> bytes:
        """PCM16 little-endian mono -> the file's bytes written so far (maybe none yet)."""
        if pcm16:
            self._file.write(np.frombuffer(pcm16, dtype="<i2"))
        return self._out.take()

    def close(self) -> bytes:
        """The rest of the file (the encoder's last frames or page). Closing twice is harmless."""
        if not self._file.closed:
            self._file.close()
        return self._out.take()
