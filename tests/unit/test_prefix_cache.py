"""Voice-prompt KV prefixes: a cache hit gives the same codes as no cache, the cached KV is what is
used, memory is bounded and evicted least recently used, and context is trimmed newest-first."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from csm_service.config import EngineConfig
from csm_service.core.events import Finished
from csm_service.core.request import Segment, SpeechRequest
from csm_service.engine.build import build_engine
from csm_service.engine.prefix_cache import PrefixCache, kv_bytes, prefix_key
from csm_service.engine.prompt import assemble_prompt
from csm_service.model.tokenizer import ByteTokenizer

VOICE = Segment(0, "This is what my voice sounds like on a call.", np.random.default_rng(3).integers(0, 2048, (32, 40)))


def run(engine, request: SpeechRequest) -> Finished:
    events: queue.Queue = queue.Queue()
    engine.submit(request, events.put)
    while not isinstance(event := events.get(timeout=60), Finished):
        pass
    return event


def request(text: str = "Thanks for calling.", seed: int = 7) -> SpeechRequest:
    return SpeechRequest(text, context=(VOICE,), prefix_segments=1, seed=seed, max_audio_length_ms=640)


@pytest.fixture(scope="module")
def engines():
    cached = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=2, prefix_cache_mb=64))
    uncached = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=2, prefix_cache_mb=0))
    yield cached, uncached
    cached.stop()
    uncached.stop()


def test_hit_gives_the_same_codes_as_no_cache(engines):
    cached, uncached = engines
    reference = run(uncached, request())
    miss = run(cached, request())
    hit = run(cached, request())
    assert not reference.timings.prefix_cache_hit and not miss.timings.prefix_cache_hit
    assert hit.timings.prefix_cache_hit
    assert cached.stats.prefix_hits >= 1 and cached.stats.prefix_misses >= 1
    np.testing.assert_array_equal(miss.codes, reference.codes)
    np.testing.assert_array_equal(hit.codes, reference.codes)
    # Another text with the same voice also hits, and still matches the uncached engine.
    other_hit = run(cached, request("A different sentence.", seed=9))
    assert other_hit.timings.prefix_cache_hit
    np.testing.assert_array_equal(other_hit.codes, run(uncached, request("A different sentence.", seed=9)).codes)
    prompt_rows = reference.timings.prompt_positions
    assert prompt_rows == hit.timings.prompt_positions > VOICE.codes.shape[1]


def test_the_cached_kv_is_what_a_hit_uses(engines):
    cached, _ = engines
    before = run(cached, request(seed=11))
    prompt = cached.prepare(request(seed=11))
    key = prefix_key(prompt.tokens[: prompt.prefix_len], prompt.mask[: prompt.prefix_len])
    entry = cached.prefix_cache.get(key)
    assert entry is not None
    saved = [(k.clone(), v.clone()) for k, v in entry]
    with torch.inference_mode():  # poison the cached prefix: a hit must now produce different audio
        for k, v in entry:
            k.add_(3.0)
            v.mul_(-1.0)
    try:
        poisoned = run(cached, request(seed=11))
        assert poisoned.timings.prefix_cache_hit
        assert not np.array_equal(poisoned.codes, before.codes)
    finally:
        with torch.inference_mode():
            for (k, v), (k0, v0) in zip(entry, saved, strict=True):
                k.copy_(k0)
                v.copy_(v0)
    np.testing.assert_array_equal(run(cached, request(seed=11)).codes, before.codes)


def _kv(positions: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(positions, 2, 4), torch.zeros(positions, 2, 4))]  # 64 bytes per position


def test_memory_is_bounded_and_least_recently_used_goes_first():
    cache = PrefixCache(capacity_bytes=64 * 10)
    assert kv_bytes(_kv(4)) == 256
    assert cache.put("a", _kv(4)) and cache.put("b", _kv(4))
    assert cache.get("a") is not None  # "b" is now the least recently used
    assert cache.put("c", _kv(4))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.used_bytes <= cache.capacity_bytes and cache.stats.evictions == 1
    assert not cache.put("huge", _kv(11))  # larger than the whole cache: never stored
    assert len(cache) == 2


def test_context_is_trimmed_to_budget_newest_kept():
    tokenizer = ByteTokenizer()
    turns = [Segment(i % 2, f"turn {i}", np.zeros((32, 5), dtype=np.int64)) for i in range(6)]
    rows_per_turn = len(tokenizer.encode("[0]turn 0")) + 6  # text rows + 5 frames + end frame
    full = assemble_prompt(tokenizer, (VOICE, *turns), "Now me.", 0, 32, prefix_segments=1)
    assert full.context_segments == 7
    budget = 3 * rows_per_turn + 1
    trimmed = assemble_prompt(tokenizer, (VOICE, *turns), "Now me.", 0, 32, 1, max_context_positions=budget)
    assert trimmed.context_segments == 1 + 3  # the voice, then the 3 newest turns
    assert trimmed.prefix_len == full.prefix_len
    dropped = full.tokens.shape[0] - trimmed.tokens.shape[0]
    assert dropped == 3 * rows_per_turn
    # The kept turns are the newest, in order: the rows right after the prefix are turn 3's.
    expected_first = np.asarray(tokenizer.encode("[1]turn 3"))
    start = trimmed.prefix_len
    np.testing.assert_array_equal(trimmed.tokens[start : start + len(expected_first), -1], expected_first)
