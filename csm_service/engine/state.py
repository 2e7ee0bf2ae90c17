"""The engine's bookkeeping types: a submitted request's handle, a live slot, the counters."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from csm_service.core.events import Finished, PcmChunk, Timings
from csm_service.core.request import SpeechRequest
from csm_service.engine.prompt import Prompt

Event = PcmChunk | Finished
Sink = Callable[[Event], None]
_ids = itertools.count(1)


def failure_text(stage: str, exc: BaseException) -> str:
    """The client's error text: where it failed and what, one short line (the traceback is logged)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return f"synthesis failed: {stage}: out of memory"
    lines = str(exc).strip().splitlines()
    detail = f": {lines[0][:200]}" if lines else ""
    return f"synthesis failed: {stage}: {type(exc).__name__}{detail}"


class _CancelTarget(Protocol):
    def _on_cancel(self, handle: RequestHandle) -> None: ...


class RequestHandle:
    """A submitted request: its prompt, its sink, and a thread-safe ``cancel``."""

    def __init__(self, request: SpeechRequest, sink: Sink, prompt: Prompt, seed: int) -> None:
        self.id = next(_ids)
        self.request = request
        self.sink = sink
        self.prompt = prompt
        self.seed = seed
        self.submitted_at = time.perf_counter()
        self.cancelled = threading.Event()
        self.frames_at_cancel = 0  # frames it had when cancel() was called (running requests)
        self._engine: _CancelTarget | None = None

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            if self._engine is not None:
                self._engine._on_cancel(self)


@dataclass
class SlotState:
    """A live request in its batch slot (its prefill done)."""

    handle: RequestHandle
    max_frames: int
    position: int  # host copy of the slot's next backbone position
    frames: list[np.ndarray] = field(default_factory=list)  # codes [32] per generated frame
    pcm: list[np.ndarray] = field(default_factory=list)  # decoded frames not yet sent
    chunk_index: int = 0
    frames_sent: int = 0
    last_chunk_at: float = 0.0  # perf_counter() when the last chunk went out
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
    failed_prefills: int = 0  # admissions or prefill chunks that raised (that request ended with "error")
    failed_steps: int = 0  # frame steps that raised (every live request ended with "error")
    prefill_chunks: int = 0  # prefill chunks run (one per prompt with prefill_chunk_positions 0)
