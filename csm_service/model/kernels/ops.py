"""The blocked layouts the CPU gemv kernels read, their fake kernels for tracing, and references.

``torch.ops.csm_cpu.gemv_{f32,bf16,int8,w8}`` (gemv.cpp) take a weight reordered once by
:func:`block_weight` into [NB, K / KP, 64, KP] (64 output channels per block, KP inputs per 32-bit
lane), and int8 scales padded to it by :func:`block_scale`. :func:`reference_gemv_int8` is the int8
kernel's arithmetic in plain torch, for the tests.
"""

from __future__ import annotations

import threading

import torch

from csm_service.model.kernels import build

__all__ = [
    "OUTPUTS_PER_BLOCK",
    "INT8_GROUP",
    "block_scale",
    "block_weight",
    "kernels_available",
    "reference_gemv_int8",
    "unblock_weight",
]

OUTPUTS_PER_BLOCK = 64
INT8_GROUP = 64  # inputs per activation scale in gemv_int8
MIN_GROUP_AMAX = 1e-30  # gemv_int8 rounds a group whose largest |x| is at most this to zeros
_KB = {torch.float32: 16, torch.bfloat16: 32, torch.uint8: 64, torch.int8: 64}  # inputs per 64-byte line
# Inputs per 32-bit lane of the kernel's multiply: bf16 pairs (dpbf16), u8 quads (VNNI, gemv_int8);
# int8 weights for gemv_w8 are widened to float32 one input at a time.
_KP = {torch.float32: 1, torch.bfloat16: 2, torch.uint8: 4, torch.int8: 1}


def kernels_available(cache_dir: str = "") -> bool:
    """Build/load the kernels if this CPU can run them (built under ``cache_dir`` when given) ->
    whether they can be used."""
    if not build.load(cache_dir):
        return False
    _register_fakes()
    return True


def fits(weight: torch.Tensor) -> bool:
    """Whether a [N, K] weight of this dtype has a blocked layout (K a multiple of a 64-byte line)."""
    kb = _KB.get(weight.dtype)
    return kb is not None and weight.dim() == 2 and weight.shape[1] % kb == 0 and min(weight.shape) > 0


def block_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [N, K] (float32, bfloat16, uint8 or int8) -> [NB, K / KP, 64, KP], rows zero-padded to
    64 * NB."""
    if not fits(weight):
        raise ValueError(f"no blocked layout for a {tuple(weight.shape)} {weight.dtype} weight")
    n, k = weight.shape
    kp = _KP[weight.dtype]
    nb = -(-n // OUTPUTS_PER_BLOCK)
    return _pad_rows(weight, nb).view(nb, OUTPUTS_PER_BLOCK, k // kp, kp).transpose(1, 2).contiguous()


def unblock_weight(blocked: torch.Tensor, n: int) -> torch.Tensor:
    """[NB, K / KP, 64, KP] -> the [n, K] weight :func:`block_weight` was given (a copy)."""
    nb, kc, outputs, kp = blocked.shape
    return blocked.transpose(1, 2).reshape(nb * outputs, kc * kp)[:n].clone()


def block_scale(scale: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """Per-output scale [N] float32 -> [NB * 64], zero for the padding rows of ``blocked``."""
    return _pad_rows(scale, blocked.shape[0])


def _pad_rows(t: torch.Tensor, nb: int) -> torch.Tensor:
    """t [N, ...] -> [nb * 64, ...], zeros after row N."""
    padded = t.new_zeros((nb * OUTPUTS_PER_BLOCK, *t.shape[1:]))
    padded[: len(t)] = t
    return padded


_fakes_registered = False
_fakes_lock = threading.Lock()


def _register_fakes() -> None:
    global _fakes_registered
    with _fakes_lock:
        if not _fakes_registered:
            _define_fakes()
            _fakes_registered = True


def _define_fakes() -> None:

    @torch.library.register_fake("csm_cpu::gemv_f32")
    def _f32(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], n))

    @torch.library.register_fake("csm_cpu::gemv_bf16")
    def _bf16(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], n))

    @torch.library.register_fake("csm_cpu::gemv_int8")
    def _int8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], n))

    @torch.library.register_fake("csm_cpu::gemv_w8")
    def _w8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
        return x.new_empty((x.shape[0], n))


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (xq int8 [M, K], xs float32 [M, K / 64]) as gemv_int8 rounds them."""
    groups = x.reshape(x.shape[0], -1, INT8_GROUP)
    amax = groups.abs().amax(-1)
    xs = torch.where(amax > MIN_GROUP_AMAX, amax / 127.0, torch.ones_like(amax))
    inv = (1.0 / xs)[..., None]
    xq = torch.round(groups * inv).to(torch.int8)
    return xq.reshape(x.shape), xs


def reference_gemv_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gemv_int8's result in float64: x [M, K] float32, q int8 [N, K], scale [N] -> [M, N]."""
    xq, xs = quantize_activations(x)
    m, k = x.shape
    dots = torch.einsum(
        "mgk,ngk->mng", xq.double().view(m, -1, INT8_GROUP), q.double().view(q.shape[0], -1, INT8_GROUP)
    )
    return (dots * xs.double()[:, None, :]).sum(-1) * scale.double()
