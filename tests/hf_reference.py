"""Hugging Face transformers' CSM as an independent reference, built on identical random weights.

Also writes the same weights in Sesame's original naming (torchtune's interleaved RoPE layout), so
the loader is tested on both published namings.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from csm_service.config import CsmConfig
from csm_service.tools.peers.transformers_csm import LLAMA3_ROPE, build_hf_model, hf_config  # noqa: F401

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def halves_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    out_dim, in_dim = weight.shape
    return weight.view(num_heads, 2, out_dim // num_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def sesame_state_dict(hf_model, cfg: CsmConfig) -> dict[str, torch.Tensor]:
    """The HF model's weights under Sesame's original names and RoPE layout."""
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items() if not k.startswith("codec_model.")}
    out = {
        "text_embeddings.weight": sd["embed_text_tokens.weight"],
        "audio_embeddings.weight": sd["backbone_model.embed_tokens.embed_audio_tokens.weight"],
        "projection.weight": sd["depth_decoder.model.inputs_embeds_projector.weight"],
        "codebook0_head.weight": sd["lm_head.weight"],
        "audio_head": sd["depth_decoder.codebooks_head.weight"],
        "backbone.norm.scale": sd["backbone_model.norm.weight"],
        "decoder.norm.scale": sd["depth_decoder.model.norm.weight"],
    }
    names = {
        "self_attn.o_proj.weight": "attn.output_proj.weight",
        "self_attn.v_proj.weight": "attn.v_proj.weight",
        "mlp.gate_proj.weight": "mlp.w1.weight",
        "mlp.down_proj.weight": "mlp.w2.weight",
        "mlp.up_proj.weight": "mlp.w3.weight",
        "input_layernorm.weight": "sa_norm.scale",
        "post_attention_layernorm.weight": "mlp_norm.scale",
    }
    for stack, prefix, tcfg in (
        ("backbone", "backbone_model", cfg.backbone),
        ("decoder", "depth_decoder.model", cfg.decoder),
    ):
        for i in range(tcfg.num_layers):
            src = f"{prefix}.layers.{i}."
            dst = f"{stack}.layers.{i}."
            for hf_name, ses_name in names.items():
                out[dst + ses_name] = sd[src + hf_name]
            out[dst + "attn.q_proj.weight"] = halves_to_interleaved(sd[src + "self_attn.q_proj.weight"], tcfg.num_heads)
            out[dst + "attn.k_proj.weight"] = halves_to_interleaved(
                sd[src + "self_attn.k_proj.weight"], tcfg.num_kv_heads
            )
    return out


def write_checkpoints(hf_model, cfg: CsmConfig, root: Path) -> tuple[Path, Path]:
    """-> (transformers-named directory, Sesame-named ckpt.pt)."""
    hf_dir = root / "hf"
    hf_model.save_pretrained(hf_dir)
    ses_dir = root / "sesame"
    ses_dir.mkdir(parents=True, exist_ok=True)
    torch.save(sesame_state_dict(hf_model, cfg), ses_dir / "ckpt.pt")
    return hf_dir, ses_dir / "ckpt.pt"


@torch.no_grad()
def hf_prompt_embeds(hf_model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tokens, mask [S, 33] -> HF's input embeddings [1, S, D] (text rows / audio rows)."""
    is_text = mask[:, -1]
    text = hf_model.embed_text_tokens(tokens[:, -1])  # [S, D]
    audio = hf_model.backbone_model.embed_tokens(tokens[None, :, :-1])[0]  # [S, D]
    return torch.where(is_text[:, None], text, audio).unsqueeze(0)


@torch.no_grad()
def hf_greedy_frames(hf_model, tokens: torch.Tensor, mask: torch.Tensor, num_frames: int):
    """Greedy CSM decoding with HF's modules, no cache. -> (codes [F, K], c0 logits [F, V], depth logits [F, K-1, V])."""
    embeds = hf_prompt_embeds(hf_model, tokens, mask)
    num_codebooks = tokens.shape[1] - 1
    frames, c0_logits, depth_logits = [], [], []
    for _ in range(num_frames):
        h = hf_model.backbone_model(inputs_embeds=embeds).last_hidden_state[:, -1]  # [1, D]
        logits0 = hf_model.lm_head(h)
        ids = [int(logits0.argmax(-1))]
        per_codebook = []
        for _ in range(1, num_codebooks):
            dd_ids = torch.tensor([[0, *ids]])
            logits = hf_model.depth_decoder(input_ids=dd_ids, backbone_last_hidden_state=h).logits[:, -1]
            per_codebook.append(logits[0])
            ids.append(int(logits.argmax(-1)))
        frame = torch.tensor(ids)
        frames.append(frame)
        c0_logits.append(logits0[0])
        depth_logits.append(torch.stack(per_codebook))
        next_embed = hf_model.backbone_model.embed_tokens(frame.view(1, 1, -1))  # [1, 1, D]
        embeds = torch.cat([embeds, next_embed], dim=1)
    return torch.stack(frames), torch.stack(c0_logits), torch.stack(depth_logits)
