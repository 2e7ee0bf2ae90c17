"""Twilio media-stream pieces that need no server: frame pacing on a fake clock, framing, parsing."""

from __future__ import annotations

import base64
import json

import pytest

from csm_service.api import twilio_stream as protocol
from csm_service.api.twilio_stream import typed_value as _typed
from csm_service.core.events import SpeechChunk
from csm_service.core.request import AudioEncoding, SpeechRequest
from csm_service.edge.throttle import ThrottledBackend
from csm_service.edge.twilio.pacer import FramePacer
from tests.fake_clock import FakeClock


def test_pacer_sends_the_lead_at_once_then_one_frame_per_20_ms():
    clock = FakeClock()
    pacer = FramePacer(lead_s=0.060, clock=clock)
    sent_at = []
    for _ in range(50):
        clock.now += pacer.delay()  # the sender sleeps exactly as long as it is told
        sent_at.append(clock.now)
        pacer.sent()
    assert sent_at[:4] == [100.0] * 4  # the playing frame plus 60 ms of lead
    gaps = [round(b - a, 9) for a, b in zip(sent_at[3:-1], sent_at[4:], strict=True)]
    assert set(gaps) == {0.02}
    assert pacer.buffered_s() == pytest.approx(0.080)  # never more than one frame past the lead


def test_pacer_deadlines_are_absolute_so_late_wakeups_do_not_drift():
    clock = FakeClock()
    pacer = FramePacer(lead_s=0.060, clock=clock)
    for i in range(200):
        clock.now += pacer.delay() + (0.004 if i % 3 == 0 else 0.0)  # the sleep overshoots now and then
        pacer.sent()
    # 200 frames = 4 s of audio; late wake-ups ate into the lead instead of adding up
    assert pacer.play_end == pytest.approx(100.0 + 4.0, abs=0.005)


def test_pacer_restarts_after_an_underrun_and_after_reset():
    clock = FakeClock()
    pacer = FramePacer(lead_s=0.060, clock=clock)
    pacer.sent()
    clock.now += 1.0  # nothing to send for a second: Twilio played out its buffer
    assert pacer.delay() == 0.0 and pacer.buffered_s() == 0.0
    pacer.sent()
    assert pacer.play_end == pytest.approx(clock.now + 0.020)
    for _ in range(10):
        pacer.sent()
    pacer.reset()  # clear: Twilio's buffer is empty
    assert pacer.delay() == 0.0 and pacer.buffered_s() == 0.0


def _adaptive(clock: FakeClock) -> FramePacer:
    return FramePacer(lead_s=0.060, max_lead_s=0.400, clock=clock)


def test_fixed_lead_never_holds_or_grows():
    """max_lead_s = lead_s (or none given) is the pacer as it was: no hold, no growth."""
    clock = FakeClock()
    pacer = FramePacer(lead_s=0.060, max_lead_s=0.060, clock=clock)
    pacer.sent()
    clock.now += 1.0  # an underrun
    assert pacer.delay() == 0.0
    pacer.sent()
    assert pacer.lead_s == 0.060


def test_lead_grows_on_a_near_miss_and_an_underrun_up_to_the_max():
    clock = FakeClock()
    pacer = _adaptive(clock)
    pacer.sent(first_of_utterance=True)
    clock.now += 0.005  # 15 ms left at Twilio when the next frame came: a near miss, one frame more
    pacer.sent()
    assert pacer.lead_s == pytest.approx(0.080)
    clock.now += 0.035 + 0.050  # Twilio ran dry 50 ms before the next frame came
    pacer.sent()
    assert pacer.lead_s == pytest.approx(0.130)  # grown by the silence
    clock.now += 5.0
    pacer.sent()
    assert pacer.lead_s == pytest.approx(0.400)  # never past the max


def test_an_utterances_first_frame_says_nothing_about_generation():
    clock = FakeClock()
    pacer = _adaptive(clock)
    pacer.sent(first_of_utterance=True)
    clock.now += 5.0  # the caller's turn, then the next utterance
    pacer.sent(first_of_utterance=True)
    assert pacer.lead_s == 0.060


def test_restart_holds_the_cushion_and_shrinks_back_when_ahead():
    clock = FakeClock()
    pacer = _adaptive(clock)
    pacer.lead_s = 0.200  # as learnt from underruns
    pacer.reset()  # a clear: the lead learnt stays, Twilio's buffer is empty
    assert pacer.delay() == pytest.approx(0.140)  # hold lead - min_lead: that much more is generated first
    clock.now += 0.100
    assert pacer.delay() == pytest.approx(0.040)  # the hold runs from when the frame came, not from each ask
    clock.now += 0.040
    pacer.sent()
    sent = 1
    while pacer.lead_s > 0.060:  # generation is ahead: every frame waits for the pacer
        clock.now += pacer.delay()
        pacer.sent()
        sent += 1
    assert 100 < sent < 200  # 1 ms per 20 ms frame: back to the least lead in about 3 s of audio
    assert pacer.buffered_s() <= 0.080 + 0.001 + 1e-9  # the least lead (one shrink step behind) + a frame


