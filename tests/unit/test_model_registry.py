"""--model names: tiny-random is a registry entry; every other name is a checkpoint (path or hub id)."""

from __future__ import annotations

import torch

from csm_service.config import TINY, TINY_RANDOM
from csm_service.model.registry import CHECKPOINT, NAMED_MODELS, model_entry
from csm_service.model.tokenizer import ByteTokenizer


def test_tiny_random_is_the_random_weight_entry():
    entry = model_entry(TINY_RANDOM)
    assert entry is NAMED_MODELS[TINY_RANDOM] and entry.random_mimi
    model, tokenizer = entry.load(TINY_RANDOM, 3, torch.float32)
    again, _ = entry.load(TINY_RANDOM, 3, torch.float32)
    assert model.cfg == TINY and isinstance(tokenizer, ByteTokenizer)
    assert torch.equal(model.audio_head, again.audio_head)  # seeded


def test_any_other_name_is_a_checkpoint():
    for name in ("sesame/csm-1b", "/models/csm", "./ckpt.pt", "tiny"):
        assert model_entry(name) is CHECKPOINT and not CHECKPOINT.random_mimi
