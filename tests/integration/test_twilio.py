"""The Twilio-native media stream against a Twilio simulator (csm_service/tools/twilio_sim.py).

What is checked: 20 ms mu-law frames whose audio is byte for byte the native API's audio for
the same request; a mark after every utterance, echoed once played; pacing (never far ahead of
the playhead); barge-in by ``say`` with ``interrupt``, by ``clear``, by DTMF and by caller speech:
``clear`` goes out, the engine stream is cancelled, the queue is purged, and the first frame
after the ``clear`` is the new utterance's; caller speech (espeak-ng's, tests/data/) barges in within
150 ms of audio, noise, hum and the bot's own echo never; ``stop``; bad messages that do not end the call.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import pathlib
import time
import urllib.request

import aiohttp
import pytest

from csm_service.tools.twilio_sim import TwilioSimulator, as_loud_as, hum, white_noise
from tests.integration.servers import async_wait_until

SAMPLING = {"max_audio_length_ms": 800, "raw_text": True}
CALLER_SPEECH = (pathlib.Path(__file__).resolve().parent.parent / "data" / "caller_speech.ulaw").read_bytes()
# Caller speech barges in by its 8th 20 ms frame (160 ms). Silero hears the fixture at its 6th or 7th
# frame: the model reads 32 ms windows, so where the windows fall against the onset moves it by one.
SPEECH_HEARD_FRAMES = 8
_sids = itertools.count(1)


def new_sid() -> str:
    return f"MZ{next(_sids):032d}"


class ConnectedSim:
    """A simulator whose ``start`` the server has registered (its streamSid is in /v1/calls)."""

    def __init__(self, served, **custom: object) -> None:
        url = f"ws://127.0.0.1:{served.port}/v1/twilio/media-stream"
        self.served = served
        self.twilio = TwilioSimulator(url, new_sid(), {k: str(v) for k, v in custom.items()})

    async def __aenter__(self) -> TwilioSimulator:
        await self.twilio.__aenter__()
        sid, url = self.twilio.stream_sid, f"{self.served.url}/v1/calls"
        await async_wait_until(lambda: sid in urllib.request.urlopen(url).read().decode(), 10, "call listed")
        return self.twilio

    async def __aexit__(self, *exc: object) -> None:
        await self.twilio.__aexit__(*exc)


sim = ConnectedSim


async def native_mulaw(served, text: str, **fields: object) -> bytes:
    body = {"text": text, "output_format": "mulaw", **SAMPLING, **fields}
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return base64.b64decode((await resp.json())["audio_base64"])


def assert_same_audio(sent: bytes, reference: bytes) -> None:
    """The call's audio is the reference, padded with mu-law silence to whole 20 ms frames."""
    assert sent[: len(reference)] == reference
    padding = sent[len(reference) :]
    assert len(padding) < 160 and set(padding) <= {0xFF}, len(padding)
    assert len(sent) % 160 == 0


