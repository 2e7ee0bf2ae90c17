"""Twilio media-stream pieces that need no server: frame pacing on a fake clock, framing, parsing."""

from __future__ import annotations

import base64
import json

import pytest

from csm_service.api import twilio_stream as protocol
from csm_service.api.twilio_stream import typed_value as _typed
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
