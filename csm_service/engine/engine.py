"""The engine loop: admit between frames, step every live slot, decode audio, deliver chunks.

One thread owns the model. Callers ``submit`` from any thread and receive events through a sink
callable (run on the engine thread: it must be quick and thread-safe, e.g. a queue put).
Start-up order: build -> load -> warm up -> size the slots from free memory -> capture -> SERVING
(``start``); ``drain`` stops admission. Each loop iteration: end cancelled requests, admit waiting
ones into free slots, advance prefills by at most ``prefill_chunk_positions`` prompt rows
(engine/prefill.py), then one frame step for every live slot.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time

import numpy as np
import soxr
import torch

from csm_service.config import FRAME_MS, NUM_MIMI_CODES, SAMPLE_RATE, EngineConfig
from csm_service.engine.device_info import device_info
from csm_service.engine.memory import MemoryProbe
from csm_service.engine.prefill import PrefillTask, plan_round, prefill_chunks
from csm_service.engine.prefix_cache import PrefixCache, prefix_key
from csm_service.engine.prompt import Prompt, assemble_prompt, check_room
from csm_service.engine.request import (
    AudioChunk,
    EngineUnavailable,
    Finished,
    SynthesisRequest,
    Timings,
    validate_request,
)
from csm_service.engine.runner import ModelRunner
from csm_service.engine.scheduler import Scheduler
from csm_service.engine.startup import size_slots, warm_up
from csm_service.engine.state import EngineStats, Event, RequestHandle, Sink, SlotState
from csm_service.engine.state import failure_text as _failure
from csm_service.model.tokenizer import TextTokenizer
from csm_service.text.normalize import normalize

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineStats", "Event", "RequestHandle", "Sink"]


class Engine:
    def __init__(self, runner: ModelRunner, codec: object, tokenizer: TextTokenizer, cfg: EngineConfig) -> None:
        self.runner = runner
        self.codec = codec
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.model_cfg = runner.cfg
        self.max_audio_ms = self.model_cfg.max_seq_len * FRAME_MS
        self.slots: dict[int, SlotState] = {}  # live slots
        self.prefills: dict[int, PrefillTask] = {}  # slots whose prefill is in progress, oldest first
        self.stats = EngineStats()
        self.state = "starting"  # starting | serving | draining | stopped
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._use_slots(runner.num_slots)  # the warm-up's; start() sizes them
        self.prefix_cache = PrefixCache(cfg.prefix_cache_mb << 20)

    def _use_slots(self, num_slots: int) -> None:
        """Scheduler, Mimi's streaming rows and the decode buffers for ``num_slots`` batch slots."""
        self.num_slots = num_slots
        self.scheduler: Scheduler[RequestHandle] = Scheduler(num_slots, self.cfg.max_queue)
        self.codec.start_streaming(num_slots)  # type: ignore[attr-defined]
        device, num_codebooks = self.runner.device, self.model_cfg.num_codebooks
        self._decode_codes = torch.zeros(num_slots, num_codebooks, dtype=torch.int64, device=device)  # [N, K]
        self._decode_mask = torch.zeros(num_slots, dtype=torch.bool, device=device)  # [N]

    # -- public API (any thread) ----------------------------------------------------------------
    @property
    def is_serving(self) -> bool:
        return self.state == "serving"

    @property
    def num_active(self) -> int:
        return len(self.slots)

    @property
    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    def prepare(self, request: SynthesisRequest) -> Prompt:
        """Validate, normalise and tokenise -> the prompt rows [S, 33]; raises InvalidRequest."""
        validate_request(request, self.max_audio_ms)
        text, context = request.text, request.context
        if request.normalize_text:  # what was said before is read the same way as the new text
            text = normalize(text)
            context = tuple(dataclasses.replace(seg, text=normalize(seg.text)) for seg in context)
        prompt = assemble_prompt(
            self.tokenizer,
            context,
            text,
            request.speaker,
            self.model_cfg.num_codebooks,
            request.prefix_segments,
            request.max_context_positions,
        )
        check_room(prompt.tokens.shape[0], self.model_cfg.max_seq_len)
        return prompt

    def submit(self, request: SynthesisRequest, sink: Sink) -> RequestHandle:
        """Queue a request; raises InvalidRequest, Overloaded or EngineUnavailable."""
        prompt = self.prepare(request)
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        handle = RequestHandle(request, sink, prompt, seed)
        handle._engine = self
        with self._cond:
            if self.state != "serving":
                raise EngineUnavailable(f"engine is {self.state}")
            self.scheduler.enqueue(handle)
            self._cond.notify()
        return handle

    def encode_prompt(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 mono audio at any rate -> Mimi codes [32, F] (thread-safe, beside the loop)."""
        if sample_rate != SAMPLE_RATE:
            pcm = soxr.resample(pcm, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        return self.codec.encode(pcm)  # type: ignore[attr-defined]

    def start(self) -> None:
        """Warm up, size the slots, capture, then start the loop thread and report SERVING."""
        self._warm_up()
        self._thread = threading.Thread(target=self._run, name="csm-engine", daemon=True)
        self.state = "serving"
        self._thread.start()
        log.info("engine serving: %d slots, queue %d", self.num_slots, self.cfg.max_queue)

    def drain(self) -> None:
        """Refuse new work; running and queued requests finish."""
        with self._cond:
            if self.state == "serving":
                self.state = "draining"

    def is_idle(self) -> bool:
        with self._cond:
            return not self.slots and not self.prefills and not self.scheduler.waiting

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self.state = "stopped"
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def describe(self) -> dict[str, object]:
        """What this engine runs, for health reports."""
        return {
            "state": self.state,
            "model": self.cfg.model,
            **device_info(self.runner.device),
            "dtype": str(self.runner.dtype).removeprefix("torch."),
            "max_batch": self.cfg.max_batch if self.state == "starting" else self.num_slots,  # sized at start
            "active_streams": self.num_active,
            "queue_depth": self.queue_depth,
        }

    def _on_cancel(self, handle: RequestHandle) -> None:
        """A waiting request leaves the queue at once; a running (or prefilling) one is freed at the
        next loop iteration, i.e. after at most one frame or one prefill round."""
        with self._cond:
            if self.scheduler.remove_waiting(handle):
                self._finish_unstarted(handle, "cancelled")
            for state in self.slots.values():
                if state.handle is handle:
                    handle.frames_at_cancel = len(state.frames)
            self._cond.notify()

    # -- the loop (engine thread) ---------------------------------------------------------------
    def _warm_up(self) -> None:
        """Warm up on the runner's warm-up cache, size the slots from free memory, allocate, capture."""
        probe = MemoryProbe(self.runner.device)
        prompt = self.prepare(SynthesisRequest(text="warm up"))
        peaks = warm_up(self.runner, self.codec, prompt, self.cfg.prefill_chunk_positions, probe)
        plan = size_slots(self.runner, self.cfg, peaks, probe)
        log.info("batch slots: %s", plan.describe())
        if plan.limited_by == "memory":
            log.warning("memory allows %d slots, fewer than max_batch %d", plan.num_slots, self.cfg.max_batch)
        self.runner.allocate_slots(plan.num_slots)
        self._use_slots(plan.num_slots)
        # Mimi at the final row count, no row live (moshi's streaming graphs are made here, not on a call).
        self.codec.decode_step(self._decode_codes, self._decode_mask)  # type: ignore[attr-defined]
        self.runner.capture_graphs()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self.state == "stopped":
                    break
                self._end_cancelled()
                admitted = self.scheduler.admit()
                if not admitted and not self.slots and not self.prefills:
                    self._cond.wait(timeout=0.5)
                    continue
            # A failure ends only the requests it touched and frees their slots; the loop goes on
            # serving the others (a client would otherwise wait out its deadline on a lost slot).
            for slot, handle in admitted:
                self._admit_or_fail(slot, handle)
            self._advance_prefills()
            if self.slots:
                self._step_or_fail()
        with self._cond:
            for slot in list(self.slots):
                self._finish(slot, "cancelled", error="engine stopped")
            for slot in list(self.prefills):
                self._end_prefill(slot, "cancelled", "engine stopped")
            while self.scheduler.waiting:
                self._finish_unstarted(self.scheduler.waiting.popleft(), "cancelled")

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
        self.codec.reset_rows(reset)  # type: ignore[attr-defined]
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
        self._decode_mask.zero_()
        self._decode_mask[:num_rows] = is_live
        self._decode_codes[:num_rows] = codes
        pcm_device = self.codec.decode_step(self._decode_codes, self._decode_mask)  # type: ignore[attr-defined]
        # Copies: on CPU .cpu() would alias the runner's and the codec's reused buffers.
        codes_host = codes.to("cpu", copy=True).numpy()
        pcm = pcm_device.to("cpu", copy=True).numpy()  # [max_batch, 1920]; rows not live are meaningless
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

    def _emit_chunk(self, state: SlotState, now: float) -> None:
        if not state.pcm:
            return
        if state.chunk_index == 0:
            state.timings.first_audio_s = now - state.handle.submitted_at
        chunk = AudioChunk(np.concatenate(state.pcm), state.chunk_index, state.frames_sent, len(state.pcm))
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
            no_codes = np.zeros((32, 0), np.int64)
            event = Finished(
                reason, len(state.frames), state.handle.seed, state.timings, _failure("finish", exc), no_codes
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
        codes = (
            np.stack(state.frames, axis=1).clip(0, NUM_MIMI_CODES - 1) if state.frames else np.zeros((32, 0), np.int64)
        )
        return Finished(reason, len(state.frames), state.handle.seed, timings, error, codes)

    def _finish_unstarted(self, handle: RequestHandle, reason: str, error: str | None = None) -> None:
        """Close a request that has no slot (left the queue, or its prefill failed)."""
        self._count(reason)
        self._deliver(handle, Finished(reason, 0, handle.seed, Timings(), error, np.zeros((32, 0), dtype=np.int64)))

    def _count(self, reason: str) -> None:
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    @staticmethod
    def _deliver(handle: RequestHandle, event: Event) -> None:
        try:
            handle.sink(event)
        except Exception:
            log.exception("request %d: sink failed", handle.id)
            handle.cancel()
