"""Mimi's streaming state seen through its first n rows, so a frame decodes the live rows only.

The engine streams Mimi over all of its slots (one row each), but live streams sit in rows
[0, n) (the scheduler hands out the lowest free slot, and the frame step already runs rows 0..n-1
only). Decoding all rows with an execution mask costs as much for one live stream as for every slot:
at full size on CPU, 16 rows took ~2.5x the time of one (docs/benchmarks.md). A window swaps every
streaming module's state for a copy whose per-row tensors are views of the first n rows, decodes
n rows, and swaps the full state back.

moshi 0.2.13's streaming states (``State`` dataclasses) keep per-row tensors first in ``batch``
(conv history, offsets, masks) and the attention's ring cache as ``[2, batch, heads, T, dim]``.
Their updates are mostly in place, so they land in the full tensors through the views; the one
field moshi reassigns (``first`` of a replicate-padded conv) and the shared integer offsets are
copied back after the decode. A state field that is neither a known shared field nor a tensor with
the rows first makes :func:`row_fields` raise. That check cannot see everything (a new attribute
of the ring cache, or a shared tensor whose first dimension happens to equal the row count), so
tests/unit/test_mimi_rows.py checks a windowed decode against the masked full-batch decode on the
installed moshi.

CPU only: on CUDA moshi replays graphs captured at the full row count, with fixed tensor
addresses, so the codec decodes every row there (one replay; the spare rows cost little).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch
from moshi.modules.streaming import State, StreamingModule
from moshi.modules.transformer import RingKVCache

T = TypeVar("T")

_SHARED_FIELDS = ("batch_size", "device", "offset_cpu")  # not per row: batch_size is set, the rest copied
_GRAPH_FIELDS = ("graphed_tr_enc", "graphed_tr_dec", "graphed_encoder", "graphed_decoder")  # MimiModel's wrappers
_CROSS_FIELDS = ("k_cross", "v_cross")  # cross-attention only (None in Mimi)


def row_fields(state: State) -> list[str]:
    """The names of ``state``'s per-row tensors (first dimension = rows); raises on a field it does
    not know how to window, so a changed moshi stops here instead of decoding wrong rows."""
    names = ["exec_mask"]  # set in State.__post_init__, not a dataclass field
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        if field.name in _SHARED_FIELDS or field.name in _GRAPH_FIELDS or field.name == "kv_cache":
            continue
        if field.name in _CROSS_FIELDS and value is None:
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == state.batch_size:
            names.append(field.name)
            continue
        raise TypeError(f"moshi state {type(state).__name__}.{field.name}: unknown layout, cannot window rows")
    return names


class RowWindow:
    """The streaming state of one module tree at ``num_rows`` rows (views into the full state)."""

    def __init__(self, full: dict[str, State], num_rows: int) -> None:
        self.full = full
        self.num_rows = num_rows
        self.fields = {name: row_fields(state) for name, state in full.items()}
        self.views = {name: self._view(state, self.fields[name]) for name, state in full.items()}

    def _view(self, state: State, fields: list[str]) -> State:
        n = self.num_rows
        view = copy.copy(state)  # a shallow copy: the graph wrappers and device are shared
        view.batch_size = n
        for name in fields:
            setattr(view, name, getattr(state, name)[:n])
        cache = getattr(state, "kv_cache", None)
        if isinstance(cache, RingKVCache):
            rows = copy.copy(cache)
            rows.cache = cache.cache[:, :n]  # [2, n, H, T, D]
            if cache.respect_exec_mask:
                rows.end_offset = cache.end_offset[:n]
            view.kv_cache = rows
        elif cache is not None:
            raise TypeError(f"moshi kv cache {type(cache).__name__}: unknown layout, cannot window rows")
        return view

    def sync_in(self) -> None:
        """Before a call: the shared integers the full state holds now (a reset zeroes them there),
        and views of any per-row tensor a call on all rows replaced (no window saw that call)."""
        n = self.num_rows
        for name, view in self.views.items():
            state = self.full[name]
            if hasattr(view, "offset_cpu"):
                view.offset_cpu = state.offset_cpu
            for field in self.fields[name]:
                if getattr(view, field).data_ptr() != getattr(state, field).data_ptr():
                    setattr(view, field, getattr(state, field)[:n])

    def sync_back(self) -> None:
        """After a call on the views: what moshi replaced instead of updating in place goes back into
        the full state (and the view points at the full tensor's rows again)."""
        n = self.num_rows
        for name, view in self.views.items():
            state = self.full[name]
            for field in self.fields[name]:
                value = getattr(view, field)
                target = getattr(state, field)
                if value.data_ptr() != target.data_ptr() or value.shape[0] != n:
                    target[:n].copy_(value)
                    setattr(view, field, target[:n])
            if hasattr(state, "offset_cpu"):
                state.offset_cpu = view.offset_cpu


class RowWindows:
    """Windows of one streaming module (Mimi) by row count, made on first use and kept."""

    def __init__(self, module: StreamingModule) -> None:
        self.module = module
        self.full = module.get_streaming_state()  # name -> State at the full row count
        self.windows: dict[int, RowWindow] = {}

    def call(self, num_rows: int, fn: Callable[[], T]) -> T:
        """``fn()`` with the module's state at its first ``num_rows`` rows."""
        window = self.windows.get(num_rows)
        if window is None:
            window = self.windows[num_rows] = RowWindow(self.full, num_rows)
        window.sync_in()
        self.module.set_streaming_state(window.views)
        try:
            return fn()
        finally:
            window.sync_back()
            self.module.set_streaming_state(self.full)
