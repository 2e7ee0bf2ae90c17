"""What the stages of the engine loop share: the state :class:`~csm_service.engine.engine.Engine`
sets up, declared once, and the codec interface the loop decodes with.

The loop is written in stages, one file each, that Engine inherits: admission and chunked prefill
(engine/admission.py), the frame step (engine/frame_step.py), and what reaches the caller and frees a
slot (engine/delivery.py). They all work on this state, on the engine thread, and change ``slots``,
``prefills`` and the scheduler only under the one lock ``_cond``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from csm_service.config import CsmConfig, EngineConfig
from csm_service.engine.prefill import PrefillTask
from csm_service.engine.prefix_cache import PrefixCache
from csm_service.engine.runner import ModelRunner
from csm_service.engine.scheduler import Scheduler
from csm_service.engine.state import EngineStats, RequestHandle, SlotState


class StreamingCodec(Protocol):
    """The audio codec as the engine uses it (:class:`~csm_service.codec.mimi.MimiCodec`)."""

    def start_streaming(self, num_rows: int) -> None:
        """Fresh streaming state for ``num_rows`` rows (the engine's slots)."""
        ...

    def reset_rows(self, rows: torch.Tensor) -> None:
        """rows [num_rows] bool: forget these rows' streaming history."""
        ...

    def decode_step(self, codes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """codes [n, 32], active [n] bool, for the first n rows -> pcm [n, 1920] for one frame."""
        ...

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """pcm float32 [T] at 24 kHz -> codes int64 [32, F] (thread-safe)."""
        ...


class LoopState:
    """The attributes every stage of the loop reads and writes (Engine.__init__ and _use_slots set them)."""

    runner: ModelRunner
    codec: StreamingCodec
    cfg: EngineConfig
    model_cfg: CsmConfig
    stats: EngineStats
    prefix_cache: PrefixCache
    num_slots: int
    scheduler: Scheduler[RequestHandle]  # waiting requests and free slots
    slots: dict[int, SlotState]  # live slots (their prefill done)
    prefills: dict[int, PrefillTask]  # slots whose prefill is in progress, oldest first
    observe_frame_interval: Callable[[float], None]  # seconds per frame between a stream's chunks (metrics)
    _cond: threading.Condition  # the lock around slots, prefills, the scheduler and the state
