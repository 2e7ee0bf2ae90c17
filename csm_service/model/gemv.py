"""Projections through our own CPU matrix-vector kernels (model/kernels/gemv.cpp).

A batch-1 frame step is a chain of matrix-vector products bound by how fast the weights stream
from memory. On a CPU with AVX-512 (bf16 dot products and VNNI), these modules keep each weight
once, in the kernels' blocked layout (64 outputs per block, products as outer products), and
multiply through ``torch.ops.csm_cpu``. On the 2-core dev machine (``csm-service bench gemv``,
docs/benchmarks.md) the bf16 kernel is ~1.5x as fast as oneDNN's prepacked product at one row and
1.1-1.25x at 4 to 16 rows (streams batched together); at 128-512 rows (a prefill chunk) it is
level with oneDNN's. The weights are plain tensors (buffers), so ``torch.compile`` traces the
operator directly: no handle table as for oneDNN's opaque packed weights (model/fuse.py).

- :class:`GemvLinear`: a float32 or bfloat16 projection, y = x @ W.T.
- :class:`GemvHeads`: the depth decoder's per-codebook heads, one stacked buffer; a compiled graph
  indexes it with the (symbolic) codebook, so one graph serves every codebook.
(``--quantize int8_dynamic`` runs through the int8 kernel: model/quantize.py's ``Int8GemvLinear``.)

:func:`gemv_available` says whether the kernels are built and loaded (model/kernels/build.py).
"""

from __future__ import annotations

import torch
from torch import nn

from csm_service.model.kernels.ops import block_weight, fits, kernels_available

__all__ = ["GemvHeads", "GemvLinear", "gemv_available", "gemv_fits"]

_OPS = {torch.float32: "gemv_f32", torch.bfloat16: "gemv_bf16"}


def gemv_available(cache_dir: str = "") -> bool:
    """Whether this CPU runs the kernels and they are built and loaded (builds them the first time,
    under ``cache_dir`` when given)."""
    return kernels_available(cache_dir)


def gemv_fits(weight: torch.Tensor) -> bool:
    """Whether a [N, K] weight can go through a float kernel (float32 or bfloat16, K a multiple of
    16 or 32), on CPU."""
    return weight.device.type == "cpu" and weight.dtype in _OPS and fits(weight)


class GemvLinear(nn.Module):
    """y = x @ W.T with W [N, K] float32 or bfloat16 kept blocked for the gemv kernel (no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:  # weight [N, K]
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.op = _OPS[weight.dtype]
        self.register_buffer("blocked", block_weight(weight.detach()))  # [NB, K/KP, 64, KP]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features).contiguous()  # [M, K]
        out = getattr(torch.ops.csm_cpu, self.op)(flat, self.blocked, self.out_features)  # [M, N]
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gemv {self.blocked.dtype}"


class GemvHeads(nn.Module):
    """The depth decoder's per-codebook heads for the gemv kernel: ``heads(codebook, h)`` -> [B, V]."""

    def __init__(self, audio_head: torch.Tensor) -> None:  # [K - 1, d, V]
        super().__init__()
        self.vocab_size = audio_head.shape[-1]
        self.op = _OPS[audio_head.dtype]
        blocked = [block_weight(w.t().contiguous()) for w in audio_head.detach()]
        self.register_buffer("blocked", torch.stack(blocked))  # [K - 1, NB, d/KP, 64, KP]

    def forward(self, codebook: int, h: torch.Tensor) -> torch.Tensor:
        """Codebook 1..K-1's logits from decoder hidden h [B, d]; ``codebook`` may be symbolic."""
        return getattr(torch.ops.csm_cpu, self.op)(h.contiguous(), self.blocked[codebook - 1], self.vocab_size)
