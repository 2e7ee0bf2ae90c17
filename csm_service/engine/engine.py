"""The engine loop: admit between frames, step every live slot, decode audio, deliver chunks.

One thread owns the model. Callers ``submit`` from any thread and receive events through a sink
callable (run on the engine thread: it must be quick and thread-safe, e.g. a queue put).
Start-up order: build -> load -> warm up -> SERVING (``start``); ``drain`` stops admission.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soxr
import torch

from csm_service.config import FRAME_MS, NUM_MIMI_CODES, SAMPLE_RATE, EngineConfig
from csm_service.engine.device_info import device_info
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
from csm_service.model.tokenizer import TextTokenizer
from csm_service.text.normalize import normalize

log = logging.getLogger(__name__)

Event = AudioChunk | Finished
Sink = Callable[[Event], None]
_ids = itertools.count(1)


def _failure(stage: str, exc: BaseException) -> str:
    """The client's error text: where it failed and what, one short line (the traceback is logged)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return f"synthesis failed: {stage}: out of memory"
    lines = str(exc).strip().splitlines()
    detail = f": {lines[0][:200]}" if lines else ""
    return f"synthesis failed: {stage}: {type(exc).__name__}{detail}"


class RequestHandle:
    """A submitted request: its prompt, its sink, and a thread-safe ``cancel``."""

    def __init__(self, request: SynthesisRequest, sink: Sink, prompt: Prompt, seed: int) -> None:
        self.id = next(_ids)
        self.request = request
        self.sink = sink
        self.prompt = prompt
        self.seed = seed
        self.submitted_at = time.perf_counter()
        self.cancelled = threading.Event()
        self.frames_at_cancel = 0  # frames it had when cancel() was called (running requests)
        self._engine: Engine | None = None

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self._engine is not None:
                self._engine._on_cancel(self)


@dataclass
class _Slot:
    handle: RequestHandle
    max_frames: int
    position: int  # host copy of the slot's next backbone position
    frames: list[np.ndarray] = field(default_factory=list)  # codes [32] per generated frame
    pcm: list[np.ndarray] = field(default_factory=list)  # decoded frames not yet sent
    chunk_index: int = 0
    frames_sent: int = 0
    timings: Timings = field(default_factory=Timings)


@dataclass
class EngineStats:
    frames_generated: int = 0
    steps: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    cancelled_running: int = 0  # running requests freed by a cancel
    frames_after_cancel: int = 0  # frames those generated after their cancel arrived (<= 1 each)
    prefix_hits: int = 0  # requests whose prefix KV came from the prefix cache
    prefix_misses: int = 0  # requests with a prefix that had to prefill it
    failed_prefills: int = 0  # admissions that raised (that request ended with "error")
    failed_steps: int = 0  # frame steps that raised (every live request ended with "error")


