"""The frame step: one frame for every live slot, decoded to audio, chunked, and the requests that
end with it finished.

A failure is contained to what it touched: a step or decode that raises ends every request in the
batch (they share its tensors, and Mimi's); bookkeeping that raises for one slot ends that request
alone. Either way the slots are freed and the loop serves on.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from csm_service.engine.delivery import Delivery
from csm_service.engine.state import SlotState
from csm_service.engine.state import failure_text as _failure

log = logging.getLogger(__name__)


class FrameStep(Delivery):
    """Part of :class:`~csm_service.engine.engine.Engine`: the frame step (engine thread)."""

    def _step_or_fail(self) -> None:
        """One frame for every live slot; if the batch itself fails, end every request in it."""
        try:
            self._step()
        except Exception as exc:
            # The live rows share the step's tensors (and Mimi's), so no row's output can be trusted.
            log.exception("frame step failed: ending %d request(s)", len(self.slots))
            self.stats.failed_steps += 1
            error = _failure("frame step", exc)
            with self._cond:
                for slot in list(self.slots):
                    self._finish(slot, "error", error=error)

    def _step(self) -> None:
        num_rows = max(self.slots) + 1
        kv_len = max(s.position for s in self.slots.values()) + 1
        codes = self.runner.step(num_rows, kv_len)  # [n, K] on the device
        self.stats.steps += 1
        # End of utterance (the all-zero frame) is decided on the device, so Mimi's decode is
        # queued right behind the step; the host waits once, for codes and audio together.
        is_live = self.runner.is_active[:num_rows].bool() & (codes != 0).any(dim=1)  # [n]
        pcm_device = self.codec.decode_step(codes, is_live)  # [n, 1920]: Mimi's rows past n are untouched
        # Copies: on CPU .cpu() would alias the runner's and the codec's reused buffers.
        codes_host = codes.to("cpu", copy=True).numpy()
        pcm = pcm_device.to("cpu", copy=True).numpy()  # [n, 1920]; rows not live are meaningless
        is_eos = (codes_host == 0).all(axis=1)
        now = time.perf_counter()
        done: list[tuple[int, str, str | None]] = []
        for slot, state in self.slots.items():
            try:
                reason = self._advance(state, codes_host[slot], pcm[slot], bool(is_eos[slot]), now)
            except Exception as exc:
                # Host-side state of this one request: its neighbours' frames are still good.
                log.exception("request %d: frame bookkeeping failed", state.handle.id)
                done.append((slot, "error", _failure("frame", exc)))
                continue
            if reason is not None:
                done.append((slot, reason, None))
        with self._cond:
            for slot, reason, error in done:
                self._finish(slot, reason, error=error)

    def _advance(self, state: SlotState, codes: np.ndarray, pcm: np.ndarray, is_eos: bool, now: float) -> str | None:
        """Take one frame into a slot (chunking its audio) -> why the request ends now, or None."""
        state.position += 1
        if is_eos:
            return "eos"
        state.frames.append(codes)
        state.pcm.append(pcm)
        self.stats.frames_generated += 1
        # Chunks ramp up (1, 1, 2, 4, 4... with the defaults): none is longer than the audio
        # already sent, so a listener playing in real time does not run dry while it is made.
        want = (
            self.cfg.first_chunk_frames
            if state.chunk_index == 0
            else max(1, min(self.cfg.chunk_frames, state.frames_sent))
        )
        if len(state.pcm) >= want:
            self._emit_chunk(state, now)
        return "max_length" if len(state.frames) >= state.max_frames else None
