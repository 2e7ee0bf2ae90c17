"""One 80 ms frame for every slot of a batch: the unit the runner captures as a CUDA graph.

    hidden [B, D] (backbone output at each slot's last position)
      -> codebook 0 from ``codebook0_head``
      -> depth decoder on a fresh cache: [proj(hidden), proj(emb(c0))] then one step per codebook,
         codebooks 1..31 from ``audio_head[i - 1]``
      -> the frame's 32 codes are embedded and fed to the backbone at ``positions``
      -> the next hidden [B, D]

The depth decoder's cache is not cleared between frames: each frame rewrites positions 0..31 in
order and attention never reads past the position being written, so stale entries are unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from csm_service.engine.sampling import frame_noise, sample_topk
from csm_service.model.csm import CSM


@dataclass
class FrameInputs:
    """Per-slot inputs of a batched frame step (all tensors [B])."""

    hidden: torch.Tensor  # [B, D] backbone hidden of the last position
    positions: torch.Tensor  # [B] int64: where this frame goes in the backbone cache
    seeds: torch.Tensor  # [B] int64
    frame_index: torch.Tensor  # [B] int64: the frame's index within its utterance
    temperature: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] int64


def sample_frame(model: CSM, rows: slice, inp: FrameInputs) -> torch.Tensor:
    """-> codes [B, K] of one frame, sampled from the backbone hidden and the depth decoder."""
    cfg = model.cfg
    batch = inp.hidden.shape[0]
    vocab = cfg.audio_vocab_size

    noise = frame_noise(inp.seeds, inp.frame_index, cfg.num_codebooks, vocab)  # [B, K, V]

    def draw(logits: torch.Tensor, codebook: int) -> torch.Tensor:
        return sample_topk(logits, inp.temperature, inp.top_k, noise[:, codebook])

    code = draw(model.codebook0_logits(inp.hidden), 0)  # [B]
    codes = [code]
    x = torch.stack([inp.hidden, model.embed_code(0, code)], dim=1)  # [B, 2, D]
    positions = torch.arange(2, device=x.device).expand(batch, 2)  # [B, 2]
    h = model.decoder(model.projection(x), positions, rows, kv_len=2)[:, -1]  # [B, d]
    for codebook in range(1, cfg.num_codebooks):
        code = draw(model.codebook_logits(codebook, h), codebook)
        codes.append(code)
        if codebook == cfg.num_codebooks - 1:
            break
        x = model.projection(model.embed_code(codebook, code)).unsqueeze(1)  # [B, 1, d]
        positions = torch.full((batch, 1), codebook + 1, device=x.device, dtype=torch.int64)
        h = model.decoder(x, positions, rows, kv_len=codebook + 2)[:, -1]
    return torch.stack(codes, dim=1)  # [B, K]


def advance_backbone(
    model: CSM, rows: slice, codes: torch.Tensor, positions: torch.Tensor, kv_len: int
) -> torch.Tensor:
    """Feed a frame's codes [B, K] at positions [B] -> the next hidden [B, D]."""
    x = model.embed_frame(codes)  # [B, 1, D]
    return model.backbone(x, positions.unsqueeze(1), rows, kv_len)[:, -1]


def frame_step(model: CSM, rows: slice, inp: FrameInputs, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole per-frame work -> (codes [B, K], next hidden [B, D])."""
    codes = sample_frame(model, rows, inp)
    return codes, advance_backbone(model, rows, codes, inp.positions, kv_len)
