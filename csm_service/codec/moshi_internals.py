"""The two things the codec needs from moshi that moshi's public API does not offer (moshi 0.2.13).

Each is one small function, so a moshi upgrade that renames them breaks here and nowhere else;
tests/unit/test_moshi_internals.py checks both against the installed moshi and fails loudly if
either changed. Everything else the codec does with moshi (``get_mimi``, ``streaming``,
``reset_streaming``, ``set_exec_mask``, ``no_compile``) is public.
"""

from __future__ import annotations

import copy

import torch


def moshi_mimi_config() -> dict:
    """A copy of the configuration ``moshi.models.loaders.get_mimi`` builds Mimi from by default.

    moshi 0.2.13 keeps it in the private module dict ``loaders._mimi_config`` with no accessor; we
    need it to build the same Mimi at a test size (codec/mimi.py ``tiny_mimi_config``).
    """
    from moshi.models import loaders

    return copy.deepcopy(loaders._mimi_config)


def mark_codebook_initialized(codebook: torch.nn.Module) -> None:
    """Mark a ``moshi.quantization.core_vq.EuclideanCodebook`` whose ``embedding_sum`` we filled as
    initialised, and drop its cached codebook so it is recomputed from ``embedding_sum``.

    moshi 0.2.13 keeps both in private buffers (``_initialized``, a float flag that k-means sets in
    training, and ``_embedding``, the cache behind the public ``embedding`` property) with no setter;
    an untrained Mimi with random codebooks (``tiny-random``) needs both set.
    """
    codebook._initialized.fill_(1.0)
    codebook._embedding = None
