"""The speaking side of a Twilio call: its queued utterances generated one after another.

Each utterance's mu-law comes from the speech service and is cut into 20 ms frames on the call's
outbound queue, tagged with the epoch it was generated in (a barge-in bumps the epoch, so no frame
of an older one is ever sent; :mod:`.call`), then a ``None`` that asks for its mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from csm_service.api import twilio_stream
from csm_service.api.errors import ApiError
from csm_service.core.errors import MODEL_NOT_LOADED, SYNTHESIS_FAILED
from csm_service.core.request import AudioEncoding
from csm_service.edge.speech import Spoken, speak, synthesis_request
from csm_service.edge.twilio.utterance import FAILED, SPEAKING, Utterance
from csm_service.edge.ws_gate import TRY_AGAIN_LATER

if TYPE_CHECKING:
    from csm_service.edge.twilio.call import TwilioCall

log = logging.getLogger(__name__)


async def speak_queue(call: TwilioCall) -> None:
    """Generate the call's queued utterances one after another; the next while the previous still plays."""
    # A call that arrives while the model loads is held (its greeting queued) until a worker
    # serves; past ready_wait_s the stream is closed, so Twilio goes on to the next TwiML verb.
    if not await call.state.backend.wait_until_serving(call.state.cfg.ready_wait_s):
        log.warning("call %s: no engine worker served within %.0f s", call.stream_sid, call.state.cfg.ready_wait_s)
        call.state.metrics.requests.labels("twilio", "not_ready").inc()
        for utterance in call.queue:
            utterance.status, utterance.error = FAILED, MODEL_NOT_LOADED
        call.drop_queue()
        await call.ws.close(code=TRY_AGAIN_LATER, message=b"engine not ready")
        return
    while True:
        while not call.queue:
            call.wakeup.clear()
            await call.wakeup.wait()
        utterance = call.queue.popleft()
        call.current = utterance
        call.current_task = asyncio.create_task(generate(call, utterance, call.epoch))
        call.current_task.add_done_callback(lambda _, done=utterance: done.release())
        await asyncio.wait({call.current_task})  # a barge-in cancels it, not the speaker
        call.current, call.current_task = None, None


async def generate(call: TwilioCall, utterance: Utterance, epoch: int) -> None:
    """One utterance: the engine's mu-law cut into 20 ms frames on the call's outbound queue, then its mark."""
    utterance.status = SPEAKING
    spoken = Spoken()
    rest = b""
    try:
        request = synthesis_request(utterance.params, AudioEncoding.MULAW_8KHZ, utterance.voice)
        chunks = speak(call.state.backend, request, call.state.cfg.max_piece_chars, spoken)
        async with contextlib.aclosing(chunks) as stream:
            async for chunk in stream:
                utterance.seed = spoken.seed
                frames, rest = twilio_stream.frames(rest + chunk.audio, pad_last=chunk.final)
                for frame in frames:
                    call.outbound.put_nowait((epoch, frame, utterance))
                if chunk.final:
                    break
        call.outbound.put_nowait((epoch, None, utterance))
        call.state.metrics.requests.labels("twilio_say", "ok").inc()
    except ApiError as err:
        utterance.status, utterance.error = FAILED, str(err)
        call.state.metrics.requests.labels("twilio_say", err.outcome).inc()
        log.warning("call %s: %s failed: %s", call.stream_sid, utterance.utterance_id, err)
    except Exception:  # never leave it "speaking": the drain and the queue bound count those
        utterance.status, utterance.error = FAILED, SYNTHESIS_FAILED
        call.state.metrics.requests.labels("twilio_say", "error").inc()
        log.exception("call %s: %s failed", call.stream_sid, utterance.utterance_id)
