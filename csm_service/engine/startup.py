"""Warm-up and slot sizing: the middle of start-up (build -> load -> warm up -> size -> capture).

The warm-up runs the whole path on the runner's warm-up cache (slot 0): a short prompt's prefill,
a frame step, a Mimi decode, twice (kernels, allocator, lazy state), then the largest prefill
chunk the engine will ever run (``prefill_chunk_positions`` rows at the end of the cache, or a
whole max-length prompt for one-shot prefill). It measures that chunk's transient peak and one
row's frame working memory; then the warm-up cache is freed, free memory is read, and
:func:`~csm_service.engine.memory.plan_slots` sizes the slots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from csm_service.config import EngineConfig
from csm_service.core.constants import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from csm_service.engine.loop_state import StreamingCodec
from csm_service.engine.memory import MemoryFigures, MemoryProbe, SlotPlan, kv_bytes_per_slot, plan_slots, weight_bytes
from csm_service.engine.prompt import Prompt
from csm_service.engine.runner import ModelRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUpPeaks:
    activation_peak_bytes: int  # the largest prefill chunk
    frame_bytes_per_slot: int  # one row: short prefill + step + decode


def warm_up(
    runner: ModelRunner, codec: StreamingCodec, prompt: Prompt, chunk_positions: int, probe: MemoryProbe
) -> WarmUpPeaks:
    """Run the path on slot 0 (the codec streams ``runner.num_slots`` rows) and measure its peaks."""
    rows, num_codebooks = runner.num_slots, runner.cfg.num_codebooks
    frame_bytes = 0
    for _ in range(2):  # the second pass is measured: lazy initialisation is done by then
        base = probe.current()
        probe.reset_peak()
        runner.prefill(0, prompt.tokens, prompt.mask, seed=0, temperature=DEFAULT_TEMPERATURE, top_k=DEFAULT_TOP_K)
        codes = runner.step(1, prompt.tokens.shape[0] + 1)
        codec.decode_step(
            torch.zeros(rows, codes.shape[1], dtype=torch.int64, device=runner.device),
            torch.zeros(rows, dtype=torch.bool, device=runner.device),
        )
        frame_bytes = max(0, probe.peak() - base)
        runner.release(0)
    max_len = runner.cfg.max_seq_len
    chunk = min(chunk_positions, max_len) if chunk_positions > 0 else max_len
    tokens = np.zeros((max_len, num_codebooks + 1), dtype=np.int64)  # [S, 33]: all masked out
    base = probe.current()
    probe.reset_peak()
    runner.prefill(0, tokens, tokens.astype(bool), 0, 1.0, 1, rows=(max_len - chunk, max_len))
    activation = max(0, probe.peak() - base)
    runner.release(0)
    return WarmUpPeaks(activation, frame_bytes)


def size_slots(runner: ModelRunner, cfg: EngineConfig, peaks: WarmUpPeaks, probe: MemoryProbe) -> SlotPlan:
    """Free the warm-up cache, read free memory and plan the slots (not allocated yet)."""
    runner.free_slots()
    itemsize = torch.empty((), dtype=runner.dtype).element_size()
    per_slot_kv = kv_bytes_per_slot(runner.cfg, itemsize)
    totals = probe.totals()
    if totals is None:
        log.warning("cannot read free memory on %s: %d slots (max_batch) unchecked", runner.device, cfg.max_batch)
        return SlotPlan(cfg.max_batch, 0, 0, per_slot_kv, per_slot_kv, "max_batch", "unmeasured")
    total, free = totals
    figures = MemoryFigures(
        total_bytes=total,
        free_bytes=free,
        weight_bytes=weight_bytes(runner.model),
        activation_peak_bytes=peaks.activation_peak_bytes,
        frame_bytes_per_slot=peaks.frame_bytes_per_slot,
    )
    log.info("memory after warm-up on %s: %s", runner.device, figures)
    return plan_slots(
        figures,
        per_slot_kv,
        cfg.max_batch,
        cfg.memory_utilization,
        cfg.prefix_cache_mb << 20,
        cfg.memory_budget_mb << 20,
    )
