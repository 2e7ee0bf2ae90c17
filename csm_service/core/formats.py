"""The audio files the service writes: OpenAI's ``response_format`` and ``csm-service say --format``.

Each is a name, the HTTP content type, the sample rate, whether its bytes can be sent as they are
generated, and how :mod:`csm_service.audio.containers` writes it (libsndfile or G.711). FLAC waits
for the whole utterance; MP3 and Opus are written by libsndfile as the audio comes.
"""

from __future__ import annotations

from dataclasses import dataclass

from csm_service.core.constants import SAMPLE_RATE


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
        FileFormat("wav", "audio/wav", SAMPLE_RATE, streams=True),
        FileFormat("pcm", "audio/pcm", SAMPLE_RATE, streams=True),  # s16le mono, as OpenAI's
        FileFormat("flac", "audio/flac", SAMPLE_RATE, streams=False, sndfile=("FLAC", "PCM_16")),
        FileFormat("mp3", "audio/mpeg", SAMPLE_RATE, streams=True, sndfile=("MP3", "MPEG_LAYER_III")),
        FileFormat("opus", "audio/ogg", SAMPLE_RATE, streams=True, sndfile=("OGG", "OPUS")),
        FileFormat("mulaw", "audio/basic", 8_000, streams=True, g711="mulaw"),
        FileFormat("alaw", "audio/x-alaw-basic", 8_000, streams=True, g711="alaw"),
    )
}
NO_ENCODER = ("aac",)  # OpenAI names we cannot produce
