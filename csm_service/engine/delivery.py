"""What reaches a request's caller, and the slot freed when the request ends.

Audio goes out in chunks (:meth:`Delivery._emit_chunk`); every request, however it ends (done,
cancelled, failed, never started), gets exactly one :class:`~csm_service.core.events.Finished`, and
its slot is freed before anything that could fail. A sink that raises cancels its own request.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from csm_service.core.constants import FRAME_MS, NUM_CODEBOOKS, NUM_MIMI_CODES
from csm_service.core.events import Finished, PcmChunk, Timings
from csm_service.engine.loop_state import LoopState
from csm_service.engine.state import Event, RequestHandle, SlotState
from csm_service.engine.state import failure_text as _failure

log = logging.getLogger(__name__)


def no_codes() -> np.ndarray:
    """codes [32, 0] int64: the codes of a request that generated no frame."""
    return np.zeros((NUM_CODEBOOKS, 0), np.int64)


class Delivery(LoopState):
    """Part of :class:`~csm_service.engine.engine.Engine`: chunks, final events and freed slots."""

    def _emit_chunk(self, state: SlotState, now: float) -> None:
        """Send the slot's decoded frames not yet sent as one chunk (engine thread)."""
        if not state.pcm:
            return
        if state.chunk_index == 0:
            state.timings.first_audio_s = now - state.handle.submitted_at
        else:  # time per frame since the last chunk, against the 80 ms a frame plays for
            self.observe_frame_interval((now - state.last_chunk_at) / len(state.pcm))
        state.last_chunk_at = now
        chunk = PcmChunk(np.concatenate(state.pcm), state.chunk_index, state.frames_sent, len(state.pcm))
        state.frames_sent += len(state.pcm)
        state.chunk_index += 1
        state.pcm = []
        self._deliver(state.handle, chunk)

    def _finish(self, slot: int, reason: str, error: str | None = None) -> None:
        """Close a running request and free its slot (caller holds the lock)."""
        state = self.slots.pop(slot)
        self._free_slot(slot)  # first: nothing below may leave the slot held
        if reason == "cancelled" and state.handle.cancelled.is_set():
            self.stats.cancelled_running += 1
            self.stats.frames_after_cancel += len(state.frames) - state.handle.frames_at_cancel
        try:
            event = self._final_event(state, reason, error)
        except Exception as exc:
            log.exception("request %d: finishing failed", state.handle.id)
            reason = "error"  # the caller still gets an ending, never silence
            event = Finished(
                reason, len(state.frames), state.handle.seed, state.timings, _failure("finish", exc), no_codes()
            )
        self._count(reason)
        self._deliver(state.handle, event)

    def _free_slot(self, slot: int) -> None:
        """Mark the slot's row idle on the device and give the slot back to the scheduler (lock held)."""
        try:
            self.runner.release(slot)
        except Exception:
            # The next prefill into this row rewrites all of its state; keeping the slot would lose it.
            log.exception("slot %d: runner release failed", slot)
        finally:
            self.scheduler.release(slot)

    def _final_event(self, state: SlotState, reason: str, error: str | None) -> Finished:
        """The last chunk (a request that ended well) goes out, then its Finished event."""
        if reason in ("eos", "max_length"):
            self._emit_chunk(state, time.perf_counter())
        timings = state.timings
        timings.total_s = time.perf_counter() - state.handle.submitted_at
        timings.audio_s = len(state.frames) * FRAME_MS / 1000
        # The codes as Mimi decoded them (reserved ids clamped), so they can serve as context later.
        codes = np.stack(state.frames, axis=1).clip(0, NUM_MIMI_CODES - 1) if state.frames else no_codes()
        return Finished(reason, len(state.frames), state.handle.seed, timings, error, codes)

    def _finish_unstarted(self, handle: RequestHandle, reason: str, error: str | None = None) -> None:
        """Close a request that has no slot (left the queue, or its prefill failed)."""
        self._count(reason)
        self._deliver(handle, Finished(reason, 0, handle.seed, Timings(), error, no_codes()))

    def _count(self, reason: str) -> None:
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    @staticmethod
    def _deliver(handle: RequestHandle, event: Event) -> None:
        try:
            handle.sink(event)
        except Exception:
            log.exception("request %d: sink failed", handle.id)
            handle.cancel()
