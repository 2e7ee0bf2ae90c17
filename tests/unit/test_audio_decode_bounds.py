"""Audio decoding is bounded by the route's limits, never by what a file claims (issue 16, finding 1).

A header that declares hours, too many channels or an odd rate is refused before a sample is
decoded; a file whose header does not say how long it is (or says less) is cut one frame past the
limit; normal files decode exactly as the old whole-file decoder did.
"""

from __future__ import annotations

import base64
import io
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr

import csm_service.audio.decode as decode
import csm_service.edge.caller_turn as caller_turn
from csm_service.api.errors import ApiError
from csm_service.audio.decode import AudioLimits, BadAudio, UnacceptedFormat, decode_audio, prompt_audio
from csm_service.config import ServiceConfig
from tests.integration.test_audio_bombs import flac_claiming, silent_flac


def old_decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """The decoder before the fix (2681f58), the reference for normal files: all of it, at once."""
    with soundfile.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True)
        rate = f.samplerate
    mono = samples.mean(axis=1).astype(np.float32)
    return np.clip(mono, -1.0, 1.0), int(rate)


def audio_file(seconds: float, rate: int, channels: int = 1, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(channels)
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    signal = np.stack([voice + 0.02 * rng.standard_normal(t.size) for _ in range(channels)], axis=1)
    buf = io.BytesIO()
    soundfile.write(buf, signal.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The frames each block read asked for: empty means nothing was decoded."""
    calls: list[int] = []
    real = decode._readf

    def counting(f, out, frames):
        calls.append(frames)
        return real(f, out, frames)

    monkeypatch.setattr(decode, "_readf", counting)
    return calls


# -- refused by the header, before decoding ------------------------------------------------------


def test_a_header_that_claims_hours_is_refused_before_decoding(reads):
    one_second = audio_file(1.0, 16_000, fmt="FLAC")
    bomb = flac_claiming(one_second, 16_000 * 3600)
    assert len(bomb) < 64 << 10
    with pytest.raises(BadAudio, match=r"3600\.0 s \(its header says\); at most 30 s"):
        decode_audio(bomb, AudioLimits(max_seconds=30))
    assert reads == []


def test_the_464_kib_flac_bomb_is_refused_by_its_channels_before_decoding(reads):
    bomb = silent_flac(20 * 60 * 48_000, 48_000, 8)  # 1.8 GB as float32; the old decoder allocated it
    assert len(bomb) < 600 << 10
    with pytest.raises(BadAudio, match="8 channels; at most 2"):
        decode_audio(bomb)
    assert reads == []
    stereo = silent_flac(20 * 60 * 48_000, 48_000, 2)  # within the channels: refused by its length
    with pytest.raises(BadAudio, match=r"1200\.0 s \(its header says\); at most 30 s"):
        decode_audio(stereo)
    assert reads == []


def test_channels_at_the_bound(reads):
    assert decode_audio(audio_file(0.5, 8_000, channels=2), AudioLimits(max_channels=2))[0].shape == (4000,)
    reads.clear()
    with pytest.raises(BadAudio, match="3 channels; at most 2"):
        decode_audio(audio_file(0.5, 8_000, channels=3), AudioLimits(max_channels=2))
    assert reads == []
    assert decode_audio(audio_file(0.5, 8_000, channels=3), AudioLimits(max_channels=3))[0].shape == (4000,)


def test_sample_rate_at_the_bounds(reads):
    limits = AudioLimits(min_rate=8_000, max_rate=192_000)
    assert decode_audio(audio_file(0.1, 192_000), limits)[1] == 192_000
    assert decode_audio(audio_file(0.5, 8_000), limits)[1] == 8_000
    reads.clear()
    with pytest.raises(BadAudio, match="192001 Hz; at most 192000 Hz"):
        decode_audio(audio_file(0.1, 192_001), limits)
    with pytest.raises(BadAudio, match="7999 Hz; at least 8000 Hz"):
        decode_audio(audio_file(0.5, 7_999), limits)
    assert reads == []


def test_duration_at_the_bound_by_the_header():
    limits = AudioLimits(max_seconds=2.0)
    assert decode_audio(audio_file(2.0, 8_000), limits)[0].shape == (16_000,)
    with pytest.raises(BadAudio, match=r"2\.0 s \(its header says\); at most 2 s"):
        decode_audio(audio_file(16_001 / 8_000, 8_000), limits)


def test_formats_the_route_does_not_take():
    with pytest.raises(UnacceptedFormat, match="FLAC files are not accepted; send WAV") as err:
        decode_audio(audio_file(0.5, 8_000, fmt="FLAC"), AudioLimits(formats=("WAV",)))
    assert err.value.container == "FLAC"
    with pytest.raises(BadAudio, match="AIFF files are not accepted"):
        decode_audio(audio_file(0.5, 8_000, fmt="AIFF"))


# -- the header does not say, or says less: cut at the cap ---------------------------------------


def test_a_file_that_does_not_declare_its_length_is_cut_one_frame_past_the_cap(reads):
    sixty_seconds = flac_claiming(audio_file(60.0, 16_000, fmt="FLAC"), 0)
    assert soundfile.info(io.BytesIO(sixty_seconds)).frames == decode.SF_COUNT_MAX  # "unknown"
    with pytest.raises(BadAudio, match=r"over 10 s of audio \(more than its header says\); at most 10 s"):
        decode_audio(sixty_seconds, AudioLimits(max_seconds=10))
    assert sum(reads) == 10 * 16_000 + 1  # not one frame more was decoded
    whole, rate = decode_audio(sixty_seconds, AudioLimits(max_seconds=60))
    np.testing.assert_array_equal(whole, old_decode_audio(audio_file(60.0, 16_000, fmt="FLAC"))[0])


def test_the_cap_is_exact_when_the_header_does_not_say():
    exact = flac_claiming(audio_file(1.0, 16_000, fmt="FLAC"), 0)
    assert decode_audio(exact, AudioLimits(max_seconds=1.0))[0].shape == (16_000,)
    one_more = flac_claiming(audio_file(16_001 / 16_000, 16_000, fmt="FLAC"), 0)
    with pytest.raises(BadAudio, match="over 1 s of audio"):
        decode_audio(one_more, AudioLimits(max_seconds=1.0))


def test_a_header_that_says_less_than_is_there_is_not_read_past():
    claims_one_second = flac_claiming(audio_file(60.0, 16_000, fmt="FLAC"), 16_000)
    samples, _ = decode_audio(claims_one_second, AudioLimits(max_seconds=2))
    assert samples.shape == (16_000,)


def test_memory_is_bounded_by_the_cap_not_by_the_file():
    """20 minutes of stereo 48 kHz that does not declare its length: 460 MB as float32. The decode
    holds about the cap (30 s of mono float32 = 5.8 MB, twice while joining) plus one block."""
    bomb = flac_claiming(silent_flac(20 * 60 * 48_000, 48_000, 2), 0)
    tracemalloc.start()
    try:
        with pytest.raises(BadAudio, match="over 30 s of audio"):
            decode_audio(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"peak {peak / 2**20:.1f} MiB"


# -- normal files: exactly as before -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels", "seconds"),
    [
        ("WAV", "PCM_16", 16_000, 1, 2.0),
        ("WAV", "FLOAT", 44_100, 2, 3.0),  # several blocks, block boundaries mid-file
        ("FLAC", "PCM_24", 48_000, 2, 4.0),
        ("OGG", "VORBIS", 48_000, 1, 2.0),
        ("OGG", "OPUS", 48_000, 2, 2.0),
        ("MP3", None, 22_050, 1, 2.0),
    ],
)
def test_normal_files_decode_as_before(fmt, subtype, rate, channels, seconds):
    data = audio_file(seconds, rate, channels, fmt, subtype)
    old_samples, old_rate = old_decode_audio(data)
    samples, new_rate = decode_audio(data)
    assert new_rate == old_rate and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, old_samples)


def test_a_path_decodes_as_its_bytes(tmp_path):
    data = audio_file(1.5, 24_000, 2, "FLAC")
    path = tmp_path / "voice.flac"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_audio(path)[0], decode_audio(data)[0])


def test_unreadable_and_empty():
    with pytest.raises(BadAudio, match="empty"):
        decode_audio(b"")
    with pytest.raises(BadAudio, match="not a readable audio file"):
        decode_audio(b"this is not audio at all" * 20)
    with pytest.raises(BadAudio, match="no audio samples"):
        decode_audio(audio_file(0.0, 8_000))


def test_prompt_audio_minimum_and_resampling():
    with pytest.raises(BadAudio, match=r"0\.20 s; at least 0\.5 s of speech"):
        prompt_audio(audio_file(0.2, 16_000), AudioLimits(min_seconds=0.5))
    data = audio_file(1.0, 96_000)
    samples, rate = prompt_audio(data, AudioLimits(min_seconds=0.5))
    expected = soxr.resample(old_decode_audio(data)[0], 96_000, 48_000).astype(np.float32)
    assert rate == 48_000
    np.testing.assert_array_equal(samples, expected)


def test_limits_from_the_service_config():
    limits = AudioLimits.from_config(ServiceConfig())
    assert limits == AudioLimits()  # the module's defaults are the config's
    assert (limits.max_seconds, limits.max_channels, limits.max_rate) == (30.0, 2, 192_000)
    cfg = ServiceConfig(max_voice_seconds=5, max_audio_channels=1, max_audio_rate_hz=48_000)
    assert AudioLimits.from_config(cfg, min_seconds=0.5) == AudioLimits(5, 1, 48_000, min_seconds=0.5)


# -- WebSocket context audio: the declared format, and raw bytes bounded before conversion ---------


def caller_audio(fmt: str, data: bytes, max_seconds: float = 2.0) -> tuple[np.ndarray, int] | None:
    return caller_turn._caller_audio(base64.b64encode(data).decode(), fmt, AudioLimits(max_seconds=max_seconds))


def test_context_wav_must_be_a_wav_file():
    with pytest.raises(ApiError) as err:
        caller_audio("wav", audio_file(0.5, 16_000, fmt="FLAC"))
    assert err.value.status == 422 and err.value.field == "format"
    assert "'wav' declared, but audio_base64 holds a FLAC file" in str(err.value)
    with pytest.raises(ApiError) as err:
        caller_audio("wav", audio_file(0.5, 16_000, channels=8))
    assert err.value.field == "audio_base64" and "8 channels; at most 2" in str(err.value)
    samples, rate = caller_audio("wav", audio_file(0.5, 96_000))  # resampled for EncodePrompt
    assert rate == 48_000 and samples.shape == (24_000,)


@pytest.mark.parametrize("fmt", ["mulaw_8khz", "pcm16_8khz", "pcm16_24khz"])
@pytest.mark.parametrize("container", ["WAV", "FLAC", "OGG", "MP3"])
def test_context_raw_formats_must_not_be_files(fmt, container):
    data = audio_file(0.5, 16_000, fmt=container)
    if container == "MP3":  # known by its ID3 tag; a bare MPEG frame sync is also plausible mu-law
        data = b"ID3\x04\x00\x00\x00\x00\x00\x00" + data
    with pytest.raises(ApiError) as err:
        caller_audio(fmt, data)
    assert err.value.field == "format" and f"{fmt!r} declared, but audio_base64 holds a" in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "bytes_at_bound"), [("mulaw_8khz", 16_000), ("pcm16_8khz", 32_000), ("pcm16_24khz", 96_000)]
)
def test_context_raw_audio_at_the_bound_by_its_bytes(fmt, bytes_at_bound, monkeypatch):
    samples, rate = caller_audio(fmt, b"\x01" * bytes_at_bound)
    assert len(samples) / rate == 2.0
    width = 1 if fmt == "mulaw_8khz" else 2

    def no_conversion(*args):
        raise AssertionError("converted before the length check")

    monkeypatch.setattr(decode, "mulaw_to_pcm16", no_conversion)
    monkeypatch.setattr(decode.np, "frombuffer", no_conversion)
    with pytest.raises(ApiError) as err:
        caller_audio(fmt, b"\x01" * (bytes_at_bound + width))
    assert err.value.status == 422 and err.value.field == "audio_base64" and "at most 2 s" in str(err.value)
