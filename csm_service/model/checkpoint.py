"""Checkpoint reading and the two published namings of CSM weights.

- Sesame's original (``backbone.layers.N.attn.q_proj.weight``, ``...sa_norm.scale``,
  ``audio_head``): torchtune's interleaved RoPE layout, so q/k rows are permuted to halves here.
- Hugging Face transformers' (``backbone_model.*``, ``depth_decoder.*``, ``lm_head``): already in
  the halves layout.

Both become this package's names (see ``csm.CSM``). A missing or misshaped tensor is a
:class:`CheckpointError` that names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from csm_service.config import CSM_1B, CsmConfig, TransformerConfig


class CheckpointError(ValueError):
    """A checkpoint that cannot become a CSM model (names the tensor or file at fault)."""


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def read_state_dict(paths: Iterable[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors from one or more ``.safetensors`` / ``ckpt.pt``-style files, merged.

    With ``dtype``, floating tensors are cast one at a time as they are read, so the host never
    holds the whole checkpoint twice (e.g. fp32 as stored and bf16 as served: ~6 GB extra for CSM-1B).
    """
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        if path.suffix == ".safetensors":
            _read_safetensors(path, dtype, state)
        elif path.suffix in (".pt", ".pth", ".bin"):
            _read_torch_file(path, dtype, state)
        else:
            raise CheckpointError(f"{path}: unknown weights format (want {', '.join(WEIGHT_SUFFIXES)})")
    return state


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None, copy: bool = False) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(dtype=dtype, copy=copy)
    return tensor.clone() if copy else tensor


def _read_safetensors(path: Path, dtype: torch.dtype | None, into: dict[str, torch.Tensor]) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            into[name] = _cast(f.get_tensor(name), dtype)


def _read_torch_file(path: Path, dtype: torch.dtype | None, into: dict[str, torch.Tensor]) -> None:
    # Memory-mapped, each tensor is read (and cast) when it is copied out: one full copy at most.
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        mapped = True
    except RuntimeError:  # a file in torch's legacy format cannot be mapped
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        mapped = False
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    for name in list(loaded):
        tensor = loaded.pop(name)
        into[name] = _cast(tensor, dtype, copy=mapped) if isinstance(tensor, torch.Tensor) else tensor


def detect_naming(state: dict[str, torch.Tensor]) -> str:
    """'transformers' or 'sesame', from the text-embedding key (as csm.rs does)."""
    if "embed_text_tokens.weight" in state:
        return "transformers"
    if "text_embeddings.weight" in state:
        return "sesame"
    raise CheckpointError(
        "not a CSM checkpoint: neither 'text_embeddings.weight' (Sesame) nor "
        "'embed_text_tokens.weight' (transformers) is present"
    )


def interleaved_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Permute q/k projection rows per head from RoPE pairs (x0,y0,x1,y1..) to halves (x.., y..)."""
    out_dim, in_dim = weight.shape
    return weight.view(num_heads, out_dim // num_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


_SESAME_LAYER = {
    "attn.q_proj.weight": "attn.q_proj.weight",
    "attn.k_proj.weight": "attn.k_proj.weight",
    "attn.v_proj.weight": "attn.v_proj.weight",
    "attn.output_proj.weight": "attn.o_proj.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "sa_norm.scale": "attn_norm.weight",
    "mlp_norm.scale": "mlp_norm.weight",
}
_HF_LAYER = {
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}
_HF_TOP = {
    "embed_text_tokens.weight": "text_embeddings.weight",
    "backbone_model.embed_tokens.embed_audio_tokens.weight": "audio_embeddings.weight",
    "depth_decoder.model.inputs_embeds_projector.weight": "projection.weight",
    "lm_head.weight": "codebook0_head.weight",
    "depth_decoder.codebooks_head.weight": "audio_head",
    "backbone_model.norm.weight": "backbone.norm.weight",
    "depth_decoder.model.norm.weight": "decoder.norm.weight",
}
_SESAME_TOP = {
    "text_embeddings.weight": "text_embeddings.weight",
    "audio_embeddings.weight": "audio_embeddings.weight",
    "projection.weight": "projection.weight",
    "codebook0_head.weight": "codebook0_head.weight",
    "audio_head": "audio_head",
    "backbone.norm.scale": "backbone.norm.weight",
    "decoder.norm.scale": "decoder.norm.weight",
}
_HF_TIED_AUDIO = "depth_decoder.model.embed_tokens.weight"
# Keys that carry no weights of their own: tied copies, codec weights, caches, rotary buffers.
_IGNORED = re.compile(
    r"^(codec_model\.)|"
    r"(\.kv_cache\.|\.cache_pos$|\.rotary_emb\.|pos_embeddings\.|\.inv_freq$|causal_mask)"
)
_SESAME_LAYER_KEY = re.compile(r"^(backbone|decoder)\.layers\.(\d+)\.(.+)$")
_HF_LAYER_KEY = re.compile(r"^(backbone_model|depth_decoder\.model)\.layers\.(\d+)\.(.+)$")


def to_internal_names(state: dict[str, torch.Tensor], cfg: CsmConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint onto this package's names -> (state, unexpected keys)."""
    naming = detect_naming(state)
    top, layer_map, layer_key = (
        (_HF_TOP, _HF_LAYER, _HF_LAYER_KEY)
        if naming == "transformers"
        else (_SESAME_TOP, _SESAME_LAYER, _SESAME_LAYER_KEY)
    )
    heads = {"backbone": cfg.backbone.num_heads, "decoder": cfg.decoder.num_heads}
    kv_heads = {"backbone": cfg.backbone.num_kv_heads, "decoder": cfg.decoder.num_kv_heads}
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key in top:
            out[top[key]] = tensor
            continue
        if key == _HF_TIED_AUDIO:  # transformers saves one of the two tied audio tables
            out.setdefault("audio_embeddings.weight", tensor)
            continue
        match = layer_key.match(key)
        if match and match.group(3) in layer_map:
            stack = "backbone" if match.group(1) in ("backbone", "backbone_model") else "decoder"
            name = layer_map[match.group(3)]
            if naming == "sesame" and name in ("attn.q_proj.weight", "attn.k_proj.weight") and tensor.ndim == 2:
                count = heads[stack] if name.startswith("attn.q") else kv_heads[stack]
                if tensor.shape[0] % (2 * count) == 0:  # a misshaped tensor is reported by validate()
                    tensor = interleaved_to_halves(tensor, count)
            out[f"{stack}.layers.{match.group(2)}.{name}"] = tensor
            continue
        if not _IGNORED.search(key):
            unexpected.append(key)
    return out, unexpected


