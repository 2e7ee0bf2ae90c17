"""Hugging Face transformers' ``CsmForConditionalGeneration`` configured exactly like ours.

transformers is a test/benchmark dependency, imported only inside these functions. Note the RoPE
pitfall: transformers' CsmConfig defaults to unscaled RoPE, but CSM-1B uses Llama-3 scaling; the
parameters below are the same curve as torchtune's factor 32 / low 1 / high 4 / original 8192.
"""

from __future__ import annotations

import torch

from csm_service.config import CsmConfig

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 0.125,
    "high_freq_factor": 0.5,
    "original_max_position_embeddings": 1024,
}


def hf_config(cfg: CsmConfig):  # noqa: ANN201 - transformers.CsmConfig, imported lazily
    from transformers import CsmConfig as HFCsmConfig

    b, d = cfg.backbone, cfg.decoder
    return HFCsmConfig(
        num_codebooks=cfg.num_codebooks,
        vocab_size=cfg.audio_vocab_size,
        text_vocab_size=cfg.text_vocab_size,
        hidden_size=b.dim,
        intermediate_size=b.mlp_dim,
        num_hidden_layers=b.num_layers,
        num_attention_heads=b.num_heads,
        num_key_value_heads=b.num_kv_heads,
        head_dim=b.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=b.norm_eps,
        rope_parameters=dict(LLAMA3_ROPE),
        depth_decoder_config={
            "num_codebooks": cfg.num_codebooks,
            "backbone_hidden_size": b.dim,
            "vocab_size": cfg.audio_vocab_size,
            "hidden_size": d.dim,
            "intermediate_size": d.mlp_dim,
            "num_hidden_layers": d.num_layers,
            "num_attention_heads": d.num_heads,
            "num_key_value_heads": d.num_kv_heads,
            "head_dim": d.head_dim,
            "max_position_embeddings": cfg.num_codebooks + 1,
            "rms_norm_eps": d.norm_eps,
            "rope_parameters": dict(LLAMA3_ROPE),
        },
    )


def build_hf_model(cfg: CsmConfig, seed: int = 0, init_std_scale: float = 2.0):  # noqa: ANN201
    """CsmForConditionalGeneration with seeded random weights, float32, eval mode."""
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(hf_config(cfg)).eval()
    with torch.no_grad():  # larger-than-default weights so logits are well separated
        for name, param in model.named_parameters():
            if name.startswith("codec_model."):
                continue
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) * init_std_scale / param.shape[-1] ** 0.5)
    return model
