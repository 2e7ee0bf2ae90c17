"""The model on its device: static KV caches, per-slot sampling state, prefill and batched step.

All per-slot state lives on the device in [max_batch] tensors, so a step reads nothing from the
host beyond two Python ints (how many rows, how many cache positions) and writes nothing back but
the frame's codes.

On CUDA the whole step (backbone step for every row at its own position, codebook-0 sampling, the
31 depth-decoder steps with their sampling, the state update) is captured as one CUDA graph per
(batch bucket, cache-length bucket) at start-up, and a step is one ``replay()``: the live rows are
padded up to the next batch bucket and the cache read up to the next length bucket (the mask hides
what lies beyond each row's position, so the result is the same as reading exactly).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from csm_service.engine.frame import FrameInputs, frame_step
from csm_service.engine.prefix_cache import PrefixKV
from csm_service.model.csm import CSM
from csm_service.model.fuse import fuse_projections

log = logging.getLogger(__name__)

MIN_KV_BUCKET = 256


def powers_of_two_upto(limit: int, start: int = 1) -> tuple[int, ...]:
    """start, 2*start, ... below ``limit``, then ``limit`` itself: the buckets a value rounds up to."""
    out, value = [], start
    while value < limit:
        out.append(value)
        value *= 2
    return (*out, limit)


def round_up(value: int, buckets: tuple[int, ...]) -> int:
    for bucket in buckets:
        if value <= bucket:
            return bucket
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


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
        self, model: CSM, max_batch: int, device: torch.device, dtype: torch.dtype, use_cuda_graphs: bool = False
    ) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        fuse_projections(self.model, pack_cpu=device.type == "cpu")
        self.model.setup_caches(max_batch)
        self.cfg = model.cfg
        self.max_batch = max_batch
        self.device = device
        self.dtype = dtype
        dim = self.cfg.backbone.dim
        self.hidden = torch.zeros(max_batch, dim, device=device, dtype=dtype)  # [N, D]
        self.positions = torch.zeros(max_batch, device=device, dtype=torch.int64)  # [N]
        self.is_active = torch.zeros(max_batch, device=device, dtype=torch.int64)  # [N] 0/1
        self.seeds = torch.zeros(max_batch, device=device, dtype=torch.int64)
        self.frame_index = torch.zeros(max_batch, device=device, dtype=torch.int64)
        self.temperature = torch.ones(max_batch, device=device, dtype=torch.float32)
        self.top_k = torch.ones(max_batch, device=device, dtype=torch.int64)
        self.codes = torch.zeros(max_batch, self.cfg.num_codebooks, device=device, dtype=torch.int64)  # [N, K]
        self.batch_buckets = powers_of_two_upto(max_batch)
        self.kv_buckets = powers_of_two_upto(self.cfg.max_seq_len, min(MIN_KV_BUCKET, self.cfg.max_seq_len))
        self.use_cuda_graphs = use_cuda_graphs and device.type == "cuda"
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}

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
    ) -> PrefixKV | None:
        """Run the prompt tokens, mask [S, 33] into ``slot``'s cache and arm its sampling state.

        With ``prefix_len`` the first rows are a stable prefix, always run on their own: their KV
        is copied in from ``prefix_kv`` (a cache hit) or computed and returned (for the cache).
        A hit and a miss therefore run the same operations on the rest and give the same result.
        """
        prompt_len = tokens.shape[0]
        t = torch.from_numpy(tokens).to(self.device).unsqueeze(0)  # [1, S, 33]
        m = torch.from_numpy(mask).to(self.device).unsqueeze(0)
        rows = slice(slot, slot + 1)
        snapshot = None
        if prefix_len and prefix_kv is not None:
            for cache, (k, v) in zip(self.model.backbone.caches, prefix_kv, strict=True):
                cache.k[slot, :prefix_len] = k
                cache.v[slot, :prefix_len] = v
        elif prefix_len:
            self._backbone_rows(t, m, 0, prefix_len, rows)
            snapshot = [
                (cache.k[slot, :prefix_len].clone(), cache.v[slot, :prefix_len].clone())
                for cache in self.model.backbone.caches
            ]  # per layer [P, Hkv, Dh]
        out = self._backbone_rows(t, m, prefix_len, prompt_len, rows)  # [1, S - P, D]
        self.hidden[slot] = out[0, -1]
        self.positions[slot] = prompt_len
        self.is_active[slot] = 1
        self.seeds[slot] = seed
        self.frame_index[slot] = 0
        self.temperature[slot] = temperature
        self.top_k[slot] = top_k
        return snapshot

    def _backbone_rows(self, t: torch.Tensor, m: torch.Tensor, start: int, end: int, rows: slice) -> torch.Tensor:
        """Prompt rows [start, end) at positions start..end-1, attending to the cache before them."""
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)  # [1, end - start]
        embedded = self.model.embed_rows(t[:, start:end], m[:, start:end])
        return self.model.backbone(embedded, positions, rows, end)

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
            n, length = round_up(num_rows, self.batch_buckets), round_up(kv_len, self.kv_buckets)
            self.graphs[(n, length)].replay()
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
        codes, next_hidden = frame_step(self.model, slice(0, n), inputs, kv_len)
        self.hidden[:n] = next_hidden
        self.positions[:n] += self.is_active[:n]
        self.frame_index[:n] += self.is_active[:n]
        self.codes[:n] = codes

    @torch.inference_mode()
    def capture_graphs(self) -> None:
        """Capture one CUDA graph per (batch bucket, cache-length bucket); call with no live slot.

        Largest first, all in one memory pool, so the smaller graphs reuse the largest's buffers.
        Warm-up and capture write only rows that are idle (their cache is rewritten by prefill).
        """
        if not self.use_cuda_graphs:
            return
        started = time.perf_counter()
        saved = [t.clone() for t in self._state()]
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for n in reversed(self.batch_buckets):
            for length in reversed(self.kv_buckets):
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
            "captured %d CUDA graphs (batch %s x cache %s) in %.1f s",
            len(self.graphs),
            self.batch_buckets,
            self.kv_buckets,
            time.perf_counter() - started,
        )

    def _state(self) -> list[torch.Tensor]:
        return [self.hidden, self.positions, self.is_active, self.seeds, self.frame_index, self.temperature, self.top_k]
