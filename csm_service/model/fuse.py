"""Inference-time rewrites of a loaded model: fused projections and, on CPU, prepacked weights.

- q/k/v become one projection and gate/up another: fewer, larger matrix-vector products.
- On CPU the weights are reordered once into oneDNN's blocked layout and every projection runs
  through ``mkldnn._linear_pointwise``. A batch-1 frame is a chain of matrix-vector products that
  is bound by how fast weights stream from memory: measured on the 2-core dev machines, an 8192 x
  2048 product reads at ~18 GB/s through the default path and ~33 GB/s (fp32) / ~26 GB/s (bf16)
  prepacked (docs/benchmarks.md).

Applied by the runner after the dtype cast; the model's parameters stay where the loader put them
for anything that needs the plain names.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from csm_service.model.csm import CSM

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """y = x @ W.T with W prepacked for oneDNN (CPU only, no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def can_pack_cpu() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Below this size a oneDNN call costs more (~40 us) than the plain product it replaces (test models).
PACK_MIN_ELEMENTS = 1 << 20


def _linear(weight: torch.Tensor, pack: bool) -> nn.Module:
    if pack and weight.numel() >= PACK_MIN_ELEMENTS:
        return PackedLinear(weight)
    out_features, in_features = weight.shape
    with torch.device("meta"):
        linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


@torch.no_grad()
def fuse_projections(model: CSM, pack_cpu: bool) -> None:
    """Fuse q/k/v and gate/up in every block; with ``pack_cpu`` prepack every projection."""
    pack = pack_cpu and can_pack_cpu()
    for stack in (model.backbone, model.decoder):
        for block in stack.layers:
            attn, mlp = block.attn, block.mlp
            attn.qkv = _linear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), pack)
            mlp.gate_up = _linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), pack)
            del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
            if pack:
                attn.o_proj = _linear(attn.o_proj.weight, pack)
                mlp.down_proj = _linear(mlp.down_proj.weight, pack)
    if pack:
        model.projection = _linear(model.projection.weight, pack)
        model.codebook0_head = _linear(model.codebook0_head.weight, pack)
        model.audio_head_linears = [_linear(w.t(), pack) for w in model.audio_head]
        model.audio_head = nn.Parameter(torch.empty(0), requires_grad=False)  # its packed copies serve
    log.info("fused q/k/v and gate/up projections%s", "; weights prepacked for oneDNN" if pack else "")
