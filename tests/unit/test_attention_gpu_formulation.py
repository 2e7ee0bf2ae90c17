"""The CUDA attention formulation (GQA folded into the query axis, additive bias) computes what the
exact CPU path computes: run here on CPU, fp32, at contexts of 300+ positions, for a prefill
(S > 1) and for batched decode steps (S = 1, each row at its own length); and as the whole model,
the codes are identical to the exact path's (which the equivalence tests hold to transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_service.config import TINY
from csm_service.core.request import Segment
from csm_service.engine.prompt import build_prompt
from csm_service.engine.runner import ModelRunner
from csm_service.model.attention import (
    BIAS_ROW_ALIGNMENT,
    attend_exact,
    attend_folded,
    causal_mask,
    folded_bias,
    uses_folded_attention,
)
from csm_service.model.loader import build_tiny_random
from csm_service.model.tokenizer import ByteTokenizer

# (heads, kv heads, head dim): CSM-1B's backbone and depth decoder
SHAPES = [(32, 8, 64), (8, 2, 128)]


def _qkv(batch: int, heads: int, kv_heads: int, head_dim: int, s: int, kv_len: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, s, head_dim, generator=g)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=g)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=g)
    return q, k, v


def _compare(q, k, v, positions: torch.Tensor, kv_len: int) -> None:
    mask = causal_mask(positions, kv_len)  # [B, 1, S, L]
    bias = folded_bias(mask, q.shape[1] // k.shape[1], q.dtype)
    assert bias.stride(-1) == 1 and all(st % BIAS_ROW_ALIGNMENT == 0 for st in bias.stride()[:-1])
    exact = attend_exact(q, k, v, mask)
    folded = attend_folded(q, k, v, bias)
    assert folded.shape == exact.shape
    torch.testing.assert_close(folded, exact, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("heads,kv_heads,head_dim", SHAPES)
def test_decode_step_rows_at_their_own_lengths(heads, kv_heads, head_dim):
    kv_len = 421  # not a multiple of the bias alignment: the padded storage is exercised
    positions = torch.tensor([[420], [7], [311], [0]])  # [B, 1]: one position per row
    q, k, v = _qkv(4, heads, kv_heads, head_dim, 1, kv_len, seed=heads)
    _compare(q, k, v, positions, kv_len)


@pytest.mark.parametrize("heads,kv_heads,head_dim", SHAPES)
def test_prefill_long_prompt(heads, kv_heads, head_dim):
    kv_len = 333
    positions = torch.arange(kv_len).unsqueeze(0)  # [1, S]: a whole prompt from position 0
    q, k, v = _qkv(1, heads, kv_heads, head_dim, kv_len, kv_len, seed=1)
    _compare(q, k, v, positions, kv_len)


def test_prefill_after_a_cached_prefix_batched():
    # two rows continuing at different offsets (a prefix already in the cache), 40 new positions each
    kv_len = 360
    positions = torch.stack([torch.arange(300, 340), torch.arange(320, 360)])  # [2, 40]
    q, k, v = _qkv(2, 32, 8, 64, 40, kv_len, seed=2)
    _compare(q, k, v, positions, kv_len)


def test_device_selects_the_formulation():
    assert uses_folded_attention(torch.device("cuda"))
    assert not uses_folded_attention(torch.device("cpu"))


def _prompt() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    context = (Segment(1, "What a lovely day it is today.", rng.integers(0, 2048, (32, 300))),)
    tokens, mask = build_prompt(ByteTokenizer(), context, "Hello from the other side.", 0, TINY.num_codebooks)
    assert tokens.shape[0] > 300
    return tokens, mask


def _runner(folded: bool) -> ModelRunner:
    model = build_tiny_random(seed=1)
    model.backbone.folded_attention = folded
    model.decoder.folded_attention = folded
    return ModelRunner(model, max_batch=2, device=torch.device("cpu"), dtype=torch.float32)


def test_whole_model_folded_equals_exact():
    """Prefill + batched steps of the whole model: codes identical, hiddens equal to rounding. The
    exact path is the one tests/unit/test_equivalence_hf.py holds to transformers' codes."""
    tokens, mask = _prompt()
    exact, folded = _runner(False), _runner(True)
    for runner in (exact, folded):
        runner.prefill(0, tokens, mask, seed=123, temperature=0.9, top_k=1)  # greedy
        runner.prefill(1, tokens[:-40], mask[:-40], seed=7, temperature=0.9, top_k=50)  # a shorter row beside it
    torch.testing.assert_close(folded.hidden, exact.hidden, rtol=1e-5, atol=1e-5)
    for i in range(8):
        kv_len = tokens.shape[0] + i + 1
        codes_folded = folded.step(2, kv_len).clone()
        codes_exact = exact.step(2, kv_len).clone()
        assert torch.equal(codes_folded, codes_exact), i
        torch.testing.assert_close(folded.hidden, exact.hidden, rtol=1e-4, atol=1e-5)