async def call_state(served, sid: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/v1/calls/{sid}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post(served, path: str, body: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}{path}", json=body or {}) as resp:
        return resp.status, await resp.json()


async def statuses(served, sid: str) -> dict[str, str]:
    return {u["utterance_id"]: u["status"] for u in (await call_state(served, sid))["utterances"]}


async def wait_status(served, sid: str, utterance_id: str, status: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (await statuses(served, sid)).get(utterance_id) == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{utterance_id} never became {status}: {await statuses(served, sid)}")


def engine_cancelled(served) -> float:
    return served.metric("csm_engine_cancelled_running_total")


async def test_greeting_frames_marks_and_equivalence(served):
    greeting = "Hello, thanks for calling the front desk."
    async with sim(served, greeting=greeting, seed=5, **SAMPLING) as twilio:
        await async_wait_until(lambda: "utt_1" in twilio.echoed, 60, "the greeting's mark echoed")
        state = await call_state(served, twilio.stream_sid)
    media = [r.payload for r in twilio.log if r.event == "media"]
    assert media and all(len(frame) == 160 for frame in media)
    [(audio, end)] = twilio.segments()
    assert end == "mark:utt_1"
    assert_same_audio(audio, await native_mulaw(served, greeting, seed=5))
    [utterance] = state["utterances"]
    assert utterance["status"] == "played" and utterance["seed"] == 5
    assert utterance["frames_sent"] == len(media) and utterance["time_to_first_frame_ms"] > 0
    assert state["call_sid"].startswith("CA") and state["inbound_frames"] > 0


async def test_pacing_stays_near_the_playhead(served):
    """Frames go out as they play, at most ``--twilio-lead-ms`` (60) ahead: the generator runs
    faster than real time here, so an unpaced sender would be hundreds of ms ahead by the end."""
    async with sim(served) as twilio:
        status, body = await post(
            served,
            f"/v1/calls/{twilio.stream_sid}/say",
            {"text": "A longer sentence to pace.", "max_audio_length_ms": 2400, "seed": 1},
        )
        assert status == 202, body
        await async_wait_until(lambda: "utt_1" in twilio.echoed, 60, "mark echoed")
    arrivals = [r.at for r in twilio.log if r.event == "media"]
    first = arrivals[0]
    ahead_ms = [((i + 1) * 20) - (t - first) * 1000 for i, t in enumerate(arrivals)]
    span_ms = (arrivals[-1] - first) * 1000
    print(f"pacing: {len(arrivals)} frames over {span_ms:.0f} ms, at most {max(ahead_ms):.0f} ms ahead")
    assert max(ahead_ms) <= 60 + 20 + 200  # lead + one frame + scheduling slack
    assert span_ms >= len(arrivals) * 20 - 60 - 200


async def test_say_interrupt_cuts_speech_purges_queue_and_cancels_engine(served):
    async with sim(served) as twilio:
        sid = twilio.stream_sid
        long_say = {"text": "This is a long announcement.", "max_audio_length_ms": 6000, "seed": 1}
        assert (await post(served, f"/v1/calls/{sid}/say", long_say))[0] == 202
        status, queued = await post(
            served, f"/v1/calls/{sid}/say", {"text": "Queued behind it.", "seed": 2, **SAMPLING}
        )
        assert status == 202 and queued["ahead"] == 1
        await async_wait_until(lambda: sum(r.event == "media" for r in twilio.log) >= 10, 60, "first frames")
        cancelled_before = engine_cancelled(served)
        posted = time.monotonic()
        urgent = {"text": "Sorry, one moment.", "seed": 3, "interrupt": True, **SAMPLING}
        status, body = await post(served, f"/v1/calls/{sid}/say", urgent)
        assert status == 202 and body["ahead"] == 0, body
        await async_wait_until(lambda: "utt_3" in twilio.echoed, 60, "the new utterance played")
        clear_at = next(r.at for r in twilio.log if r.event == "clear")
        print(f"barge-in: clear arrived {(clear_at - posted) * 1000:.1f} ms after the say was posted")
        final = await statuses(served, sid)
        state = await call_state(served, sid)
    segments = twilio.segments()
    assert [end for _, end in segments] == ["clear", "mark:utt_3"]  # utt_1 never reached its mark
    assert_same_audio(segments[1][0], await native_mulaw(served, urgent["text"], seed=3))
    assert final == {"utt_1": "interrupted", "utt_2": "cleared", "utt_3": "played"}
    first = state["utterances"][0]
    assert 0 <= first["heard_ms"] <= first["duration_ms"]
    # the engine stream was cancelled (the slot freed), not left to run to its end
    await async_wait_until(lambda: engine_cancelled(served) >= cancelled_before + 1, 10, "engine cancel")


async def test_clear_api_dtmf_and_caller_speech_barge_in(served):
    long_say = {"text": "Please listen to the following options.", "max_audio_length_ms": 6000, "seed": 4}
    async with sim(served, barge_in="dtmf,speech") as twilio:
        sid = twilio.stream_sid

        async def speak_then(trigger) -> None:
            before = sum(r.event == "clear" for r in twilio.log)
            assert (await post(served, f"/v1/calls/{sid}/say", long_say))[0] == 202
            frames = sum(r.event == "media" for r in twilio.log)
            await async_wait_until(lambda: sum(r.event == "media" for r in twilio.log) >= frames + 5, 60, "speaking")
            await trigger()
            await async_wait_until(lambda: sum(r.event == "clear" for r in twilio.log) > before, 30, "clear")

        await speak_then(lambda: twilio.dtmf("5"))
        await wait_status(served, sid, "utt_1", "interrupted")

        async def caller_speaks() -> None:
            twilio.caller_says(CALLER_SPEECH)

        await speak_then(caller_speaks)
        await wait_status(served, sid, "utt_2", "interrupted")
        await async_wait_until(lambda: twilio.caller_done, 30, "the caller finished")

        async def clear_api() -> None:
            status, body = await post(served, f"/v1/calls/{sid}/clear")
            assert status == 200 and body["cleared"] == ["utt_3"], body

        await speak_then(clear_api)
        await wait_status(served, sid, "utt_3", "interrupted")
        state = await call_state(served, sid)
        assert state["dtmf"] == "5" and state["barge_in"] == ["dtmf", "speech"]
        # nothing after a clear belongs to the utterance it cut: every segment ends at a clear
        assert [end for _, end in twilio.segments()] == ["clear", "clear", "clear"]
        status, body = await post(served, f"/v1/calls/{sid}/clear")  # idle: nothing to cut
        assert status == 200 and body["cleared"] == []


async def test_stop_ends_the_call(served):
    async with sim(served) as twilio:
        sid = twilio.stream_sid
        await twilio.stop()
        await twilio.closed(10)
    status, body = await post(served, f"/v1/calls/{sid}/say", {"text": "Anyone there?"})
    assert status == 404 and body["error"] == "Not Found", body


async def test_bad_messages_and_requests_do_not_end_the_call(served):
    async with sim(served, voice="default", seed=6, **SAMPLING) as twilio:
        sid = twilio.stream_sid
        for garbage in ("{not json", '{"event": "dance"}', '{"event": "media", "media": {"payload": "***"}}', "[]"):
            await twilio.send_raw(garbage)
        for body, code, field in (
            ({"text": ""}, 422, "text"),
            ({"text": "hi", "interrupt": "yes"}, 422, "interrupt"),
            ({"text": "hi", "voice": "voice_nope"}, 422, "voice_profile_id"),
            ({"text": "hi", "temperature": 0}, 422, "temperature"),
        ):
            status, reply = await post(served, f"/v1/calls/{sid}/say", body)
            assert status == code and reply.get("field") == field, (body, reply)
        status, _ = await post(served, f"/v1/calls/{sid}/say", {"text": "Still here."})
        assert status == 202
        await async_wait_until(lambda: "utt_1" in twilio.echoed, 60, "spoken after the garbage")
        state = await call_state(served, sid)
        assert state["protocol_errors"] == 4
    assert_same_audio(twilio.segments()[0][0], await native_mulaw(served, "Still here.", seed=6))
    assert (await post(served, "/v1/calls/MZnope/clear"))[0] == 404


@pytest.mark.parametrize("path", ["/v1/twilio/media-stream"])
async def test_plain_get_is_426(served, path):
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}{path}") as resp:
        assert resp.status == 426 and resp.headers["Upgrade"] == "websocket"


async def test_queue_is_bounded_per_call(served):
    """At most --max-inflight-per-session (3 here) utterances wait or speak on one call."""
    async with sim(served) as twilio:
        sid = twilio.stream_sid
        codes = [(await post(served, f"/v1/calls/{sid}/say", {"text": f"number {i}", **SAMPLING}))[0] for i in range(5)]
        assert codes == [202, 202, 202, 429, 429]
        status, body = await post(served, f"/v1/calls/{sid}/clear")
        assert status == 200 and len(body["cleared"]) == 3
        assert (await post(served, f"/v1/calls/{sid}/say", {"text": "room again", **SAMPLING}))[0] == 202


async def test_call_voice_from_custom_parameters(served):
    """<Parameter name="voice"> makes a stored voice profile the call's voice (its prompt first)."""
    from tests.integration.test_voices import recording, upload

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=upload(recording(), name="Call voice")) as resp:
            voice = await resp.json()
            assert resp.status == 201, voice
    greeting = "Good evening."
    async with sim(served, greeting=greeting, voice=voice["voice_id"], seed=8, **SAMPLING) as twilio:
        await async_wait_until(lambda: "utt_1" in twilio.echoed, 60, "the greeting's mark echoed")
        state = await call_state(served, twilio.stream_sid)
    assert state["utterances"][0]["voice_profile_id"] == voice["voice_id"]
    reference = await native_mulaw(served, greeting, seed=8, voice_profile_id=voice["voice_id"])
    assert_same_audio(twilio.segments()[0][0], reference)
    assert reference != await native_mulaw(served, greeting, seed=8)  # the voice is in the prompt


