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
_INV_2_24 = 1.0 / (1 << 24)


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
    ``uniform_noise(seeds, frames, c, vocab_size)[:, v]``. Each uniform is ``(2m + 1) / 2^24`` for
    the hash's top 23 bits ``m``: exact in float32, so never 0.0 and never 1.0 (a float64 value
    cast to float32 can round up to 1.0).
    """
    seed_lo, seed_hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    codebooks = torch.arange(num_codebooks, device=seeds.device, dtype=torch.int64)  # [K]
    counter = (frames.unsqueeze(1) * 64 + codebooks) & _MASK32  # [B, K]
    key = _fmix32(seed_lo.unsqueeze(1) ^ _fmix32(seed_hi.unsqueeze(1) ^ _fmix32(counter)))  # [B, K]
    index = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)  # [V]
    h = _fmix32(key.unsqueeze(2) ^ _fmix32((index + 0x9E3779B9) & _MASK32))  # [B, K, V]
    return hash_to_uniform(h)


def hash_to_uniform(h: torch.Tensor) -> torch.Tensor:
    """32-bit hash values (int64) -> float32 uniforms ``(2m + 1) / 2^24``, m = the top 23 bits."""
    odd = (h >> 9) * 2 + 1  # 1 .. 2^24 - 1, exactly representable in float32
    return odd.to(torch.float32) * _INV_2_24


def uniform_noise(seeds: torch.Tensor, frames: torch.Tensor, codebook: int, vocab_size: int) -> torch.Tensor:
    """seeds, frames [B] int64 -> uniforms in (0, 1) [B, vocab_size] float32 for one codebook."""
    return frame_noise(seeds, frames, codebook + 1, vocab_size)[:, codebook]


def sample_topk(
    logits: torch.Tensor,  # [B, V] float32
    temperature: torch.Tensor,  # [B] float32, > 0
    top_k: torch.Tensor,  # [B] int64, 1..V
    noise: torch.Tensor,  # [B, V] uniforms in [0, 1]; exact 0.0 and 1.0 are handled
) -> torch.Tensor:
    """-> sampled ids [B] int64, always inside the top k. top_k == 1 is exactly argmax.

    The race ``argmax(p / E)`` with ``E = -log(u) ~ Exp(1)``: ``u = 1`` gives ``E = -0.0`` and
    ``u = 0`` gives ``E = inf``, so ``E`` is clamped to ``[tiny, inf]`` (no 0/0, no p/-0) and tokens
    outside the top k score -1, below every candidate's ``p / E >= 0``: no NaN can win the argmax.
    """
    scaled = logits / temperature.unsqueeze(1)  # [B, V]
    k = top_k.clamp(1, logits.shape[-1])
    if torch.compiler.is_compiling():  # Inductor has no CPU sort: count instead (same candidates)
        is_candidate = _at_least_kth_largest(scaled, k)
    else:
        kth = scaled.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))  # [B, 1]
        is_candidate = scaled >= kth  # [B, V]
    probs = torch.softmax(scaled.masked_fill(~is_candidate, float("-inf")), dim=-1)  # [B, V]
    exp_noise = (-torch.log(noise)).clamp_min(torch.finfo(torch.float32).tiny)  # Exp(1), in [tiny, inf]
    score = torch.where(is_candidate, probs / exp_noise, -1.0)  # [B, V]
    drawn = torch.argmax(score, dim=-1)  # [B]
    return torch.where(top_k == 1, torch.argmax(scaled, dim=-1), drawn)


_DIGIT_BITS = 2  # the threshold is found 2 bits at a time: 16 passes of 3 compares per element


def _at_least_kth_largest(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x [B, V] float32, k [B] in 1..V -> mask [B, V]: x >= the k-th largest of its row, exactly
    what sorting finds, without a sort (ties count as in a sort).

    Each float maps to an unsigned 32-bit key in the same order (negative floats have their
    magnitude bits flipped; -0.0 is first made +0.0, which sort treats as equal). The k-th largest
    key is the largest ``t`` with at least k keys >= t; it is built 2 bits at a time, from the top:
    of the 4 values the next digit can take, the largest that keeps k keys at or above ``t`` wins.
    Each of the 16 passes is one fused compare-and-count over the row (fewer, wider passes compile
    faster; narrower ones do less work. Tiny model, 8 rows, 2 cores: 1 bit compiled in 109 s and ran
    a frame in 54 ms, 2 bits 87 s and 52 ms, 4 bits 74 s and 67 ms).
    """
    bits = (x + 0.0).view(torch.int32)  # + 0.0: -0.0 -> +0.0
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64) + 2**31  # [B, V] in [0, 2^32)
    digits = torch.arange(1, 1 << _DIGIT_BITS, device=x.device, dtype=torch.int64)  # [3]: digit 0 always holds
    threshold = torch.zeros_like(k)  # [B]: every key is >= 0, and V >= k
    for shift in range(32 - _DIGIT_BITS, -1, -_DIGIT_BITS):
        candidates = threshold.unsqueeze(1) + (digits << shift)  # [B, 3]
        counts = (keys.unsqueeze(1) >= candidates.unsqueeze(2)).sum(dim=2)  # [B, 3], non-increasing
        digit = (counts >= k.unsqueeze(1)).sum(dim=1)  # the largest digit keeping k keys at or above
        threshold = threshold + (digit << shift)
    return keys >= threshold.unsqueeze(1)
