"""RoPE: our Llama-3 scaled frequencies vs transformers', and the interleaved -> halves permutation
vs torchtune's interleaved rotation (Sesame's layout), computed independently here."""

from __future__ import annotations

import torch

from csm_service.config import CSM_1B
from csm_service.model.checkpoint import interleaved_to_halves
from csm_service.model.rope import apply_rope, llama3_inv_freq, rope_tables
from tests.hf_reference import LLAMA3_ROPE


def test_llama3_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = CSM_1B.backbone
    hf_cfg = LlamaConfig(
        hidden_size=cfg.dim, num_attention_heads=cfg.num_heads, head_dim=cfg.head_dim, rope_parameters=dict(LLAMA3_ROPE)
    )
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    torch.testing.assert_close(llama3_inv_freq(cfg), hf_inv_freq.float(), rtol=1e-6, atol=0)
    # and scaling really changes something (an unscaled table would not match)
    unscaled = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    assert not torch.allclose(unscaled, llama3_inv_freq(cfg))


def _torchtune_interleaved_rope(x: torch.Tensor, inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [S, H, Dh] rotated pairwise (x[2i], x[2i+1]) as torchtune's RotaryPositionalEmbeddings does."""
    angles = positions[:, None].float() * inv_freq[None, :]  # [S, Dh/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    pairs = x.view(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)


def test_sesame_qk_permutation_equals_interleaved_rope():
    cfg = CSM_1B.decoder
    heads, dh, dim = cfg.num_heads, cfg.head_dim, 96
    torch.manual_seed(0)
    w_sesame = torch.randn(heads * dh, dim)
    x = torch.randn(700, dim)
    positions = torch.arange(700)
    # Sesame's way: project with the original weight, rotate interleaved pairs.
    q_sesame = _torchtune_interleaved_rope((x @ w_sesame.T).view(700, heads, dh), llama3_inv_freq(cfg), positions)
    # Ours: permuted weight, halves rotation.
    cos, sin = rope_tables(cfg, 700)
    q_ours = (x @ interleaved_to_halves(w_sesame, heads).T).view(700, heads, dh).transpose(0, 1)  # [H, S, Dh]
    q_ours = apply_rope(q_ours.unsqueeze(0), cos[None, None], sin[None, None])[0].transpose(0, 1)  # [S, H, Dh]
    # Same vectors up to the per-head permutation of dimensions: compare attention scores.
    scores_sesame = torch.einsum("shd,thd->hst", q_sesame, q_sesame)
    scores_ours = torch.einsum("shd,thd->hst", q_ours, q_ours)
    torch.testing.assert_close(scores_ours, scores_sesame, rtol=1e-4, atol=1e-3)
