"""The engine: one thread owns the model and serves every request in batch slots.

Callers ``submit`` from any thread and receive events through a sink callable (run on the engine
thread: it must be quick and thread-safe, e.g. a queue put). Start-up order: build -> load -> warm
up -> size the slots from free memory -> capture -> SERVING (``start``); ``drain`` stops admission.
Each loop iteration: end cancelled requests, admit waiting ones into free slots and advance
prefills by at most ``prefill_chunk_positions`` prompt rows (engine/admission.py), then one frame
step for every live slot (engine/frame_step.py); chunks and endings go out through engine/delivery.py.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import secrets
import threading
import weakref

import numpy as np
import soxr
import torch

from csm_service.config import EngineConfig
from csm_service.core.constants import FRAME_MS, SAMPLE_RATE
from csm_service.core.errors import EngineUnavailable
from csm_service.core.request import SpeechRequest, validate_request
from csm_service.engine.admission import Admission
from csm_service.engine.device_info import device_info, device_memory
from csm_service.engine.frame_step import FrameStep
from csm_service.engine.loop_state import StreamingCodec
from csm_service.engine.memory import MemoryProbe
from csm_service.engine.prefix_cache import PrefixCache
from csm_service.engine.prompt import Prompt, assemble_prompt, check_room
from csm_service.engine.runner import ModelRunner
from csm_service.engine.scheduler import Scheduler
from csm_service.engine.startup import size_slots, warm_up
from csm_service.engine.state import EngineStats, Event, RequestHandle, Sink
from csm_service.engine.threads import engine_cpu_threads, use_cpu_threads
from csm_service.model.tokenizer import TextTokenizer
from csm_service.text.normalize import normalize

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineStats", "Event", "RequestHandle", "Sink"]


def _ignore_interval(seconds: float) -> None:
    """No metrics bound: chunk intervals are not recorded."""


class Engine(Admission, FrameStep):
    def __init__(self, runner: ModelRunner, codec: StreamingCodec, tokenizer: TextTokenizer, cfg: EngineConfig) -> None:
        self.runner = runner
        self.codec = codec
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.model_cfg = runner.cfg
        self.max_audio_ms = self.model_cfg.max_seq_len * FRAME_MS
        self.slots = {}
        self.prefills = {}
        self.stats = EngineStats()
        self.observe_frame_interval = _ignore_interval  # EngineMetrics.bind sets its histogram's observe
        self.state = "starting"  # starting | serving | draining | stopped
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._use_slots(runner.num_slots)  # the warm-up's; start() sizes them
        self.prefix_cache = PrefixCache(cfg.prefix_cache_mb << 20)

    def _use_slots(self, num_slots: int) -> None:
        """Scheduler and Mimi's streaming rows for ``num_slots`` batch slots."""
        self.num_slots = num_slots
        self.scheduler = Scheduler(num_slots, self.cfg.max_queue)
        self.codec.start_streaming(num_slots)

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

    def prepare(self, request: SpeechRequest) -> Prompt:
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

    def submit(self, request: SpeechRequest, sink: Sink) -> RequestHandle:
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
        """float32 mono audio at any rate -> Mimi codes [32, F] (thread-safe, beside the loop, on the
        caller's thread with one CPU thread: no second OpenMP pool beside the engine's)."""
        use_cpu_threads(1)
        if sample_rate != SAMPLE_RATE:
            pcm = soxr.resample(pcm, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
        return self.codec.encode(pcm)

    def start(self) -> None:
        """Start the engine thread, which warms up, sizes the slots, captures and then serves; return
        once it serves, or raise what stopped its start-up. Everything the model computes from here
        on runs on that one thread (engine/threads.py)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure), name="csm-engine", daemon=True)
        self._thread.start()
        # A daemon thread still inside torch when the interpreter finalizes is unwound through C++
        # frames that cannot be, and the process aborts ("terminate called without an active
        # exception", exit -6) after its work is done: seen once in CI after a RunPod local job.
        # atexit callbacks run before finalization, so the loop is stopped and joined there.
        atexit.register(_stop_at_exit, weakref.ref(self))
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        if self.state != "serving":
            raise EngineUnavailable("the engine was stopped during start-up")
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

    def build_info(self) -> dict[str, str]:
        """How this engine runs its model, as the labels of ``csm_engine_build_info``."""
        runner = self.runner
        return {
            "model": self.cfg.model,
            "device": runner.device.type,
            "device_name": str(device_info(runner.device)["device_name"]),
            "dtype": str(runner.dtype).removeprefix("torch."),
            "mimi_dtype": self.cfg.mimi_dtype,
            "quantize": runner.quantize,
            "compiled": str(runner.compiled).lower(),
            "cuda_graphs": str(runner.use_cuda_graphs).lower(),
        }

    def memory_bytes(self) -> dict[str, int]:
        """allocated / reserved / total bytes of the engine's device now (any thread, each scrape)."""
        return device_memory(self.runner.device)

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

    # -- start-up and the loop (engine thread) --------------------------------------------------
    def _warm_up(self) -> None:
        """Warm up on the runner's warm-up cache, size the slots from free memory, allocate, capture."""
        probe = MemoryProbe(self.runner.device)
        prompt = self.prepare(SpeechRequest(text="warm up"))
        peaks = warm_up(self.runner, self.codec, prompt, self.cfg.prefill_chunk_positions, probe)
        plan = size_slots(self.runner, self.cfg, peaks, probe)
        log.info("batch slots: %s", plan.describe())
        if plan.limited_by == "memory":
            log.warning("memory allows %d slots, fewer than max_batch %d", plan.num_slots, self.cfg.max_batch)
        self.runner.allocate_slots(plan.num_slots)
        self._use_slots(plan.num_slots)
        # Mimi at the final row count, no row live (moshi's streaming graphs are made here, not on a call).
        device, num_codebooks = self.runner.device, self.model_cfg.num_codebooks
        self.codec.decode_step(
            torch.zeros(plan.num_slots, num_codebooks, dtype=torch.int64, device=device),  # [N, K]
            torch.zeros(plan.num_slots, dtype=torch.bool, device=device),  # [N]: no row live
        )
        self.runner.capture_graphs()

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        """The engine thread: its CPU threads (and CUDA device), start-up, then the loop."""
        try:
            use_cpu_threads(engine_cpu_threads(self.cfg.cpu_threads))
            device = self.runner.device
            if device.type == "cuda" and device.index is not None:  # "cuda" alone: the current device
                torch.cuda.set_device(device)  # graphs and streams on the engine's device
            self._warm_up()
        except BaseException as exc:  # noqa: BLE001 - start() re-raises it on the caller's thread
            failure.append(exc)
            with self._cond:
                self.state = "stopped"
            ready.set()
            return
        with self._cond:
            if self.state == "starting":  # stop() during the warm-up wins: the loop never starts
                self.state = "serving"
        ready.set()
        self._run()

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
        self._end_all("engine stopped")

    def _end_all(self, error: str) -> None:
        """The loop has stopped: every request still held, live, prefilling or waiting, is cancelled."""
        with self._cond:
            for slot in list(self.slots):
                self._finish(slot, "cancelled", error=error)
            for slot in list(self.prefills):
                self._end_prefill(slot, "cancelled", error)
            while self.scheduler.waiting:
                self._finish_unstarted(self.scheduler.waiting.popleft(), "cancelled")


def _stop_at_exit(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None and engine.state != "stopped":
        engine.stop()
