"""The static shapes CUDA graphs replay: rows padded to a batch bucket and the cache read up to a
length bucket give the same codes as the exact shapes (CPU, fp32, eager: the same arithmetic the
graphs capture on CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from csm_service.engine.prompt import build_prompt
from csm_service.engine.runner import ModelRunner, powers_of_two_upto, round_up
from csm_service.model.loader import build_tiny_random
from csm_service.model.tokenizer import ByteTokenizer


def test_buckets():
    assert powers_of_two_upto(8) == (1, 2, 4, 8)
    assert powers_of_two_upto(6) == (1, 2, 4, 6)
    assert powers_of_two_upto(2048, 256) == (256, 512, 1024, 2048)
    assert [round_up(v, (1, 2, 4, 6)) for v in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]


def _runner() -> ModelRunner:
    return ModelRunner(build_tiny_random(seed=1), max_batch=4, device=torch.device("cpu"), dtype=torch.float32)


def test_padded_rows_and_cache_give_the_same_codes():
    exact, padded = _runner(), _runner()
    tokenizer = ByteTokenizer()
    prompts = [build_prompt(tokenizer, (), text, speaker, 32) for text, speaker in (("Hello there", 0), ("Hi", 1))]
    for runner in (exact, padded):
        for slot, (tokens, mask) in enumerate(prompts):
            runner.prefill(slot, tokens, mask, seed=10 + slot, temperature=0.9, top_k=50)
    lengths = [p[0].shape[0] for p in prompts]
    for frame in range(6):
        kv_len = max(lengths) + frame + 1
        exact.step_eager(2, kv_len)  # exactly the live rows and the filled cache prefix
        padded.step_eager(round_up(2, padded.batch_buckets), round_up(kv_len, padded.kv_buckets))  # 2 -> 2, 256
        np.testing.assert_array_equal(exact.codes[:2].numpy(), padded.codes[:2].numpy())
    assert padded.kv_buckets[0] == 256 and round_up(kv_len, padded.kv_buckets) == 256
    # and with idle rows computing beside the live ones (batch bucket 4)
    exact.step_eager(2, kv_len + 1)
    padded.step_eager(4, 256)
    np.testing.assert_array_equal(exact.codes[:2].numpy(), padded.codes[:2].numpy())
