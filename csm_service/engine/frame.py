"""One 80 ms frame for every slot of a batch: the unit the runner captures as a CUDA graph.

    hidden [B, D] (backbone output at each slot's last position)
      -> codebook 0 from ``codebook0_head``
      -> depth decoder on a fresh cache: [proj(hidden), proj(emb(c0))] then one step per codebook,
         codebooks 1..31 from ``audio_head[i - 1]``
      -> the frame's 32 codes are embedded and fed to the backbone at ``positions``
      -> the next hidden [B, D]

The frame is five pieces (:class:`FramePieces`): the start (the frame's noise, codebook 0's
logits), sampling (run for each of the 32 codebooks), the decoder's first step (positions 0 and 1),
one depth step (a codebook's code into the decoder, the next codebook's logits; run 30 times), and
the backbone step. Eager, they run as plain functions; on CPU the runner compiles each piece once
(engine/compiled.py): a frame is 65 compiled calls instead of ~3,700 operator dispatches, and the
rolled loop keeps compile time to five small graphs.

The depth decoder's cache is not cleared between frames: each frame rewrites positions 0..31 in
order and attention never reads past the position being written, so stale entries are unseen.
"""

from __future__ import annotations

from collections.abc import Callable
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


def start_frame(
    model: CSM, hidden: torch.Tensor, seeds: torch.Tensor, frame_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, D] -> (noise [B, K, V] for the whole frame, codebook 0's logits [B, V])."""
    cfg = model.cfg
    noise = frame_noise(seeds, frame_index, cfg.num_codebooks, cfg.audio_vocab_size)  # [B, K, V]
    return noise, model.codebook0_logits(hidden)


def first_depth_step(model: CSM, num_rows: int, hidden: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The decoder on [hidden, codebook 0's code] (positions 0, 1) -> codebook 1's logits [B, V]."""
    x = torch.stack([hidden, model.embed_code(0, code)], dim=1)  # [B, 2, D]
    positions = torch.arange(2, device=x.device).expand(num_rows, 2)  # [B, 2]
    h = model.decoder(model.projection(x), positions, slice(0, num_rows), 2)[:, -1]  # [B, d]
    return model.codebook_logits(1, h)


def depth_step(model: CSM, num_rows: int, codebook: int, code: torch.Tensor) -> torch.Tensor:
    """Codebook ``codebook``'s codes [B] (1..30) into the decoder at its position -> the next
    codebook's logits [B, V]."""
    x = model.projection(model.embed_code(codebook, code)).unsqueeze(1)  # [B, 1, d]
    positions = torch.full((num_rows, 1), codebook + 1, device=x.device, dtype=torch.int64)  # [B, 1]
    h = model.decoder(x, positions, slice(0, num_rows), codebook + 2)[:, -1]  # [B, d]
    return model.codebook_logits(codebook + 1, h)


def advance_backbone(
    model: CSM, rows: slice, codes: torch.Tensor, positions: torch.Tensor, kv_len: int
) -> torch.Tensor:
    """Feed a frame's codes [B, K] at positions [B] -> the next hidden [B, D]."""
    x = model.embed_frame(codes)  # [B, 1, D]
    return model.backbone(x, positions.unsqueeze(1), rows, kv_len)[:, -1]


def _advance(model: CSM, num_rows: int, codes: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    return advance_backbone(model, slice(0, num_rows), codes, positions, kv_len)


@dataclass(frozen=True)
class FramePieces:
    """The pieces of a frame: plain functions, or the same compiled (engine/compiled.py)."""

    start: Callable[..., tuple[torch.Tensor, torch.Tensor]] = start_frame
    sample: Callable[..., torch.Tensor] = sample_topk  # engine/sampling.py
    first_depth: Callable[..., torch.Tensor] = first_depth_step
    depth: Callable[..., torch.Tensor] = depth_step
    advance: Callable[..., torch.Tensor] = _advance


EAGER = FramePieces()


def frame_step(
    model: CSM, rows: slice, inp: FrameInputs, kv_len: int, pieces: FramePieces = EAGER
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole per-frame work for rows [0, B) -> (codes [B, K], next hidden [B, D])."""
    if rows.start not in (None, 0):
        raise ValueError("a frame step runs rows 0..B-1")
    n = inp.hidden.shape[0]
    num_codebooks = model.cfg.num_codebooks
    noise, logits = pieces.start(model, inp.hidden, inp.seeds, inp.frame_index)
    codes = [pieces.sample(logits, inp.temperature, inp.top_k, noise[:, 0])]
    logits = pieces.first_depth(model, n, inp.hidden, codes[0])
    for codebook in range(1, num_codebooks):
        codes.append(pieces.sample(logits, inp.temperature, inp.top_k, noise[:, codebook]))
        if codebook < num_codebooks - 1:
            logits = pieces.depth(model, n, codebook, codes[-1])
    frame = torch.stack(codes, dim=1)  # [B, K]
    return frame, pieces.advance(model, n, frame, inp.positions, kv_len)
