"""Uploaded audio files (WAV, FLAC, OGG/Vorbis/Opus, MP3; any rate) -> mono float32 samples, bounded.

libsndfile (through soundfile) reads all of them from memory or from a path; no torch, no ffmpeg.

A few hundred KiB of compressed silence can declare hours of 8-channel audio (a decompression
bomb: 464 KiB of FLAC is 20 min x 8 channels x 48 kHz, 1.8 GB as float32). So nothing is decoded
whole. The header is checked first (format, channels, sample rate, declared duration); then the
samples are read in blocks, mixed to mono block by block, and reading stops one frame past the
duration limit whatever the header said (it may say "unknown", or lie). What a decode holds is
bounded by the limits, never by the file's claim: about ``max_seconds * max_rate`` mono float32
samples (23 MB at 30 s and 192 kHz, twice that while they are joined) plus one block.

Every route that takes audio files uses :func:`decode_audio` (or :func:`prompt_audio`): voice
uploads, WebSocket ``context`` audio, ``csm-service say --voice FILE``. Raw mu-law or PCM16 (a
WebSocket ``context`` in those formats) is bounded by its byte length instead (:func:`raw_audio`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from csm_service.audio.g711 import mulaw_to_pcm16
from csm_service.core.constants import MAX_PROMPT_RATE, MIN_PROMPT_RATE

ACCEPTED = ("WAV", "FLAC", "OGG", "MP3")
SF_COUNT_MAX = 2**63 - 1  # libsndfile's frame count when a header does not say (e.g. streamed FLAC)
BLOCK_FRAMES = 1 << 16  # frames read at once: at most 512 KiB of float32 with 2 channels
MAX_CHANNELS, MAX_RATE_HZ = 2, 192_000  # ServiceConfig's defaults (max_audio_channels, max_audio_rate_hz)
MIN_VOICE_SECONDS = 0.5  # a voice prompt (upload, say --voice): at least this much speech
RAW_FORMATS = {"mulaw_8khz": (8_000, 1), "pcm16_8khz": (8_000, 2), "pcm16_24khz": (24_000, 2)}  # rate, width
CONTAINER_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"RF64": "RF64", b"fLaC": "FLAC", b"OggS": "OGG", b"ID3": "MP3"}


class BadAudio(ValueError):
    """The bytes are not audio we can read, hold no samples, or exceed the route's limits."""


class UnacceptedFormat(BadAudio):
    """A readable file in a container the route does not take (``container``: libsndfile's name)."""

    def __init__(self, container: str, accepted: tuple[str, ...]) -> None:
        super().__init__(f"{container} files are not accepted; send {' or '.join(accepted)}")
        self.container = container


@dataclass(frozen=True)
class AudioLimits:
    """What one route accepts. A decode holds at most ``max_seconds * max_rate`` mono samples."""

    max_seconds: float = 30.0  # ServiceConfig.max_voice_seconds
    max_channels: int = MAX_CHANNELS
    max_rate: int = MAX_RATE_HZ
    min_rate: int = MIN_PROMPT_RATE  # what EncodePrompt takes at the low end
    min_seconds: float = 0.0  # checked by prompt_audio, after decoding
    formats: tuple[str, ...] = ACCEPTED

    @classmethod
    def from_config(cls, cfg: object, **overrides: object) -> AudioLimits:
        """The limits of a ServiceConfig (``max_voice_seconds``, ``max_audio_channels``, ``max_audio_rate_hz``)."""
        return cls(
            max_seconds=cfg.max_voice_seconds,  # type: ignore[attr-defined]
            max_channels=cfg.max_audio_channels,  # type: ignore[attr-defined]
            max_rate=cfg.max_audio_rate_hz,  # type: ignore[attr-defined]
            **overrides,  # type: ignore[arg-type]
        )

    def max_frames(self, rate: int) -> int:
        """The most frames (per channel) a file at ``rate`` may hold."""
        return int(self.max_seconds * rate)


def decode_audio(source: bytes | str | os.PathLike, limits: AudioLimits | None = None) -> tuple[np.ndarray, int]:
    """-> (samples float32 [N] in [-1, 1], mixed to mono, sample rate); BadAudio when refused.

    ``source``: the file's bytes, or a path (read from disk block by block). ``limits``: the
    route's; the defaults are ServiceConfig's defaults for a voice prompt.
    """
    limits = limits or AudioLimits()
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise BadAudio("the file is empty")
        source = io.BytesIO(source)
    try:
        with soundfile.SoundFile(source) as f:
            _check_header(f, limits)
            mono, rate = _read_mono(f, limits.max_frames(f.samplerate), limits.max_seconds), f.samplerate
    except BadAudio:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadAudio(f"not a readable audio file (WAV, FLAC, OGG or MP3): {exc}") from None
    if mono.size == 0:
        raise BadAudio("the file holds no audio samples")
    if not np.isfinite(mono).all():
        raise BadAudio("the audio holds NaN or infinite samples")
    return np.clip(mono, -1.0, 1.0, out=mono), int(rate)


