"""The audio of an OpenAI speech answer: OpenAI's ``speed`` (a tempo change the model cannot make)
and the ``response_format``, from the engine's chunks. The engine encodes G.711 itself when the
tempo is untouched; stretched audio comes as PCM16 and is re-encoded here. MP3 and Opus are
encoded chunk by chunk as they come (:class:`~.containers.StreamingFile`); FLAC, which cannot
stream, once, from the whole answer.
"""

from __future__ import annotations

import numpy as np

from csm_service.audio.containers import StreamingFile, encode_file
from csm_service.audio.encoder import ALAW_8K, MULAW_8K, StreamEncoder
from csm_service.audio.stretch import TimeStretch
from csm_service.audio.wav import float_to_pcm16
from csm_service.core.formats import FileFormat
from csm_service.core.request import AudioEncoding


class SpeechAudio:
    """Engine chunks -> the response's bytes: tempo change and re-encoding when asked for.
    :meth:`close` it when the answer ends early (the streaming encoder lets go of its buffers)."""

    def __init__(self, fmt: FileFormat, speed: float) -> None:
        self.format = fmt
        self.stretch = TimeStretch(speed) if speed != 1.0 else None
        g711 = {"mulaw": MULAW_8K, "alaw": ALAW_8K}.get(fmt.g711 or "")
        # Untouched audio comes from the engine already encoded; stretched audio is re-encoded here.
        self.g711 = StreamEncoder(g711) if g711 is not None and self.stretch is not None else None
        if fmt.g711 is None or self.stretch is not None:
            self.engine_encoding = AudioEncoding.PCM16_24KHZ
        else:
            self.engine_encoding = AudioEncoding.MULAW_8KHZ if fmt.g711 == "mulaw" else AudioEncoding.ALAW_8KHZ
        self.bytes_per_s = fmt.sample_rate * (1 if fmt.g711 else 2)
        self.encodes = fmt.streams and fmt.sndfile is not None  # MP3, Opus: encoded as they come
        self.file: StreamingFile | None = None  # opened with the first chunk

    def convert(self, audio: bytes, last: bool) -> bytes:
        """One engine chunk (as asked for with ``engine_encoding``) -> the response's bytes."""
        data = self._tempo(audio, last)
        if not self.encodes:
            return data
        if self.file is None:
            self.file = StreamingFile(self.format)
        return self.file.write(data) + (self.file.close() if last else b"")

    def _tempo(self, audio: bytes, last: bool) -> bytes:
        if self.stretch is None:
            return audio
        pcm = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
        out = self.stretch.process(pcm, last)
        return self.g711.encode(out, last) if self.g711 is not None else float_to_pcm16(out).tobytes()

    def file_bytes(self, held: list[bytes]) -> bytes:
        """The whole answer in a format that cannot stream (flac): the converted PCM16 chunks, held
        until the last, encoded as one file."""
        pcm16 = np.frombuffer(b"".join(held), dtype="<i2")
        return encode_file(pcm16, self.format)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
