"""Time stretching (WSOLA) and the file encoders behind /v1/audio/speech."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import soundfile

from csm_service.audio.containers import StreamingFile, encode_file, streaming_wav_header
from csm_service.audio.stretch import TimeStretch
from csm_service.core.formats import FILE_FORMATS

RATE = 24_000


def tone(hz: float, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    x = x[RATE // 10 : -RATE // 10]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * RATE / len(x))


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.25, 2.0, 4.0])
def test_length_follows_speed_and_pitch_stays(speed):
    x = tone(220.0, seconds=1.5 * max(1.0, speed))  # output long enough for a 2 Hz-fine spectrum
    y = TimeStretch(speed).process(x, last=True)
    assert len(y) == round(len(x) / speed)
    assert abs(peak_hz(y) - 220.0) < 2.0  # a resampler would have moved it to 220 * speed
    assert abs(float(np.abs(y[RATE // 10 : -RATE // 10]).max()) - 0.5) < 0.03  # windows sum to one


@pytest.mark.parametrize("speed", [0.5, 1.5])
def test_chunking_does_not_change_the_output(speed):
    x = tone(180.0) + 0.1 * tone(523.0)
    whole = TimeStretch(speed).process(x, last=True)
    stretch = TimeStretch(speed)
    cuts = [0, 7, 1000, 1001, 5000, 17_000, len(x)]
    parts = [stretch.process(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    parts.append(stretch.process(np.zeros(0, np.float32), last=True))
    assert np.array_equal(np.concatenate(parts), whole)


def test_speed_one_is_untouched_and_range_is_checked():
    x = tone(300.0)
    assert np.array_equal(TimeStretch(1.0).process(x), x)
    with pytest.raises(ValueError, match="speed"):
        TimeStretch(4.5)


def test_streaming_wav_header_is_read_to_the_end():
    pcm = (tone(440.0) * 20000).astype("<i2")
    data = streaming_wav_header(RATE) + pcm.tobytes()
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == RATE and w.readframes(w.getnframes()) == pcm.tobytes()
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and np.array_equal(decoded, pcm)


def test_flac_round_trips_and_lossy_formats_decode():
    pcm = (tone(330.0) * 12000).astype(np.int16)
    flac, rate = soundfile.read(io.BytesIO(encode_file(pcm, FILE_FORMATS["flac"])), dtype="int16")
    assert rate == RATE and np.array_equal(flac, pcm)
    for name in ("mp3", "opus"):
        decoded, rate = soundfile.read(io.BytesIO(encode_file(pcm, FILE_FORMATS[name])), dtype="float32")
        assert rate == RATE and abs(len(decoded) - len(pcm)) <= 2400
        assert abs(peak_hz(decoded) - 330.0) < 3.0, name
    with pytest.raises(ValueError):
        encode_file(pcm, FILE_FORMATS["wav"])


@pytest.mark.parametrize("name", ["mp3", "opus"])
def test_streamed_mp3_and_opus_come_chunk_by_chunk_and_make_one_valid_file(name):
    """Each 80 ms chunk's bytes leave at once (an Ogg page per chunk; MP3 frames as LAME makes
    them); the pieces joined are one file that decodes to the audio, its length readable."""
    pcm = (tone(330.0, seconds=2.0) * 12000).astype("<i2")
    stream = StreamingFile(FILE_FORMATS[name])
    pieces = [stream.write(pcm[i : i + 1920].tobytes()) for i in range(0, len(pcm), 1920)]
    pieces.append(stream.close())
    assert all(pieces[1:-1]), [len(p) for p in pieces]  # every chunk let bytes out, none waited for the end
    assert stream.close() == b""  # closing twice is harmless
    decoded, rate = soundfile.read(io.BytesIO(b"".join(pieces)), dtype="float32")
    assert rate == RATE and len(pcm) <= len(decoded) <= len(pcm) + 2400, len(decoded)  # MP3's padding
    assert abs(peak_hz(decoded) - 330.0) < 3.0
