"""Llama-3 scaled rotary position embeddings, in the "halves" layout (rotate_half).

Sesame's checkpoints use torchtune's interleaved layout; the loader permutes their q/k projection
rows into halves once at load time, so the model has one RoPE layout at run time.
"""

from __future__ import annotations

import math

import torch

from csm_service.config import TransformerConfig


def llama3_inv_freq(cfg: TransformerConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] with Llama-3's long-context scaling applied."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    old_len = cfg.rope_original_max_positions
    low_wavelen = old_len / cfg.rope_low_freq_factor
    high_wavelen = old_len / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.rope_scale_factor, inv_freq)
    smooth = (old_len / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.rope_scale_factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled).to(torch.float32)


def rope_tables(cfg: TransformerConfig, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_positions, head_dim] (each frequency repeated for both halves)."""
    inv_freq = llama3_inv_freq(cfg)  # [Dh/2]
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # [P, Dh/2]
    angles = torch.cat([angles, angles], dim=-1)  # [P, Dh]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, Dh]; cos, sin [B, 1, S, Dh] -> x rotated, same shape and dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
