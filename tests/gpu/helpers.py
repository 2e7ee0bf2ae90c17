"""Shared by the GPU tests: random full-size models, prompts, the graph a step replayed, and a
teacher-forced frame that returns every logit of a frame (no sampling)."""

from __future__ import annotations

import torch

from csm_service.config import CSM_1B
from csm_service.engine.frame import advance_backbone
from csm_service.engine.prompt import build_prompt
from csm_service.engine.runner import ModelRunner
from csm_service.model.csm import CSM
from csm_service.model.tokenizer import ByteTokenizer

CUDA = torch.device("cuda")


def random_csm1b(seed: int = 0) -> CSM:
    """CSM-1B shapes with seeded random weights, on the GPU (fp32; the runner casts)."""
    torch.manual_seed(seed)
    with torch.device(CUDA):
        model = CSM(CSM_1B)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    return model


PROMPT = "Caller number {} says hello"


def prefill_as(runner: ModelRunner, slot: int, request: int, top_k: int = 50, template: str = PROMPT) -> int:
    """Prefill ``slot`` with request number ``request``'s prompt (text, speaker, seed) -> its length."""
    tokens, mask = build_prompt(ByteTokenizer(), (), template.format(request), request % 3, runner.cfg.num_codebooks)
    runner.prefill(slot, tokens, mask, seed=100 + request, temperature=0.9, top_k=top_k)
    return tokens.shape[0]


def prefill_slots(runner: ModelRunner, slots: range, top_k: int = 50, template: str = PROMPT) -> int:
    """Each slot gets its own request's prompt -> the longest prompt length."""
    return max(prefill_as(runner, slot, slot, top_k, template) for slot in slots)


def record_replays(runner: ModelRunner) -> list[tuple[int, int]]:
    """Make each captured graph note its (batch, length) key when replayed -> the list of keys."""
    replayed: list[tuple[int, int]] = []
    for key, graph in runner.graphs.items():

        def replay(key: tuple[int, int] = key, original=graph.replay) -> None:
            replayed.append(key)
            original()

        graph.replay = replay
    return replayed


@torch.inference_mode()
def frame_logits(
    model: CSM, rows: slice, hidden: torch.Tensor, codes: torch.Tensor, positions: torch.Tensor, kv_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame teacher-forced on ``codes`` [B, K] from ``hidden`` [B, D] -> (logits [B, K, V] fp32,
    next hidden [B, D]): the arithmetic of engine/frame.py with given codes instead of samples."""
    batch, num_codebooks = codes.shape
    logits = [model.codebook0_logits(hidden)]
    x = torch.stack([hidden, model.embed_code(0, codes[:, 0])], dim=1)  # [B, 2, D]
    h = model.decoder(model.projection(x), torch.arange(2, device=x.device).expand(batch, 2), rows, kv_len=2)[:, -1]
    for codebook in range(1, num_codebooks):
        logits.append(model.codebook_logits(codebook, h))
        if codebook == num_codebooks - 1:
            break
        x = model.projection(model.embed_code(codebook, codes[:, codebook])).unsqueeze(1)  # [B, 1, d]
        positions_dec = torch.full((batch, 1), codebook + 1, device=x.device, dtype=torch.int64)
        h = model.decoder(x, positions_dec, rows, kv_len=codebook + 2)[:, -1]
    return torch.stack(logits, dim=1), advance_backbone(model, rows, codes, positions, kv_len)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in fp64."""
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())
