"""The model on its device: static KV caches, per-slot sampling state, prefill and batched step.

All per-slot state lives on the device in [num_slots] tensors, so a step reads nothing from the
host beyond two Python ints (how many rows, how many cache positions) and writes nothing back but
the frame's codes. The slots are sized at start-up from free memory (engine/memory.py): the runner
warms up on a WARM_UP_SLOTS cache, then :meth:`allocate_slots` gives it the final count.

On CUDA the whole step is captured as CUDA graphs at start-up and a step is one ``replay()``: the
live rows are padded up to a batch bucket and the cache read up to a length bucket (the mask hides
what lies beyond each row's position). Length buckets are captured only for the batch buckets
where reading the whole cache instead would add more than a tenth to a step's weight reads
(engine/buckets.py): 14 graphs at max batch 64 instead of 28.

On CPU the step reads exactly the filled cache, and its pieces are compiled with Inductor
(engine/compiled.py; ``compile_cpu``): graphs with symbolic shapes, one for a single row and one
for more, both compiled before SERVING, so no later batch size or cache length recompiles.

A row that is not active still computes in a batched step and writes its (ignored) K/V at its
``positions`` entry. An idle row's is 0 and its cache is rewritten by its next prefill; a row whose
prefill is in progress points at the next prompt row its prefill computes, so that write lands on
a position the next chunk overwrites and never on rows already prefilled.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from csm_service.engine.buckets import (
    MIN_KV_BUCKET,
    backbone_kv_bytes_per_position,
    graph_lengths,
    kv_buckets,
    powers_of_two_upto,
    round_up,
    step_weight_bytes,
)
from csm_service.engine.compiled import can_compile, compile_pieces, timed_compile
from csm_service.engine.frame import EAGER, FrameInputs, frame_step
from csm_service.engine.prefill import prefill_chunks
from csm_service.engine.prefix_cache import PrefixKV
from csm_service.model.csm import CSM
from csm_service.model.fuse import fuse_projections, pack_heads
from csm_service.model.gemv import gemv_available
from csm_service.model.quantize import QUANT_MODES, quantize_int8

__all__ = ["MIN_KV_BUCKET", "ModelRunner", "pick_device", "pick_dtype", "powers_of_two_upto", "round_up"]

log = logging.getLogger(__name__)

WARM_UP_SLOTS = 1  # the cache the warm-up runs on, before the slots are sized
MIN_COMPILE_KV = 3  # cache length of the compiling steps: not 0 or 1, which Inductor would specialise


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name]


class ModelRunner:
    def __init__(
        self,
        model: CSM,
        max_batch: int,
        device: torch.device,
        dtype: torch.dtype,
        use_cuda_graphs: bool = False,
        compile_cpu: bool = False,
        compile_cache_dir: str = "",
        quantize: str = "none",
        cpu_kernels: bool = True,
    ) -> None:
        """``max_batch``: the slots allocated now (the engine builds with WARM_UP_SLOTS and sizes later).
        ``compile_cpu``: on CPU, compile the frame step (else it runs eagerly); ignored elsewhere.
        ``quantize``: "int8" (int8 weight-only) or "int8_dynamic" (int8 weights and activations)
        projections, CPU only (model/quantize.py). ``cpu_kernels``: on CPU, our AVX-512 gemv kernels
        (model/kernels, built into ``compile_cache_dir`` when given) where the CPU has them."""
        if quantize not in QUANT_MODES:
            raise ValueError(f"quantize: one of {', '.join(QUANT_MODES)}, not {quantize!r}")
        if quantize != "none" and device.type != "cpu":
            raise ValueError(f"quantize {quantize!r} runs on CPU only (its int8 kernels are CPU kernels)")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.compiled = compile_cpu and device.type == "cpu" and can_compile()
        self.quantize = quantize
        # Our gemv kernels' blocked weights, else oneDNN's prepacked ones, compiled or not
        # (model/fuse.py); int8 weights have their own kernels (model/quantize.py).
        self.gemv = cpu_kernels and device.type == "cpu" and gemv_available(compile_cache_dir)
        fuse_projections(self.model, pack_cpu=device.type == "cpu" and quantize == "none", gemv=self.gemv)
        if quantize != "none":
            quantize_int8(self.model, quantize, gemv=self.gemv)
            pack_heads(self.model, gemv=self.gemv)  # the heads stay in the model dtype, prepacked
        self.pieces = compile_pieces(compile_cache_dir) if self.compiled else EAGER
        self.compile_s: float | None = None  # seconds the compiled variants took at capture
        self.cfg = model.cfg
        self.device = device
        self.dtype = dtype
        self.use_cuda_graphs = use_cuda_graphs and device.type == "cuda"
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.kv_buckets = kv_buckets(self.cfg.max_seq_len)
        self.allocate_slots(max_batch)

    @property
    def num_slots(self) -> int:
        return self.max_batch

    def free_slots(self) -> None:
        """Drop the KV caches and per-slot state (to measure free memory before sizing)."""
        if self.graphs:
            raise RuntimeError("the slots are sized before the CUDA graphs are captured, never after")
        self.model.setup_caches(0)
        self.max_batch = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def allocate_slots(self, num_slots: int) -> None:
        """(Re)allocate the KV caches and per-slot state for ``num_slots`` rows (before capture)."""
        self.free_slots()
        self.model.setup_caches(num_slots)
        self.max_batch = num_slots
        n, device, dtype = num_slots, self.device, self.dtype
        self.hidden = torch.zeros(n, self.cfg.backbone.dim, device=device, dtype=dtype)  # [N, D]
        self.positions = torch.zeros(n, device=device, dtype=torch.int64)  # [N]
        self.is_active = torch.zeros(n, device=device, dtype=torch.int64)  # [N] 0/1
        self.seeds = torch.zeros(n, device=device, dtype=torch.int64)
        self.frame_index = torch.zeros(n, device=device, dtype=torch.int64)
        self.temperature = torch.ones(n, device=device, dtype=torch.float32)
        self.top_k = torch.ones(n, device=device, dtype=torch.int64)
        self.codes = torch.zeros(n, self.cfg.num_codebooks, device=device, dtype=torch.int64)  # [N, K]
        self.batch_buckets = powers_of_two_upto(n)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.graph_lengths = graph_lengths(
            n,
            self.cfg.max_seq_len,
            backbone_kv_bytes_per_position(self.cfg, itemsize),
            step_weight_bytes(self.cfg, itemsize),
        )

    @torch.inference_mode()
    def prefill(
        self,
        slot: int,
        tokens: np.ndarray,
        mask: np.ndarray,
        seed: int,
        temperature: float,
        top_k: int,
        prefix_len: int = 0,
        prefix_kv: PrefixKV | None = None,
        rows: tuple[int, int] | None = None,
    ) -> PrefixKV | None:
        """Run the prompt tokens, mask [S, 33] into ``slot``'s cache and arm its sampling state.

        With ``prefix_len`` the first rows are a stable prefix, always run on their own: their KV
        is copied in from ``prefix_kv`` (a cache hit) or computed and returned (for the cache).
        A hit and a miss therefore run the same operations on the rest and give the same result.

        ``rows`` = (start, end) runs one chunk of a chunked prefill: the caller runs the chunks of
        :func:`prefill_chunks` in order, with the same arguments (``prefix_kv`` with the first one
        only). The first chunk makes the slot idle; the chunk that reaches S arms it.
        """
        prompt_len = tokens.shape[0]
        if rows is None:
            snapshot = None
            for i, chunk in enumerate(prefill_chunks(prompt_len, prefix_len, prefix_kv is not None, 0)):
                kv = prefix_kv if i == 0 else None
                taken = self.prefill(slot, tokens, mask, seed, temperature, top_k, prefix_len, kv, chunk)
                snapshot = taken if taken is not None else snapshot
            return snapshot
        start, end = rows
        if start == 0 or prefix_kv is not None:  # the first chunk
            self.is_active[slot] = 0
        if prefix_kv is not None:
            if start != prefix_len:
                raise ValueError(f"a prefix hit's first chunk starts at {prefix_len}, not {start}")
            for cache, (k, v) in zip(self.model.backbone.caches, prefix_kv, strict=True):
                cache.k[slot, :prefix_len] = k
                cache.v[slot, :prefix_len] = v
        t = torch.from_numpy(tokens[start:end]).to(self.device).unsqueeze(0)  # [1, C, 33]
        m = torch.from_numpy(mask[start:end]).to(self.device).unsqueeze(0)
        out = self._backbone_rows(t, m, start, slice(slot, slot + 1))  # [1, C, D]
        self.positions[slot] = end  # a step beside this prefill writes row `slot` here; the next chunk overwrites it
        snapshot = None
        if end == prefix_len:  # a miss: the prefix is complete
            snapshot = [
                (cache.k[slot, :prefix_len].clone(), cache.v[slot, :prefix_len].clone())
                for cache in self.model.backbone.caches
            ]  # per layer [P, Hkv, Dh]
        if end == prompt_len:
            self.hidden[slot] = out[0, -1]
            self.is_active[slot] = 1
            self.seeds[slot] = seed
            self.frame_index[slot] = 0
            self.temperature[slot] = temperature
            self.top_k[slot] = top_k
        return snapshot

    def _backbone_rows(self, t: torch.Tensor, m: torch.Tensor, start: int, rows: slice) -> torch.Tensor:
        """Prompt rows t, m [1, C, 33] at positions start..start+C-1, attending to the cache before them."""
        end = start + t.shape[1]
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)  # [1, C]
        return self.model.backbone(self.model.embed_rows(t, m), positions, rows, end)

    def release(self, slot: int) -> None:
        self.is_active[slot] = 0
        self.positions[slot] = 0

    @torch.inference_mode()
    def step(self, num_rows: int, kv_len: int) -> torch.Tensor:
        """Advance slots [0, num_rows) by one frame -> codes [num_rows, K] on the device: a view
        of a reused buffer, valid until the next step.

        ``kv_len`` must exceed every active slot's position. Idle rows compute and are ignored.
        With CUDA graphs the rows and the cache length are rounded up to their buckets.
        """
        if self.graphs:
            n = round_up(num_rows, self.batch_buckets)
            self.graphs[(n, round_up(kv_len, self.graph_lengths[n]))].replay()
        else:
            self.step_eager(num_rows, kv_len)
        return self.codes[:num_rows]

    @torch.inference_mode()
    def step_eager(self, n: int, kv_len: int) -> None:
        """The step body (what a graph captures): rows [0, n), cache positions [0, kv_len)."""
        inputs = FrameInputs(
            hidden=self.hidden[:n],
            positions=self.positions[:n],
            seeds=self.seeds[:n],
            frame_index=self.frame_index[:n],
            temperature=self.temperature[:n],
            top_k=self.top_k[:n],
        )
        codes, next_hidden = frame_step(self.model, slice(0, n), inputs, kv_len, self.pieces)
        self.hidden[:n] = next_hidden
        self.positions[:n] += self.is_active[:n]
        self.frame_index[:n] += self.is_active[:n]
        self.codes[:n] = codes

    @torch.inference_mode()
    def capture_graphs(self) -> None:
        """Capture one CUDA graph per batch bucket and each of its cache lengths; call with no live slot.

        Largest first, all in one memory pool, so the smaller graphs reuse the largest's buffers.
        Warm-up and capture write only rows that are idle (their cache is rewritten by prefill).
        On CPU with ``compile_cpu``: compile the step for one row and for many; the state is
        restored the same way.
        """
        if self.compiled:
            saved = [t.clone() for t in self._state()]
            self.compile_s = timed_compile(self._compile_variants)
            for tensor, value in zip(self._state(), saved, strict=True):
                tensor.copy_(value)
            return
        if not self.use_cuda_graphs:
            return
        started = time.perf_counter()
        saved = [t.clone() for t in self._state()]
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for n in reversed(self.batch_buckets):
            for length in reversed(self.graph_lengths[n]):
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):  # warm-up: lazy init and autotuning outside the graph
                    for _ in range(2):
                        self.step_eager(n, length)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.step_eager(n, length)
                self.graphs[(n, length)] = graph
        torch.cuda.synchronize(self.device)
        for tensor, value in zip(self._state(), saved, strict=True):
            tensor.copy_(value)
        log.info(
            "captured %d CUDA graphs (batch bucket: cache lengths %s) in %.1f s",
            len(self.graphs),
            self.graph_lengths,
            time.perf_counter() - started,
        )

    def _compile_variants(self) -> None:
        """A step at one row and, with room, at two: Inductor compiles a dimension of size 1 as a shape
        of its own (padding one row to two instead doubles an fp32 product's time: oneDNN's
        matrix-vector kernel serves one row only). The warm-up has compiled the first already."""
        for rows in sorted({1, min(2, self.max_batch)}):
            self.step_eager(rows, min(MIN_COMPILE_KV, self.cfg.max_seq_len))

    def _state(self) -> list[torch.Tensor]:
        return [self.hidden, self.positions, self.is_active, self.seeds, self.frame_index, self.temperature, self.top_k]
