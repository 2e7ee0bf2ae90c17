"""Llama-3.2-style decoder stack with grouped-query attention and a static KV cache.

The KV cache holds only the KV heads, laid out [max_batch, max_positions, num_kv_heads, head_dim]
so that batch row == engine slot. Every call names the cache rows it works on (one slot for a
prefill, the first B slots for a batched step), the absolute position of each input, and
``kv_len``, the number of cache positions attention reads (the filled prefix). Attention itself
is in :mod:`csm_service.model.attention` (exact on CPU, a fused-kernel formulation on CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from csm_service.config import TransformerConfig
from csm_service.model.attention import (
    attend_exact,
    attend_folded,
    causal_mask,
    folded_bias,
    uses_folded_attention,
)
from csm_service.model.rope import apply_rope, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op; same arithmetic as below
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache(nn.Module):
    """Static keys and values of one layer: [max_batch, max_positions, num_kv_heads, head_dim]."""

    def __init__(
        self, max_batch: int, max_positions: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        super().__init__()
        shape = (max_batch, max_positions, num_kv_heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def write(self, rows: slice, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """positions [B, S]; k, v [B, S, Hkv, Dh] written at those positions of the rows."""
        batch_index = torch.arange(positions.shape[0], device=positions.device)[:, None]  # [B, 1]
        self.k[rows].index_put_((batch_index, positions), k)
        self.v[rows].index_put_((batch_index, positions), v)

    def read(self, rows: slice, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> keys, values [B, Hkv, kv_len, Dh] (views, no copy)."""
        return self.k[rows, :kv_len].transpose(1, 2), self.v[rows, :kv_len].transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        self.qkv: nn.Module | None = None  # q, k, v fused into one projection by fuse_projections()

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, S, D] -> q [B, S, H*Dh], k, v [B, S, Hkv*Dh]."""
        if self.qkv is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)

    def forward(
        self,
        x: torch.Tensor,  # [B, S, D]
        cos: torch.Tensor,  # [B, 1, S, Dh]
        sin: torch.Tensor,  # [B, 1, S, Dh]
        mask: torch.Tensor,  # [B, 1, S, kv_len] bool (exact) or [B, 1, G*S, kv_len] additive bias (folded)
        cache: KVCache,
        rows: slice,
        positions: torch.Tensor,  # [B, S]
        kv_len: int,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.project_qkv(x)
        q = q.reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, s, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, s, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin)  # [B, H, S, Dh]
        k = apply_rope(k.transpose(1, 2), cos, sin).transpose(1, 2)  # [B, S, Hkv, Dh]
        cache.write(rows, positions, k, v)
        keys, values = cache.read(rows, kv_len)  # [B, Hkv, L, Dh]
        attend = attend_exact if mask.dtype == torch.bool else attend_folded
        out = attend(q, keys, values, mask)  # [B, H, S, Dh]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.dim, bias=False)
        self.gate_up: nn.Module | None = None  # gate and up fused by fuse_projections()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)


class Transformer(nn.Module):
    """A stack of blocks + final norm; no embeddings or output head (CSM supplies its own)."""

    def __init__(self, cfg: TransformerConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_positions = max_positions
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.register_buffer("rope_cos", torch.empty(max_positions, cfg.head_dim), persistent=False)  # [P, Dh]
        self.register_buffer("rope_sin", torch.empty(max_positions, cfg.head_dim), persistent=False)
        self.caches = nn.ModuleList()
        self.folded_attention: bool | None = None  # None: by device (folded on CUDA); tests force either
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the RoPE tables, e.g. after building on the meta device."""
        cos, sin = rope_tables(self.cfg, self.max_positions)
        device = device if device is not None else self.rope_cos.device
        if torch.device(device).type != "meta":
            self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def setup_caches(self, max_batch: int, dtype: torch.dtype, device: torch.device) -> None:
        cfg = self.cfg
        self.caches = nn.ModuleList(
            KVCache(max_batch, self.max_positions, cfg.num_kv_heads, cfg.head_dim, dtype).to(device)
            for _ in range(cfg.num_layers)
        )

    def forward(
        self,
        x: torch.Tensor,  # [B, S, D]
        positions: torch.Tensor,  # [B, S] absolute positions, int64
        rows: slice,  # cache rows (== engine slots) of this batch
        kv_len: int,  # cache positions attention reads: max(positions) < kv_len
    ) -> torch.Tensor:
        cos = self.rope_cos[positions].to(x.dtype).unsqueeze(1)  # [B, 1, S, Dh]
        sin = self.rope_sin[positions].to(x.dtype).unsqueeze(1)
        mask = causal_mask(positions, kv_len)  # [B, 1, S, L] bool, shared by every layer
        folded = self.folded_attention if self.folded_attention is not None else uses_folded_attention(x.device)
        if folded:
            mask = folded_bias(mask, self.cfg.num_heads // self.cfg.num_kv_heads, x.dtype)  # [B, 1, G*S, L]
        for block, cache in zip(self.layers, self.caches, strict=True):
            h = block.attn_norm(x)
            x = x + block.attn(h, cos, sin, mask, cache, rows, positions, kv_len)
            x = x + block.mlp(block.mlp_norm(x))
        return self.norm(x)
