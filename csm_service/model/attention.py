"""Grouped-query attention over the static KV cache, in two formulations of the same arithmetic.

Every query row attends to the cache positions at or before its own position (each batch row has
its own length), so the mask is per row, not a plain causal triangle.

- ``attend_exact`` (CPU): SDPA with the boolean mask and ``enable_gqa=True``. The reference the
  equivalence tests were written against.
- ``attend_folded`` (CUDA): the same attention in a shape SDPA's fused kernels accept. A boolean
  mask together with ``enable_gqa`` is something the flash kernel never takes (no arbitrary mask)
  and older memory-efficient kernels neither (no GQA), so SDPA fell back to the math kernel: fp32
  upcast, K/V expanded per query head, several kernels per layer. Here the ``G = H / Hkv`` query
  heads that share a KV head are folded into the query-length axis ([B, Hkv, G*S, Dh]), so query
  and key have the same head count and each KV head is read once for its G queries (for a decode
  step, S = 1, that is a G-row attention per KV head: flash-decoding's trick). The mask becomes an
  additive bias repeated over the G query heads, stored with its rows padded to a multiple of 8
  elements, which the memory-efficient kernel requires (otherwise SDPA pads a copy on every call).

The folded form is exact algebra (a reshape of the same dot products), checked against the exact
form on CPU at long contexts (tests/unit/test_attention_gpu_formulation.py); which kernel runs on a
GPU is asserted in tests/gpu/test_attention_backend.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BIAS_ROW_ALIGNMENT = 8  # elements; the memory-efficient kernel's requirement on the bias strides


def causal_mask(positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    """positions [B, S] -> mask [B, 1, S, kv_len] bool, True where key position <= query position."""
    key_positions = torch.arange(kv_len, device=positions.device)  # [L]
    return (key_positions <= positions.unsqueeze(-1)).unsqueeze(1)


def folded_bias(mask: torch.Tensor, num_groups: int, dtype: torch.dtype) -> torch.Tensor:
    """mask [B, 1, S, L] bool -> additive bias [B, 1, G*S, L] (0 or -inf) for folded queries.

    Row g*S + s is the mask of query position s (every query head of a group sees the same mask).
    The storage rows are padded to a multiple of BIAS_ROW_ALIGNMENT; the view hides the padding.
    """
    b, _, s, length = mask.shape
    padded = -(-length // BIAS_ROW_ALIGNMENT) * BIAS_ROW_ALIGNMENT
    storage = torch.zeros(b, 1, num_groups, s, padded, dtype=dtype, device=mask.device)  # [B, 1, G, S, Lp]
    storage[..., :length].masked_fill_(~mask.unsqueeze(2), float("-inf"))
    return storage.view(b, 1, num_groups * s, padded)[..., :length]


def attend_exact(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B, H, S, Dh], keys/values [B, Hkv, L, Dh], mask [B, 1, S, L] bool -> [B, H, S, Dh]."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


def attend_folded(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q [B, H, S, Dh], keys/values [B, Hkv, L, Dh], bias [B, 1, G*S, L] from ``folded_bias`` -> [B, H, S, Dh].

    Query head h uses KV head h // G (what ``enable_gqa`` does), so heads kv*G .. kv*G+G-1 fold
    onto KV head kv.
    """
    b, num_heads, s, head_dim = q.shape
    num_kv_heads = keys.shape[1]
    q_folded = q.reshape(b, num_kv_heads, num_heads // num_kv_heads * s, head_dim)  # [B, Hkv, G*S, Dh]
    out = F.scaled_dot_product_attention(q_folded, keys, values, attn_mask=bias)  # [B, Hkv, G*S, Dh]
    return out.reshape(b, num_heads, s, head_dim)


def uses_folded_attention(device: torch.device) -> bool:
    """The formulation a device runs: folded (fused kernels) on CUDA, exact elsewhere."""
    return device.type == "cuda"
