"""int8 weight-only quantization of the transformer projections (``--quantize int8``, CPU).

Every projection of the backbone and the depth decoder, and the backbone-to-decoder projection,
keeps its weight as int8 with one scale per output channel (symmetric: ``w ~ q * scale``,
``q`` in [-127, 127]) and multiplies through torch's own weight-only int8 kernel
(``torch._weight_int8pack_mm``: activations stay in the model dtype, the int8 weight is widened
inside the kernel). A frame step reads each weight once per call, so halving the bytes against
bf16 (a quarter against fp32) is what a memory-bound CPU step needs. The embeddings and the
codebook heads stay as they are: they are a small share of the reads and set the logits directly.

The kernel exists for CPU (and Apple's MPS), not CUDA; the engine refuses ``int8`` elsewhere.
Default off: how far the codes drift from bf16 can only be judged on trained weights
(docs/benchmarks.md reports the logit deviation and greedy-code agreement on random ones).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from csm_service.config import QUANT_MODES
from csm_service.model.csm import CSM

__all__ = ["QUANT_MODES", "Int8Linear", "quantize_int8"]

log = logging.getLogger(__name__)

INT8_MAX = 127


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T with q int8 [N, K] and scale [N] in the activations' dtype (no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:  # weight [N, K]
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # [N]
        self.register_buffer("weight_int8", (w / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N]
        flat = x.reshape(-1, self.in_features)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def _quantized(module: nn.Module) -> nn.Module:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"cannot quantize {type(module).__name__}: not a plain linear layer")
    return Int8Linear(weight)


@torch.no_grad()
def quantize_int8(model: CSM) -> int:
    """Replace the projections (after :func:`~csm_service.model.fuse.fuse_projections`, unpacked)
    with :class:`Int8Linear` -> the number of weights quantized."""
    count = 0
    for stack in (model.backbone, model.decoder):
        for block in stack.layers:
            attn, mlp = block.attn, block.mlp
            if attn.qkv is None or mlp.gate_up is None:
                raise RuntimeError("fuse the projections before quantizing them")
            attn.qkv, attn.o_proj = _quantized(attn.qkv), _quantized(attn.o_proj)
            mlp.gate_up, mlp.down_proj = _quantized(mlp.gate_up), _quantized(mlp.down_proj)
            count += 4
    model.projection = _quantized(model.projection)
    log.info("int8 weight-only: %d projections quantized (embeddings and heads unchanged)", count + 1)
    return count + 1
