"""One Twilio call: its media stream, what it has been asked to say, and barge-in.

Three tasks per call. The receive loop reads Twilio's events. The speaker generates the queued
utterances one after another (the next one while the previous still plays) and cuts their mu-law
into 20 ms frames. The sender paces those frames to Twilio (:class:`FramePacer`) and sends a mark
after each utterance; Twilio echoes the mark once that audio has played.

Barge-in (``say`` with ``interrupt``, ``POST .../clear``, a DTMF key or caller speech when the call
asked for it) does everything at once, before it returns: bumps the epoch so no frame queued
before it can be sent, sends ``clear`` (Twilio drops its buffer), cancels the engine stream,
and purges the queue. A frame is only sent under the send lock after checking the epoch, so the
first frame after a ``clear`` is always the next utterance's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from aiohttp import web

from csm_service.api import twilio_stream
from csm_service.api.errors import ApiError
from csm_service.api.speak import parse_speak
from csm_service.api.twilio_stream import CallParameters
from csm_service.core.errors import TOO_MANY_IN_FLIGHT
from csm_service.edge.access import Caller, admit_client, hold_utterance
from csm_service.edge.speech import lookup_voice
from csm_service.edge.state import EdgeState
from csm_service.edge.twilio.caller_speech import CallerSpeech
from csm_service.edge.twilio.pacer import FramePacer
from csm_service.edge.twilio.speaker import speak_queue
from csm_service.edge.twilio.utterance import PLAYED, SENT, UNFINISHED, Utterance
from csm_service.edge.ws_gate import settle

log = logging.getLogger(__name__)

MAX_HISTORY = 200  # utterances kept for GET /v1/calls/{streamSid}
MAX_DTMF = 256


class TwilioCall:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        state: EdgeState,
        start: dict,
        caller: Caller,
    ) -> None:
        self.ws = ws
        self.state = state
        self.caller = caller  # the tenant whose key started the call owns it
        self.stream_sid: str = start["streamSid"]
        self.call_sid = str(start.get("callSid", ""))
        self.account_sid = str(start.get("accountSid", ""))
        parameters = CallParameters.of(start)
        self.custom, self.defaults, self.barge_in = parameters.custom, parameters.defaults, parameters.barge_in
        self.pacer = FramePacer(state.cfg.twilio_lead_ms / 1000, state.cfg.twilio_lead_max_ms / 1000)
        speech = "speech" in self.barge_in
        self.caller_speech = CallerSpeech(state.cfg.twilio_echo_gate_db) if speech else None
        self.epoch = 0  # bumped by every barge-in; frames of an older epoch are never sent
        self.queue: deque[Utterance] = deque()  # waiting to be generated
        self.outbound: asyncio.Queue[tuple[int, bytes | None, Utterance]] = asyncio.Queue()  # frame, or None: mark
        self.wakeup = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.current: Utterance | None = None
        self.current_task: asyncio.Task | None = None
        self.utterances: deque[Utterance] = deque(maxlen=MAX_HISTORY)
        self.awaiting_echo: dict[str, Utterance] = {}  # mark sent, not yet echoed
        self.dtmf: list[str] = []
        self.inbound_frames = 0
        self.last_barge_in: dict[str, object] | None = None  # trigger, and the inbound frame it came at
        self.marks_received = 0
        self.protocol_errors = 0
        self.started_at = time.time()
        self._ids = itertools.count(1)
        self.stopped = False

    # -- what the edge's drain and session cap look at ---------------------------------------------
    @property
    def jobs(self) -> list[Utterance]:
        return [u for u in self.utterances if u.status in UNFINISHED]

    @property
    def busy(self) -> bool:
        """Something is being generated, sent, or is still playing at Twilio."""
        return bool(self.jobs) or self.pacer.buffered_s() > 0

    # -- sending ------------------------------------------------------------------------------------
    async def _send(self, text: str, epoch: int | None = None) -> bool:
        """Send one message; with ``epoch``, only if no barge-in has happened since."""
        async with self.send_lock:
            if (epoch is not None and epoch != self.epoch) or self.ws.closed:
                return False
            try:
                await self.ws.send_str(text)
            except ConnectionError:
                return False
            return True

    async def _sender(self) -> None:
        while True:
            epoch, frame, utterance = await self.outbound.get()
            if epoch != self.epoch:
                continue
            if frame is None:  # the utterance's last frame went out: mark it
                utterance.ends_at = self.pacer.play_end
                if await self._send(twilio_stream.mark_message(self.stream_sid, utterance.utterance_id), epoch):
                    utterance.status = SENT
                    self.awaiting_echo[utterance.utterance_id] = utterance
                continue
            delay = self.pacer.delay()
            if delay > 0:
                await asyncio.sleep(delay)
            if await self._send(twilio_stream.media_message(self.stream_sid, frame), epoch):
                self.pacer.sent(first_of_utterance=utterance.frames_sent == 0)
                if self.caller_speech is not None:
                    self.caller_speech.sent(frame)  # it may come back as echo
                utterance.frames_sent += 1
                utterance.first_frame_sent()
                self.state.metrics.twilio_frames.inc()

    # -- the control API ----------------------------------------------------------------------------
    def utterance(self, body: dict) -> Utterance:
        """A say request (call defaults first) -> a queued-to-be Utterance; raises ApiError 4xx."""
        merged = {**self.defaults, **body}
        voice_id = merged.pop("voice", None)
        if "voice_profile_id" not in body and voice_id is not None:
            merged["voice_profile_id"] = str(voice_id)
        params = parse_speak(merged, self.state.cfg.max_text_chars, self.state.cfg.max_audio_length_ms)
        voice = lookup_voice(self.state, params.voice_profile_id, self.caller.known())
        return Utterance(f"utt_{next(self._ids)}", params, voice)

    async def say(self, utterance: Utterance, interrupt: bool) -> int:
        """Queue it (after a barge-in when ``interrupt``); -> how many utterances are ahead of it.
        ApiError 429 past ``max_inflight_per_session`` unfinished utterances."""
        if interrupt:
            await self.clear("interrupt")
        limit = self.state.cfg.max_inflight_per_session
        if len(self.jobs) >= limit:
            raise ApiError(429, TOO_MANY_IN_FLIGHT, f"at most {limit} utterances queued or speaking per call")
        # In flight for the tenant from now until its audio is generated (or it is dropped).
        utterance.lease = hold_utterance(self.state, self.caller)
        ahead = len(self.queue) + (self.current is not None)
        self.utterances.append(utterance)
        self.queue.append(utterance)
        self.wakeup.set()
        return ahead

    def drop_queue(self) -> None:
        """Empty the queue; its utterances are no longer in flight for the tenant."""
        for utterance in self.queue:
            utterance.release()
        self.queue.clear()

    async def clear(self, trigger: str) -> list[str]:
        """Barge-in: nothing said so far plays on; -> the ids of the utterances cut short."""
        began = time.perf_counter()
        self.epoch += 1
        buffered_s, now = self.pacer.buffered_s(), time.monotonic()
        self.drop_queue()
        if self.current_task is not None:
            self.current_task.cancel()  # closes the engine stream: the slot is free at once
        self.current = None
        while not self.outbound.empty():
            self.outbound.get_nowait()
        self.pacer.reset()
        cut = []
        for utterance in self.utterances:
            if utterance.status in UNFINISHED:  # queued, generating, or frames not all sent
                utterance.cut(buffered_s)
            elif utterance.status == SENT and utterance.ends_at is not None and utterance.ends_at > now:
                utterance.cut(utterance.ends_at - now)  # sent, and still playing at Twilio
            else:
                continue
            cut.append(utterance)
        await self._send(twilio_stream.clear_message(self.stream_sid))
        self.last_barge_in = {"trigger": trigger, "inbound_frame": self.inbound_frames}
        self.state.metrics.barge_in.labels(trigger).observe(time.perf_counter() - began)
        log.info("call %s: barge-in (%s), cut %d utterance(s)", self.stream_sid, trigger, len(cut))
        return [u.utterance_id for u in cut]

    def summary(self) -> dict[str, object]:
        return {
            "stream_sid": self.stream_sid,
            "call_sid": self.call_sid,
            "account_sid": self.account_sid,
            "custom_parameters": {k: v for k, v in self.custom.items() if k != "api_key"},
            "barge_in": list(self.barge_in),
            "started_at": self.started_at,
            "speaking": self.busy,
            "queued": len(self.queue),
            "dtmf": "".join(self.dtmf),
            "inbound_frames": self.inbound_frames,
            "last_barge_in": self.last_barge_in,
            "marks_received": self.marks_received,
            "protocol_errors": self.protocol_errors,
            "utterances": [u.summary() for u in self.utterances],
        }

    # -- what Twilio sends --------------------------------------------------------------------------
    async def on_event(self, message: dict) -> None:
        event = message["event"]
        if event == "media":
            await self._on_media(twilio_stream.media_payload(message))
        elif event == "mark":
            self._on_mark(twilio_stream.mark_name(message))
        elif event == "dtmf":
            digit = twilio_stream.dtmf_digit(message)
            if len(self.dtmf) < MAX_DTMF:
                self.dtmf.append(digit)
            if "dtmf" in self.barge_in and self.busy:
                await self.clear("dtmf")
        elif event == "stop":
            self.stopped = True
        # "connected" and a repeated "start" carry nothing new

    def _on_mark(self, name: object) -> None:
        self.marks_received += 1
        utterance = self.awaiting_echo.pop(name, None) if isinstance(name, str) else None
        if utterance is not None and utterance.status == SENT:
            utterance.status = PLAYED  # a mark echoed for cleared audio leaves it "interrupted"

    async def _on_media(self, payload: bytes) -> None:
        self.inbound_frames += 1
        if self.caller_speech is None:
            return
        if not self.busy:  # nothing to cut: the VAD rests (and starts afresh on the next audio)
            self.caller_speech.idle()
        elif self.caller_speech.heard(payload):
            await self.clear("speech")

    # -- the call's life ----------------------------------------------------------------------------
    async def run(self, early_dtmf: list[str]) -> None:
        """Serve the call until Twilio stops it or the socket closes. ``early_dtmf``: keys pressed
        before ``start``, recorded only: nothing was playing, so they never cut the greeting."""
        self.dtmf.extend(early_dtmf[:MAX_DTMF])
        tasks = [asyncio.create_task(self._sender()), asyncio.create_task(speak_queue(self))]
        try:
            await self._greet()
            async for msg in self.ws:
                if msg.type == web.WSMsgType.TEXT:
                    await self.handle_text(msg.data)
                elif msg.type == web.WSMsgType.BINARY:  # Twilio sends none: counted, not fatal
                    self.protocol_errors += 1
                    self.state.metrics.twilio_events.labels("invalid").inc()
                else:
                    break
                if self.stopped:
                    break
        finally:  # every task cancelled before the first await, even if this handler is cancelled
            self.drop_queue()
            await settle(*tasks, self.current_task)

    async def _greet(self) -> None:
        greeting = self.custom.get("greeting")
        if greeting:
            try:
                admit_client(self.state, self.caller, in_session=True)
                await self.say(self.utterance({"text": greeting}), interrupt=False)
            except ApiError as err:
                log.warning("call %s: the greeting was refused: %s", self.stream_sid, err)

    async def handle_text(self, data: str) -> None:
        try:
            message = twilio_stream.parse_event(data, self.state.cfg.max_json_depth)
            self.state.metrics.twilio_events.labels(message["event"]).inc()
            await self.on_event(message)
        except twilio_stream.ProtocolError as exc:
            self.protocol_errors += 1
            self.state.metrics.twilio_events.labels("invalid").inc()
            log.warning("call %s: %s", self.stream_sid, exc)