class Engine:
    def __init__(self, runner: ModelRunner, codec: object, tokenizer: TextTokenizer, cfg: EngineConfig) -> None:
        self.runner = runner
        self.codec = codec
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.model_cfg = runner.cfg
        self.max_audio_ms = self.model_cfg.max_seq_len * FRAME_MS
        self.scheduler: Scheduler[RequestHandle] = Scheduler(cfg.max_batch, cfg.max_queue)
        self.slots: dict[int, _Slot] = {}
        self.stats = EngineStats()
        self.state = "starting"  # starting | serving | draining | stopped
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        codec.start_streaming(cfg.max_batch)  # type: ignore[attr-defined]
        device = runner.device
        self._decode_codes = torch.zeros(cfg.max_batch, self.model_cfg.num_codebooks, dtype=torch.int64, device=device)
        self._decode_mask = torch.zeros(cfg.max_batch, dtype=torch.bool, device=device)
        self.prefix_cache = PrefixCache(cfg.prefix_cache_mb << 20)

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
        """Warm up, then start the loop thread and report SERVING."""
        self._warm_up()
        self._thread = threading.Thread(target=self._run, name="csm-engine", daemon=True)
        self.state = "serving"
        self._thread.start()
        log.info("engine serving: %d slots, queue %d", self.cfg.max_batch, self.cfg.max_queue)

    def drain(self) -> None:
        """Refuse new work; running and queued requests finish."""
        with self._cond:
            if self.state == "serving":
                self.state = "draining"

    def is_idle(self) -> bool:
        with self._cond:
            return not self.slots and not self.scheduler.waiting

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
            "max_batch": self.cfg.max_batch,
            "active_streams": self.num_active,
            "queue_depth": self.queue_depth,
        }

    def _on_cancel(self, handle: RequestHandle) -> None:
        """A waiting request leaves the queue at once; a running one is freed at the next frame."""
        with self._cond:
            if self.scheduler.remove_waiting(handle):
                self._finish_unstarted(handle, "cancelled")
            for state in self.slots.values():
                if state.handle is handle:
                    handle.frames_at_cancel = len(state.frames)
            self._cond.notify()

    # -- the loop (engine thread) ---------------------------------------------------------------
    def _warm_up(self) -> None:
        """Run the whole path once (kernels, allocator, Mimi), then capture the CUDA graphs."""
        prompt = self.prepare(SynthesisRequest(text="warm up"))
        device = self.runner.device
        for _ in range(2):
            self.runner.prefill(0, prompt.tokens, prompt.mask, seed=0, temperature=0.9, top_k=50)
            codes = self.runner.step(1, prompt.tokens.shape[0] + 1)
            self.codec.decode_step(  # type: ignore[attr-defined]
                torch.zeros(self.cfg.max_batch, codes.shape[1], dtype=torch.int64, device=device),
                torch.zeros(self.cfg.max_batch, dtype=torch.bool, device=device),
            )
            self.runner.release(0)
        self.runner.capture_graphs()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self.state == "stopped":
                    break
                cancelled = [s for s, sl in self.slots.items() if sl.handle.cancelled.is_set()]
                for slot in cancelled:
                    self._finish(slot, "cancelled")
                admitted = self.scheduler.admit()
                if not admitted and not self.slots:
                    self._cond.wait(timeout=0.5)
                    continue
            # A failure ends only the requests it touched and frees their slots; the loop goes on
            # serving the others (a client would otherwise wait out its deadline on a lost slot).
            for slot, handle in admitted:
                self._admit_or_fail(slot, handle)
            if self.slots:
                self._step_or_fail()
        with self._cond:
            for slot in list(self.slots):
                self._finish(slot, "cancelled", error="engine stopped")
            while self.scheduler.waiting:
                self._finish_unstarted(self.scheduler.waiting.popleft(), "cancelled")

    def _admit_or_fail(self, slot: int, handle: RequestHandle) -> None:
        """Prefill one admitted request; if anything in that raises, end it alone and free its slot."""
        try:
            self._admit(slot, handle)
        except Exception as exc:
            log.exception("request %d: prefill failed", handle.id)
            self.stats.failed_prefills += 1
            with self._cond:  # _admit adds the slot to self.slots last, so it is not there
                self._free_slot(slot)
                self._finish_unstarted(handle, "error", _failure("prefill", exc))

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

    def _admit(self, slot: int, handle: RequestHandle) -> None:
        req, prompt = handle.request, handle.prompt
        start = time.perf_counter()
        prompt_len = prompt.tokens.shape[0]
        key, cached = None, None
        if prompt.prefix_len and self.prefix_cache.capacity_bytes:
            key = prefix_key(prompt.tokens[: prompt.prefix_len], prompt.mask[: prompt.prefix_len])
            cached = self.prefix_cache.get(key)
        snapshot = self.runner.prefill(
            slot,
            prompt.tokens,
            prompt.mask,
            handle.seed,
            float(req.temperature),
            int(req.top_k),
            prefix_len=prompt.prefix_len,
            prefix_kv=cached,
        )
        if key is not None:
            if cached is not None:
                self.stats.prefix_hits += 1
            else:
                self.stats.prefix_misses += 1
                self.prefix_cache.put(key, snapshot)  # type: ignore[arg-type]
        reset = torch.zeros(self.cfg.max_batch, dtype=torch.bool)
        reset[slot] = True
        self.codec.reset_rows(reset)  # type: ignore[attr-defined]
        state = _Slot(handle, min(req.max_frames, self.model_cfg.max_seq_len - prompt_len), prompt_len)
        state.timings.queued_s = start - handle.submitted_at
        state.timings.prefill_s = time.perf_counter() - start
        state.timings.prompt_positions = prompt_len
        state.timings.prefix_cache_hit = cached is not None
        state.timings.context_segments = prompt.context_segments
        with self._cond:
            self.slots[slot] = state

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

    def _advance(self, state: _Slot, codes: np.ndarray, pcm: np.ndarray, is_eos: bool, now: float) -> str | None:
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

    def _emit_chunk(self, state: _Slot, now: float) -> None:
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

    def _final_event(self, state: _Slot, reason: str, error: str | None) -> Finished:
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
