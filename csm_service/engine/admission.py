"""Admission and chunked prefill: a waiting request takes a free slot, its prompt's prefix comes from
the prefix cache or is prefilled, the rest is prefilled in bounded chunks between frame steps
(engine/prefill.py), and then the slot goes live.

A request whose admission or prefill raises ends alone with "error" and its slot is freed at once;
a cancelled one is freed at the next loop iteration, live or still prefilling.
"""

from __future__ import annotations

import logging
import time

import torch

from csm_service.engine.delivery import Delivery
from csm_service.engine.prefill import PrefillTask, plan_round, prefill_chunks
from csm_service.engine.prefix_cache import prefix_key
from csm_service.engine.state import RequestHandle, SlotState
from csm_service.engine.state import failure_text as _failure

log = logging.getLogger(__name__)


class Admission(Delivery):
    """Part of :class:`~csm_service.engine.engine.Engine`: admission and prefill (engine thread)."""

    def _end_cancelled(self) -> None:
        """Free the slots of cancelled requests, live or prefilling (lock held)."""
        for slot in [s for s, state in self.slots.items() if state.handle.cancelled.is_set()]:
            self._finish(slot, "cancelled")
        for slot in [s for s, task in self.prefills.items() if task.handle.cancelled.is_set()]:
            self._end_prefill(slot, "cancelled")

    def _end_prefill(self, slot: int, reason: str, error: str | None = None) -> None:
        """Close a request whose prefill did not complete and free its slot (lock held)."""
        task = self.prefills.pop(slot)
        self._free_slot(slot)
        self._finish_unstarted(task.handle, reason, error)

    def _admit_or_fail(self, slot: int, handle: RequestHandle) -> None:
        """Start one admitted request's prefill; if that raises, end it alone and free its slot."""
        try:
            self._admit(slot, handle)
        except Exception as exc:
            log.exception("request %d: prefill failed", handle.id)
            self.stats.failed_prefills += 1
            with self._cond:  # _admit adds the slot to self.prefills last, so it is not there
                self._free_slot(slot)
                self._finish_unstarted(handle, "error", _failure("prefill", exc))

    def _admit(self, slot: int, handle: RequestHandle) -> None:
        """Look the prompt's prefix up in the cache and queue its prefill chunks."""
        prompt = handle.prompt
        key, cached = None, None
        if prompt.prefix_len and self.prefix_cache.capacity_bytes:
            key = prefix_key(prompt.tokens[: prompt.prefix_len], prompt.mask[: prompt.prefix_len])
            cached = self.prefix_cache.get(key)
            if cached is not None:
                self.stats.prefix_hits += 1
            else:
                self.stats.prefix_misses += 1
        chunks = prefill_chunks(
            prompt.tokens.shape[0], prompt.prefix_len, cached is not None, self.cfg.prefill_chunk_positions
        )
        task = PrefillTask(slot, handle, chunks, key, cached is not None, cached, time.perf_counter())
        with self._cond:
            self.prefills[slot] = task

    def _advance_prefills(self) -> None:
        """Run this round's prefill chunks (at most ``prefill_chunk_positions`` rows in all); a
        request whose prefill completes goes live and takes part in the frame step that follows."""
        for task, rows in plan_round(list(self.prefills.values()), self.cfg.prefill_chunk_positions):
            if self.prefills.get(task.slot) is not task:
                continue  # it failed earlier in this round
            try:
                self._prefill_chunk(task, rows)
                if task.is_done:
                    self._go_live(task)
            except Exception as exc:
                log.exception("request %d: prefill failed", task.handle.id)
                self.stats.failed_prefills += 1
                with self._cond:  # _go_live moves the slot to self.slots last, so it is still a prefill
                    self._end_prefill(task.slot, "error", _failure("prefill", exc))

    def _prefill_chunk(self, task: PrefillTask, rows: tuple[int, int]) -> None:
        req, prompt = task.handle.request, task.handle.prompt
        snapshot = self.runner.prefill(
            task.slot,
            prompt.tokens,
            prompt.mask,
            task.handle.seed,
            float(req.temperature),
            int(req.top_k),
            prefix_len=prompt.prefix_len,
            prefix_kv=task.prefix_kv,
            rows=rows,
        )
        task.prefix_kv = None  # copied in with the first chunk
        task.next_chunk += 1
        self.stats.prefill_chunks += 1
        if snapshot is not None and task.prefix_key is not None:
            self.prefix_cache.put(task.prefix_key, snapshot)  # the prefix is complete: cache it now

    def _go_live(self, task: PrefillTask) -> None:
        """The prefill is complete: fresh Mimi state for the row, then the slot steps from now on."""
        handle, prompt_len = task.handle, task.handle.prompt.tokens.shape[0]
        reset = torch.zeros(self.num_slots, dtype=torch.bool)
        reset[task.slot] = True
        self.codec.reset_rows(reset)
        max_frames = min(handle.request.max_frames, self.model_cfg.max_seq_len - prompt_len)
        state = SlotState(handle, max_frames, prompt_len)
        state.timings.queued_s = task.admitted_at - handle.submitted_at
        # From admission to the end of the prefill: with others live, their frames run in between.
        state.timings.prefill_s = time.perf_counter() - task.admitted_at
        state.timings.prompt_positions = prompt_len
        state.timings.prefix_cache_hit = task.prefix_hit
        state.timings.context_segments = handle.prompt.context_segments
        with self._cond:
            del self.prefills[task.slot]
            self.slots[task.slot] = state
