"""The models ``--model`` can name: an entry by name, else a checkpoint (a local path or a hub id).

An entry says how to build the CSM and its text tokenizer, and which Mimi goes with it. The one
named entry is ``tiny-random``: the test-size CSM with seeded random weights, a byte-level tokenizer
and a test-size random Mimi, so the whole pipeline runs on any CPU (its audio is noise). Any other
name is a checkpoint: a local directory or file, or a hub id, in Sesame's or Transformers' naming
(:mod:`csm_service.model.loader`), with the trained Mimi.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from csm_service.config import TINY_RANDOM
from csm_service.model.csm import CSM
from csm_service.model.loader import build_tiny_random, load_checkpoint, load_tokenizer, resolve_model_files
from csm_service.model.tokenizer import ByteTokenizer, TextTokenizer

log = logging.getLogger(__name__)

# (the --model value, seed, dtype) -> the model on CPU with parameters in dtype, and its tokenizer
LoadModel = Callable[[str, int, torch.dtype], tuple[CSM, TextTokenizer]]


@dataclass(frozen=True)
class ModelEntry:
    """How a ``--model`` value becomes a model, a tokenizer and a codec."""

    load: LoadModel
    random_mimi: bool = False  # True: a test-size Mimi with seeded random weights (no weights file)


def _load_checkpoint(name: str, seed: int, dtype: torch.dtype) -> tuple[CSM, TextTokenizer]:
    """A checkpoint: weights, config.json and tokenizer.json from a local path or the hub (``seed`` unused)."""
    files = resolve_model_files(name)
    model = load_checkpoint(files, dtype=dtype)  # each tensor cast as it is read
    return model, load_tokenizer(files)


def _build_tiny_random(name: str, seed: int, dtype: torch.dtype) -> tuple[CSM, TextTokenizer]:
    log.warning("model '%s': random weights, test size -- its audio is NOISE, not speech", name)
    return build_tiny_random(seed).to(dtype), ByteTokenizer()


CHECKPOINT = ModelEntry(_load_checkpoint)  # a hub id (owner/name) or a local directory or file
NAMED_MODELS: dict[str, ModelEntry] = {
    TINY_RANDOM: ModelEntry(_build_tiny_random, random_mimi=True),
}


def model_entry(name: str) -> ModelEntry:
    """The named entry, or the checkpoint entry for any other name."""
    return NAMED_MODELS.get(name, CHECKPOINT)
