"""Chunked prefill: admitted prompts advance by a bounded number of positions between frame steps.

A long prompt (a 20 s voice on a cold prefix cache, a long session context) would otherwise stall
every live stream for as long as its whole prefill takes. Each loop iteration runs at most
``prefill_chunk_positions`` prompt rows (oldest admission first, possibly several requests), then
one frame step for the live slots; so a live stream's frame interval grows by at most one chunk's
time. A request's chunks depend on its prompt alone (never on what else is running), so its codes
are the same alone or beside others.

Chunks never cross the end of a cacheable prefix: a miss computes the prefix in chunks and it is
snapshotted for the prefix cache the moment it is complete; a hit copies it in with its first chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from csm_service.engine.prefix_cache import PrefixKV
from csm_service.engine.state import RequestHandle

Rows = tuple[int, int]  # prompt rows [start, end)


def prefill_chunks(prompt_len: int, prefix_len: int, prefix_hit: bool, chunk_positions: int) -> list[Rows]:
    """The row ranges a prompt is prefilled in: its prefix (unless a hit copies it in), then the
    rest, each cut into chunks of at most ``chunk_positions`` rows (0: each in one piece)."""
    segments = [(0, prefix_len)] if prefix_len and not prefix_hit else []
    segments.append((prefix_len, prompt_len))
    chunks = []
    for lo, hi in segments:
        size = chunk_positions if chunk_positions > 0 else hi - lo
        chunks += [(start, min(start + size, hi)) for start in range(lo, hi, size)]
    return chunks


@dataclass
class PrefillTask:
    """One admitted request whose prompt is being prefilled into its slot."""

    slot: int
    handle: RequestHandle
    chunks: list[Rows]
    prefix_key: str | None  # set when the prompt has a cacheable prefix and the cache is on
    prefix_hit: bool
    prefix_kv: PrefixKV | None  # a hit's KV, handed to the runner with the first chunk (then dropped)
    admitted_at: float  # perf_counter
    next_chunk: int = 0

    @property
    def is_done(self) -> bool:
        return self.next_chunk >= len(self.chunks)


def plan_round(tasks: Iterable[PrefillTask], budget: int) -> list[tuple[PrefillTask, Rows]]:
    """The chunks to run before the next frame step: oldest task first, each task's chunks in order,
    as many as fit in ``budget`` rows (at least one chunk; 0 = no limit, i.e. one-shot prefill)."""
    plan: list[tuple[PrefillTask, Rows]] = []
    spent = 0
    for task in tasks:
        for start, end in task.chunks[task.next_chunk :]:
            if budget > 0 and spent and spent + (end - start) > budget:
                return plan
            plan.append((task, (start, end)))
            spent += end - start
    return plan