def prompt_audio(source: bytes | str | os.PathLike, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """:func:`decode_audio`, then what a voice prompt needs: at least ``limits.min_seconds``, and
    at most MAX_PROMPT_RATE (higher rates are resampled down, as EncodePrompt takes no more)."""
    samples, rate = decode_audio(source, limits)
    seconds = len(samples) / rate
    if seconds < limits.min_seconds:
        raise BadAudio(f"{seconds:.2f} s; at least {limits.min_seconds:g} s of speech")
    if rate > MAX_PROMPT_RATE:
        samples, rate = soxr.resample(samples, rate, MAX_PROMPT_RATE).astype(np.float32), MAX_PROMPT_RATE
    return samples, rate


def raw_audio(data: bytes, fmt: str, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """Raw mu-law or PCM16 (``fmt``: one of RAW_FORMATS) -> (samples, rate), bounded by its byte
    length before it is converted; UnacceptedFormat when it is a file, BadAudio past ``limits``."""
    rate, width = RAW_FORMATS[fmt]
    container = next((name for magic, name in CONTAINER_MAGIC.items() if data.startswith(magic)), None)
    if container is not None:
        raise UnacceptedFormat(container, (fmt,))
    if len(data) > limits.max_frames(rate) * width:
        raise BadAudio(f"{len(data) / width / rate:.1f} s of {fmt}; at most {limits.max_seconds:g} s")
    if width == 2 and len(data) % 2:
        raise BadAudio("PCM16 needs an even number of bytes")
    pcm16 = mulaw_to_pcm16(data) if width == 1 else np.frombuffer(data, dtype="<i2")
    return pcm16.astype(np.float32) / 32768.0, rate


def _check_header(f: soundfile.SoundFile, limits: AudioLimits) -> None:
    """Refuse by what the header declares, before a sample is decoded."""
    if f.format not in limits.formats:
        raise UnacceptedFormat(f.format, limits.formats)
    if f.channels > limits.max_channels:
        raise BadAudio(f"{f.channels} channels; at most {limits.max_channels}")
    if f.samplerate < limits.min_rate:
        raise BadAudio(f"{f.samplerate} Hz; at least {limits.min_rate} Hz")
    if f.samplerate > limits.max_rate:
        raise BadAudio(f"{f.samplerate} Hz; at most {limits.max_rate} Hz")
    if f.frames != SF_COUNT_MAX and f.frames > limits.max_frames(f.samplerate):
        raise BadAudio(f"{f.frames / f.samplerate:.1f} s (its header says); at most {limits.max_seconds:g} s")


def _read_mono(f: soundfile.SoundFile, max_frames: int, max_seconds: float) -> np.ndarray:
    """Every frame there is, mixed to mono block by block; BadAudio past ``max_frames``."""
    block = np.empty((BLOCK_FRAMES, f.channels), dtype=np.float32)
    parts: list[np.ndarray] = []
    total = 0
    while (got := _readf(f, block, min(BLOCK_FRAMES, max_frames + 1 - total))) > 0:
        total += got
        if total > max_frames:  # the header said less, or did not say
            raise BadAudio(f"over {max_seconds:g} s of audio (more than its header says); at most {max_seconds:g} s")
        parts.append(block[:got].mean(axis=1))  # a new array: the block is reused
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def _readf(f: soundfile.SoundFile, out: np.ndarray, frames: int) -> int:
    """libsndfile's ``sf_readf_float``: up to ``frames`` frames into ``out``; 0 at the end.

    Not ``SoundFile.read``: it trusts the header (clamps to its frame count, and seeks after
    each read, which fails when the header says "unknown"); this reads what is really there.
    """
    ffi, snd = soundfile._ffi, soundfile._snd
    got = snd.sf_readf_float(f._file, ffi.cast("float *", out.ctypes.data), frames)  # `out` stays alive
    error = snd.sf_error(f._file)
    if error:
        raise BadAudio(f"not a readable audio file: {ffi.string(snd.sf_error_number(error)).decode(errors='replace')}")
    return int(got)


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
