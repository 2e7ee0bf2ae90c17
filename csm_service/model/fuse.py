"""Inference-time rewrites of a loaded model: fused projections and, on CPU, prepacked weights.

- q/k/v become one projection and gate/up another: fewer, larger matrix-vector products.
- On CPU the weights are reordered once into oneDNN's blocked layout and every projection runs
  through ``mkldnn._linear_pointwise``. A batch-1 frame is a chain of matrix-vector products that
  is bound by how fast weights stream from memory: measured on the 2-core dev machines, an 8192 x
  2048 product reads at ~18 GB/s through the default path and ~33 GB/s (fp32) / ~26 GB/s (bf16)
  prepacked (docs/benchmarks.md).

A prepacked weight is an opaque oneDNN tensor that ``torch.compile`` cannot trace, so inside a
compiled graph the product is the operator ``csm::packed_linear`` (model/handle_ops.py), which
names its weight by a handle (an int) into this module's table: the compiled frame step
(engine/compiled.py) calls the same oneDNN kernel as the eager one, and a codebook's head is the
handle of the first head plus the codebook (a symbolic int), so one graph serves every codebook.

Where our own CPU kernels run (AVX-512 with bf16 dot products and VNNI: model/kernels), a weight
whose shape fits goes to :class:`~csm_service.model.gemv.GemvLinear` instead, which streams faster
than oneDNN's prepacked product (docs/benchmarks.md); oneDNN stays the fallback. ``CSM_CPU_KERNELS=0``
switches ours off.

Applied by the runner after the dtype cast; the model's parameters stay where the loader put them
for anything that needs the plain names.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref

import torch
from torch import nn

from csm_service.model.csm import CSM
from csm_service.model.gemv import GemvHeads, GemvLinear, gemv_fits
from csm_service.model.handle_ops import define_handle_op

log = logging.getLogger(__name__)

_PACKED: dict[int, torch.Tensor] = {}  # handle -> oneDNN weight, while its PackedLinear lives
_handles = itertools.count()
_handle_lock = threading.RLock()  # a PackedHeads' handles are consecutive even if threads pack at once


def _packed_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """x [..., K] @ the prepacked weight ``handle`` [N, K].T -> [..., N]."""
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED[handle], None, "none", [], "")


define_handle_op("packed_linear", _packed_linear)


class PackedLinear(nn.Module):
    """y = x @ W.T with W prepacked for oneDNN (CPU only, no bias)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        with _handle_lock:
            self.handle = next(_handles)
        _PACKED[self.handle] = self.packed
        weakref.finalize(self, _PACKED.pop, self.handle, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.csm.packed_linear(x, self.handle, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


class PackedHeads(nn.Module):
    """The depth decoder's per-codebook heads, prepacked: ``heads(codebook, h)`` -> logits [B, V]."""

    def __init__(self, audio_head: torch.Tensor) -> None:  # [K - 1, d, V]
        super().__init__()
        with _handle_lock:
            self.linears = nn.ModuleList(PackedLinear(w.t()) for w in audio_head)
        self.first_handle = self.linears[0].handle
        self.vocab_size = audio_head.shape[-1]
        if [lin.handle for lin in self.linears] != list(range(self.first_handle, self.first_handle + len(audio_head))):
            raise RuntimeError("packed heads need consecutive handles")

    def forward(self, codebook: int, h: torch.Tensor) -> torch.Tensor:
        """Codebook 1..K-1's logits from decoder hidden h [B, d]."""
        if torch.compiler.is_compiling():  # codebook is symbolic: a handle, not a list index
            return torch.ops.csm.packed_linear(h, self.first_handle + codebook - 1, self.vocab_size)
        return self.linears[codebook - 1](h)


def can_pack_cpu() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Below this size a oneDNN call costs more (~40 us) than the plain product it replaces (test models).
PACK_MIN_ELEMENTS = 1 << 20


def _linear(weight: torch.Tensor, pack: bool, gemv: bool = False) -> nn.Module:
    if pack and gemv and gemv_fits(weight):  # any size: a kernel call costs a few us
        return GemvLinear(weight)
    if pack and weight.numel() >= PACK_MIN_ELEMENTS:
        return PackedLinear(weight)
    out_features, in_features = weight.shape
    with torch.device("meta"):
        linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


@torch.no_grad()
def fuse_projections(model: CSM, pack_cpu: bool, gemv: bool = False) -> None:
    """Fuse q/k/v and gate/up in every block; with ``pack_cpu`` prepack every projection, for our gemv
    kernel where ``gemv`` (loaded: :func:`~csm_service.model.gemv.gemv_available`) and it fits, else
    for oneDNN."""
    pack = pack_cpu and can_pack_cpu()
    for stack in (model.backbone, model.decoder):
        for block in stack.layers:
            attn, mlp = block.attn, block.mlp
            attn.qkv = _linear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]), pack, gemv)
            mlp.gate_up = _linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), pack, gemv)
            del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
            if pack:
                attn.o_proj = _linear(attn.o_proj.weight, pack, gemv)
                mlp.down_proj = _linear(mlp.down_proj.weight, pack, gemv)
    if pack:
        model.projection = _linear(model.projection.weight, pack, gemv)
        pack_heads(model, gemv)
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (GemvLinear, PackedLinear))})
    log.info("fused q/k/v and gate/up projections%s", f"; weights prepacked: {', '.join(kinds)}" if pack else "")


@torch.no_grad()
def pack_heads(model: CSM, gemv: bool = False) -> None:
    """Prepack the codebook heads (codebook 0's, and the depth decoder's per codebook) for our gemv
    kernel or oneDNN."""
    if not can_pack_cpu():
        return
    model.codebook0_head = _linear(model.codebook0_head.weight, True, gemv)
    if gemv and gemv_fits(model.audio_head[0].t()):
        model.packed_heads = GemvHeads(model.audio_head)
        model.audio_head = nn.Parameter(torch.empty(0), requires_grad=False)  # its blocked copies serve
    elif model.audio_head[0].numel() >= PACK_MIN_ELEMENTS:
        model.packed_heads = PackedHeads(model.audio_head)
        model.audio_head = nn.Parameter(torch.empty(0), requires_grad=False)  # its packed copies serve