def inbound_frames(served, sid: str) -> int:
    return json.loads(urllib.request.urlopen(f"{served.url}/v1/calls/{sid}").read())["inbound_frames"]


async def test_caller_speech_barges_in_but_noise_hum_and_echo_never(served):
    """While the bot speaks: 1.5 s each of white noise (-30 dBFS), 50 Hz and 60 Hz hum, and the bot's
    own audio echoed 20 dB down; none barges in (every frame is counted by the call before we look).
    Then real speech, talking over the bot at least at the bot's level, does: heard within 150 ms of its
    onset, counted in the call's inbound frames (no clock involved)."""
    long_say = {"text": "Please hold while I look that up for you.", "max_audio_length_ms": 15000, "seed": 9}
    async with sim(served, barge_in="speech") as twilio:
        sid = twilio.stream_sid
        assert (await post(served, f"/v1/calls/{sid}/say", long_say))[0] == 202
        await async_wait_until(lambda: sum(r.event == "media" for r in twilio.log) >= 5, 60, "speaking")
        # One line noise after another, as a line's noise goes on: no silence between them. (Hum that
        # starts abruptly out of digital silence can fool Silero for a few frames: docs/benchmarks.md.)
        for noise in (white_noise(1.5, -30.0), hum(1.5, 50.0, -30.0), hum(1.5, 60.0, -30.0)):
            twilio.caller_says(noise)
        await async_wait_until(lambda: twilio.caller_done, 30, "noise sent")
        twilio.echo_gain = 0.1  # -20 dB
        echo_until = twilio.inbound_sent + 75
        await async_wait_until(lambda: twilio.inbound_sent >= echo_until, 30, "echo sent")
        twilio.echo_gain = 0.0
        sent = twilio.inbound_sent
        await async_wait_until(lambda: inbound_frames(served, sid) >= sent, 30, "the call counted every frame")
        assert not any(r.event == "clear" for r in twilio.log)
        assert (await statuses(served, sid))["utt_1"] == "speaking"  # still something to cut
        # The echo gate lets through speech within 16 dB of the loudest audio the bot sent lately;
        # tiny-random's audio is random, so the caller speaks at least at the bot's level.
        sent_by_bot = [r.payload for r in twilio.log if r.event == "media"]  # played or still buffered
        twilio.caller_says(as_loud_as(CALLER_SPEECH, sent_by_bot))
        await async_wait_until(lambda: any(r.event == "clear" for r in twilio.log), 30, "speech barged in")
        barge_in = (await call_state(served, sid))["last_barge_in"]
        assert barge_in["trigger"] == "speech"
        heard_after = barge_in["inbound_frame"] - twilio.said_from + 1  # frames of speech the call had
        assert heard_after <= SPEECH_HEARD_FRAMES, (barge_in, twilio.said_from)
        await wait_status(served, sid, "utt_1", "interrupted")