def validate(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming the missing or misshaped tensors."""
    missing = [name for name in expected if name not in state]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"tensor '{name}' has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}")


def _stack_from_hf(d: dict, default: TransformerConfig) -> TransformerConfig:
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    scaled = rope.get("rope_type", rope.get("type")) == "llama3"
    return TransformerConfig(
        num_layers=d.get("num_hidden_layers", default.num_layers),
        dim=d.get("hidden_size", default.dim),
        num_heads=d.get("num_attention_heads", default.num_heads),
        num_kv_heads=d.get("num_key_value_heads", default.num_kv_heads),
        mlp_dim=d.get("intermediate_size", default.mlp_dim),
        norm_eps=d.get("rms_norm_eps", default.norm_eps),
        rope_base=rope.get("rope_theta", d.get("rope_theta", default.rope_base)),
        rope_scale_factor=rope.get("factor", 1.0) if scaled else 1.0,
        rope_low_freq_factor=rope.get("low_freq_factor", 1.0) if scaled else 1.0,
        rope_high_freq_factor=rope.get("high_freq_factor", 4.0) if scaled else 4.0,
        rope_original_max_positions=rope.get("original_max_position_embeddings", 8192) if scaled else 8192,
    )


def config_from_json(path: Path) -> CsmConfig:
    """A CsmConfig from a checkpoint's config.json (transformers' CsmConfig or Sesame's ModelArgs)."""
    d = json.loads(path.read_text())
    if d.get("model_type") == "csm":
        dec = d.get("depth_decoder_config") or {}
        return CsmConfig(
            name=str(d.get("_name_or_path") or path.parent.name),
            backbone=_stack_from_hf(d, CSM_1B.backbone),
            decoder=_stack_from_hf(dec, CSM_1B.decoder),
            text_vocab_size=d.get("text_vocab_size", CSM_1B.text_vocab_size),
            audio_vocab_size=d.get("vocab_size", CSM_1B.audio_vocab_size),
            num_codebooks=d.get("num_codebooks", CSM_1B.num_codebooks),
            max_seq_len=d.get("max_position_embeddings", CSM_1B.max_seq_len),
        )
    if "backbone_flavor" in d:
        if (d.get("backbone_flavor"), d.get("decoder_flavor")) != ("llama-1B", "llama-100M"):
            raise CheckpointError(f"{path}: unknown flavors {d.get('backbone_flavor')}/{d.get('decoder_flavor')}")
        return CsmConfig(
            name="csm-1b",
            backbone=CSM_1B.backbone,
            decoder=CSM_1B.decoder,
            text_vocab_size=d.get("text_vocab_size", CSM_1B.text_vocab_size),
            audio_vocab_size=d.get("audio_vocab_size", CSM_1B.audio_vocab_size),
            num_codebooks=d.get("audio_num_codebooks", CSM_1B.num_codebooks),
        )
    raise CheckpointError(f"{path}: not a CSM config (no model_type 'csm' and no backbone_flavor)")