def _arrivals(rtf: float, seconds: float) -> list[float]:
    """When each 20 ms frame is ready, from an engine at ``rtf`` whose chunks ramp 1, 1, 2, then 4
    frames of 80 ms (its default), each released once the whole chunk is generated."""
    out: list[float] = []
    audio, sizes = 0.0, [1, 1, 2]
    while audio < seconds:
        frames = sizes.pop(0) if sizes else 4
        audio += frames * 0.080
        out += [rtf * audio] * (frames * 4)
    return out


def _underruns(pacer: FramePacer, clock: FakeClock, arrivals: list[float]) -> tuple[int, float]:
    """Send every frame as the call's sender does -> (times Twilio ran dry, most audio held at Twilio)."""
    play_end, gaps, most = None, 0, 0.0
    for i, ready in enumerate(arrivals):
        clock.now = max(clock.now, ready)
        clock.now += pacer.delay()
        pacer.sent(first_of_utterance=i == 0)
        if play_end is not None and clock.now > play_end:
            gaps += 1
        play_end = max(play_end or clock.now, clock.now) + 0.020
        most = max(most, play_end - clock.now)
    return gaps, most


def test_adaptive_lead_turns_a_stutter_into_a_few_pauses():
    """Generation at real time (RTF 1.0): with a fixed lead every chunk arrives a little late;
    the adaptive lead builds a cushion after the first underruns."""
    fixed = _underruns(FramePacer(0.060, clock=(c := FakeClock(0.0))), c, _arrivals(1.0, 9.0))
    adaptive = _underruns(_adaptive(c := FakeClock(0.0)), c, _arrivals(1.0, 9.0))
    assert fixed[0] >= 10 and adaptive[0] <= 3, (fixed, adaptive)
    assert adaptive[1] <= 0.400 + 0.020 + 1e-9  # never more than the max lead (and the frame) at Twilio


def test_frames_cut_and_pad_with_mulaw_silence():
    audio = bytes(range(256)) * 2  # 512 bytes
    frames, rest = protocol.frames(audio, pad_last=False)
    assert [len(f) for f in frames] == [160, 160, 160] and rest == audio[480:]
    frames, rest = protocol.frames(audio, pad_last=True)
    assert rest == b"" and frames[-1] == audio[480:] + b"\xff" * 128
    assert b"".join(frames)[:512] == audio


def test_messages_are_twilios_shapes():
    assert json.loads(protocol.clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
    assert json.loads(protocol.mark_message("MZ1", "utt_1")) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": "utt_1"},
    }
    media = json.loads(protocol.media_message("MZ1", b"\x01\x02"))
    assert media["event"] == "media" and base64.b64decode(media["media"]["payload"]) == b"\x01\x02"


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"event": "dance"}', '{"no": "event"}'],
)
def test_parse_rejects_what_twilio_does_not_send(text):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_event(text)


def test_media_payload_must_be_base64():
    with pytest.raises(protocol.ProtocolError, match="base64"):
        protocol.media_payload({"event": "media", "media": {"payload": "***"}})
    with pytest.raises(protocol.ProtocolError, match="missing"):
        protocol.media_payload({"event": "media"})
    assert protocol.media_payload({"event": "media", "media": {"payload": "AAE="}}) == b"\x00\x01"


def test_custom_parameters_become_typed_defaults():
    assert [_typed(v) for v in ("7", "0.7", "true", "False", "voice_ab")] == [7, 0.7, True, False, "voice_ab"]


class _InstantBackend:
    """Chunks of the given lengths (ms), each ready after ``work_s`` of the fake clock."""

    def __init__(self, clock: FakeClock, durations_ms: list[float], work_s: float = 0.0) -> None:
        self.clock, self.durations_ms, self.work_s = clock, durations_ms, work_s
        self.device = "cpu"

    async def stream(self, request):
        for i, ms in enumerate(self.durations_ms):
            self.clock.now += self.work_s
            yield SpeechChunk(b"", i, ms, AudioEncoding.MULAW_8KHZ, 8000)


async def _released_at(backend, clock: FakeClock, rtf: float) -> list[float]:
    async def sleep(seconds: float) -> None:
        clock.now += seconds

    throttled = ThrottledBackend(backend, rtf, clock=clock, sleep=sleep)
    assert throttled.device == "cpu"  # everything but stream() is the backend's own
    return [round(clock.now - 100.0, 6) async for _ in throttled.stream(SpeechRequest("hi"))]


async def test_throttle_holds_each_chunk_until_rtf_times_the_audio_so_far():
    clock = FakeClock()
    released = await _released_at(_InstantBackend(clock, [80, 80, 160, 320]), clock, rtf=0.9)
    assert released == [0.072, 0.144, 0.288, 0.576]


async def test_throttle_never_speeds_up_a_slower_engine():
    clock = FakeClock()
    released = await _released_at(_InstantBackend(clock, [80, 80], work_s=0.1), clock, rtf=0.9)
    assert released == [0.1, 0.2]  # 1.25 RTF already: nothing added
