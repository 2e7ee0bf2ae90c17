"""int8 projections of the transformer (``--quantize int8 | int8_dynamic``, CPU).

Every projection of the backbone and the depth decoder, and the backbone-to-decoder projection,
keeps its weight as int8 with one scale per output channel (symmetric: ``w ~ q * scale``,
``q`` in [-127, 127]) and multiplies through torch's own weight-only int8 kernel
(``torch._weight_int8pack_mm``: activations stay in the model dtype, the int8 weight is widened
inside the kernel). A frame step reads each weight once per call, so halving the bytes against
bf16 (a quarter against fp32) is what a memory-bound CPU step needs. The embeddings and the
codebook heads stay as they are: they are a small share of the reads and set the logits directly.

``int8_dynamic`` keeps the same int8 weights but multiplies them with int8 activations (W8A8):
each call quantizes its input per tensor, then fbgemm's int8 kernel (VNNI where the CPU has it)
does the product and rescales. Measured on the 2-core dev machine over 8192 x 2048 weights out of
cache: 0.58 ms per product, against 1.03 ms for the weight-only kernel (which widens the weight
to bf16 first, ~10 GB/s) and 1.44 ms for bf16 prepacked: fbgemm reads int8 at memory speed. The
price is the activation's rounding (per tensor, 8 bits; 7 where the CPU lacks VNNI, so the
products cannot saturate), which outliers in trained activations make worse than random weights
show. torch 2.13 marks the quantized-tensor API this mode packs its weights with as deprecated
(torchao is its successor), so it stays an experiment until torchao has a CPU kernel as fast.
fbgemm's packed weight cannot be traced, so like a prepacked oneDNN weight
(model/fuse.py) it is named by a handle through the operator ``csm::int8_dynamic_linear`` (model/handle_ops.py).

Where our own CPU kernels run (AVX-512 with bf16 and VNNI, model/kernels), both modes use
:class:`Int8GemvLinear` instead, with the same int8 weights in the kernels' blocked layout:

- ``int8``: ``gemv_w8`` widens each weight line to float32 in registers; activations are not
  rounded. 1.66x as fast as ``_weight_int8pack_mm`` out of cache on the dev machine (29 against
  17.5 GB/s of int8, ``csm-service bench gemv``).
- ``int8_dynamic``: ``gemv_int8`` rounds each activation per group of 64 inputs with its own scale,
  not per row, so an outlier costs only its group's precision; 1.18x as fast as fbgemm's.

torch's and fbgemm's kernels stay the fallback where ours cannot run (docs/benchmarks.md).

The kernels exist for CPU, not CUDA; the engine refuses both modes elsewhere. Default off: how far
the codes drift from bf16 can only be judged on trained weights (docs/benchmarks.md reports the
logit deviation and greedy-code agreement on random ones).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import weakref
from collections.abc import Callable

import torch
from torch import nn

from csm_service.config import QUANT_MODES
from csm_service.model.csm import CSM
from csm_service.model.handle_ops import define_handle_op
from csm_service.model.kernels.build import cpu_flags
from csm_service.model.kernels.ops import block_scale, block_weight, unblock_weight

__all__ = ["QUANT_MODES", "Int8DynamicLinear", "Int8GemvLinear", "Int8Linear", "quantize_int8"]

log = logging.getLogger(__name__)

INT8_MAX = 127
_DYNAMIC: dict[int, object] = {}  # handle -> fbgemm's packed int8 weight, while its Int8DynamicLinear lives
_handles = itertools.count()
_handle_lock = threading.Lock()


def per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int8 [N, K], scale float32 [N]) with weight ~ q * scale, |q| <= 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # [N]
    return (w / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


@functools.cache
def has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies u8 x s8 into 32-bit sums (VNNI): then activations keep all 8 bits."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags(cpuinfo))


_REDUCE_RANGE = not has_vnni()  # 7-bit activations without VNNI, so fbgemm's u8 x s8 sums cannot saturate


def _int8_dynamic_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """x [M, K] float32 @ the packed int8 weight ``handle`` [N, K].T -> [M, N] float32."""
    return torch.ops.quantized.linear_dynamic(x, _DYNAMIC[handle], _REDUCE_RANGE)


define_handle_op("int8_dynamic_linear", _int8_dynamic_linear)


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T with q int8 [N, K] and scale [N] in the activations' dtype (no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:  # weight [N, K]
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = per_channel_int8(weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int8DynamicLinear(nn.Module):
    """y ~ x @ (q * scale).T with x rounded to int8 per call (fbgemm's dynamic linear; no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:  # weight [N, K]
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = per_channel_int8(weight)
        zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
        with _handle_lock:
            self.handle = next(_handles)
        _DYNAMIC[self.handle] = torch.ops.quantized.linear_prepack(qweight, None)
        weakref.finalize(self, _DYNAMIC.pop, self.handle, None)

    @property
    def weight_int8(self) -> torch.Tensor:
        """q int8 [N, K], read back from the packed weight (kept once: no copy beside it)."""
        return self._unpacked().int_repr()

    @property
    def scale(self) -> torch.Tensor:
        """scale float32 [N]."""
        return self._unpacked().q_per_channel_scales().float()

    def _unpacked(self) -> torch.Tensor:
        return torch.ops.quantized.linear_unpack(_DYNAMIC[self.handle])[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        # fbgemm takes and returns float32; compiled, the casts fuse into the neighbouring kernels.
        flat = x.reshape(-1, self.in_features).float()  # [M, K]
        out = torch.ops.csm.int8_dynamic_linear(flat, self.handle, self.out_features)  # [M, N] float32
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"


class Int8GemvLinear(nn.Module):
    """y ~ x @ (q * scale).T with q int8 per output channel, through our CPU kernels
    (model/kernels/gemv.cpp; no bias):

    - ``round_activations=False`` (``--quantize int8``): weight-only, ``gemv_w8`` widens q to float32
      in registers; x is not rounded.
    - ``round_activations=True`` (``int8_dynamic``): ``gemv_int8`` rounds x to int8 per group of 64
      inputs, each group with its own scale, and multiplies in VNNI int32 sums.

    Takes and returns the model dtype; the kernels work in float32."""

    GROUP = 64  # inputs per 64-byte weight line (and per activation scale): K must be a multiple

    def __init__(self, weight: torch.Tensor, round_activations: bool) -> None:  # weight [N, K]
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.round_activations = round_activations
        q, scale = per_channel_int8(weight)
        # VNNI multiplies u8 by s8: with int8 activations the weight is kept as q + 128.
        stored = (q.to(torch.int16) + 128).to(torch.uint8) if round_activations else q
        self.register_buffer("blocked", block_weight(stored))  # [NB, K/KP, 64, KP]: KP 4 (u8) or 1 (s8)
        self.register_buffer("block_scale", block_scale(scale, self.blocked))  # [NB * 64], zero for padding rows

    @classmethod
    def fits(cls, weight: torch.Tensor) -> bool:
        return weight.dim() == 2 and weight.shape[1] % cls.GROUP == 0 and weight.device.type == "cpu"

    @property
    def weight_int8(self) -> torch.Tensor:
        """q int8 [N, K], read back from the blocked weight."""
        flat = unblock_weight(self.blocked, self.out_features)
        return (flat.to(torch.int16) - 128).to(torch.int8) if self.round_activations else flat

    @property
    def scale(self) -> torch.Tensor:
        """scale float32 [N]."""
        return self.block_scale[: self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features).float().contiguous()  # [M, K]; compiled, the cast fuses
        op = torch.ops.csm_cpu.gemv_int8 if self.round_activations else torch.ops.csm_cpu.gemv_w8
        out = op(flat, self.blocked, self.block_scale, self.out_features)  # [M, N] float32
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        rounded = "int8 activations per 64 inputs" if self.round_activations else "weight-only"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 gemv, {rounded}"


def _int8_gemv(round_activations: bool, fallback: type[nn.Module]) -> Callable[[torch.Tensor], nn.Module]:
    """Our kernel where the weight's shape fits, else ``fallback`` (torch's or fbgemm's)."""

    def make(weight: torch.Tensor) -> nn.Module:
        return Int8GemvLinear(weight, round_activations) if Int8GemvLinear.fits(weight) else fallback(weight)

    return make


def _quantized(module: nn.Module, make: Callable[[torch.Tensor], nn.Module]) -> nn.Module:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"cannot quantize {type(module).__name__}: not a plain linear layer")
    return make(weight)


@torch.no_grad()
def quantize_int8(model: CSM, mode: str = "int8", gemv: bool = False) -> int:
    """Replace the projections (after :func:`~csm_service.model.fuse.fuse_projections`, unpacked)
    with :class:`Int8GemvLinear` where ``gemv`` (our kernels loaded:
    :func:`~csm_service.model.gemv.gemv_available`), else :class:`Int8Linear` (``int8``) or
    :class:`Int8DynamicLinear` (``int8_dynamic``) -> the number of weights quantized."""
    if gemv:
        makers = {"int8": _int8_gemv(False, Int8Linear), "int8_dynamic": _int8_gemv(True, Int8DynamicLinear)}
    else:
        makers = {"int8": Int8Linear, "int8_dynamic": Int8DynamicLinear}
    make: Callable[[torch.Tensor], nn.Module] = makers[mode]
    count = 0
    for stack in (model.backbone, model.decoder):
        for block in stack.layers:
            attn, mlp = block.attn, block.mlp
            if attn.qkv is None or mlp.gate_up is None:
                raise RuntimeError("fuse the projections before quantizing them")
            attn.qkv, attn.o_proj = _quantized(attn.qkv, make), _quantized(attn.o_proj, make)
            mlp.gate_up, mlp.down_proj = _quantized(mlp.gate_up, make), _quantized(mlp.down_proj, make)
            count += 4
    model.projection = _quantized(model.projection, make)
    kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Int8")})
    log.info("%s: %d projections quantized with %s (embeddings and heads unchanged)", mode, count + 1, ", ".join(kinds))
    return count + 1
