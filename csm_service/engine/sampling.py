"""Temperature + top-k sampling with counter-based noise: no host sync, no shared RNG state.

Each draw is ``argmax(probs / E)`` with ``E ~ Exp(1)`` (the reference's exponential race). The
uniforms behind ``E`` are a hash of (request seed, frame index, codebook, vocabulary index), so a
request's codes depend only on its own seed and frame -- never on its batch neighbours or on how
many other requests ran before it -- and the whole draw is plain tensor arithmetic that a CUDA
graph can capture.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding 32-bit values (wrapping products)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def frame_noise(seeds: torch.Tensor, frames: torch.Tensor, num_codebooks: int, vocab_size: int) -> torch.Tensor:
    """seeds, frames [B] int64 -> uniforms in (0, 1) [B, num_codebooks, vocab_size] float32.

    All of a frame's draws in one go: the value for (codebook c, index v) is the same as
    ``uniform_noise(seeds, frames, c, vocab_size)[:, v]``.
    """
    seed_lo, seed_hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    codebooks = torch.arange(num_codebooks, device=seeds.device, dtype=torch.int64)  # [K]
    counter = (frames.unsqueeze(1) * 64 + codebooks) & _MASK32  # [B, K]
    key = _fmix32(seed_lo.unsqueeze(1) ^ _fmix32(seed_hi.unsqueeze(1) ^ _fmix32(counter)))  # [B, K]
    index = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)  # [V]
    h = _fmix32(key.unsqueeze(2) ^ _fmix32((index + 0x9E3779B9) & _MASK32))  # [B, K, V]
    return (h.to(torch.float64) + 0.5).div(2.0**32).to(torch.float32)


def uniform_noise(seeds: torch.Tensor, frames: torch.Tensor, codebook: int, vocab_size: int) -> torch.Tensor:
    """seeds, frames [B] int64 -> uniforms in (0, 1) [B, vocab_size] float32 for one codebook."""
    return frame_noise(seeds, frames, codebook + 1, vocab_size)[:, codebook]


def sample_topk(
    logits: torch.Tensor,  # [B, V] float32
    temperature: torch.Tensor,  # [B] float32, > 0
    top_k: torch.Tensor,  # [B] int64, 1..V
    noise: torch.Tensor,  # [B, V] uniforms in (0, 1)
) -> torch.Tensor:
    """-> sampled ids [B] int64. top_k == 1 is greedy (argmax)."""
    scaled = logits / temperature.unsqueeze(1)
    sorted_desc = scaled.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(1, (top_k - 1).clamp(0, logits.shape[-1] - 1).unsqueeze(1))  # [B, 1]
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    exp_noise = -torch.log(noise)  # Exp(1)
    return torch.argmax(probs / exp_noise, dim=-1)
