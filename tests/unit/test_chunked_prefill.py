"""Chunked prefill (tiny-random, CPU, fp32): prompts prefilled in chunks of 1, 7 or 64 positions
give the same codes as one-shot prefill (long contexts, voice prefixes on a hit and a miss); a
batched step beside an unfinished prefill leaves its cache rows alone; live streams are not
perturbed by a long prefill admitted beside them; a cancel mid-prefill frees the slot.

Overlap is made certain, not timed: requests are submitted from a sink or from a wrapped
``runner.prefill`` on the engine thread. Every wait is a queue ``get`` with a hang guard.

Hidden states are not bit-identical across chunk sizes (oneDNN picks other kernels for a few rows
than for hundreds, and attention sums over a shorter cache): they differ by ~1e-5 in fp32. The
sampled codes are identical, and that is what is asserted.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from csm_service.config import EngineConfig
from csm_service.core.events import Finished
from csm_service.core.request import Segment, SpeechRequest
from csm_service.engine.build import build_engine
from csm_service.engine.prefill import PrefillTask, plan_round, prefill_chunks
from csm_service.engine.prompt import assemble_prompt
from csm_service.engine.runner import ModelRunner
from csm_service.model.loader import build_tiny_random
from csm_service.model.tokenizer import ByteTokenizer

TIMEOUT = 120.0  # a hang guard, not a timing threshold
CHUNK_SIZES = (1, 7, 64)
_rng = np.random.default_rng(5)
VOICE = Segment(0, "This is my voice on the phone.", _rng.integers(0, 2048, (32, 120)))
TURN_1 = Segment(1, "An earlier turn of the call, spoken by the caller.", _rng.integers(0, 2048, (32, 150)))
TURN_2 = Segment(0, "And the answer to it.", _rng.integers(0, 2048, (32, 90)))
REQUESTS = {
    "plain": SpeechRequest("Hello there, how can I help?", seed=1, max_audio_length_ms=1600),
    "long context": SpeechRequest("Tell me more.", context=(TURN_1, TURN_2), seed=2, max_audio_length_ms=1600),
    "voice": SpeechRequest(
        "Thanks for calling.", context=(VOICE, TURN_1), prefix_segments=1, seed=3, max_audio_length_ms=1600
    ),
}
LIVE = SpeechRequest("The one that is live", max_audio_length_ms=2400, seed=7)  # 30 frames
LONG = REQUESTS["long context"]


def run(engine, request: SpeechRequest) -> Finished:
    events: queue.Queue = queue.Queue()
    engine.submit(request, events.put)
    while not isinstance(event := events.get(timeout=TIMEOUT), Finished):
        pass
    return event


def make_engine(chunk: int, max_batch: int = 2):
    return build_engine(
        EngineConfig(model="tiny-random", compile_cpu=False, max_batch=max_batch, prefill_chunk_positions=chunk)
    )


@pytest.fixture(scope="module")
def one_shot_codes() -> dict[str, Finished]:
    engine = make_engine(0)
    try:
        done = {name: run(engine, request) for name, request in REQUESTS.items()}
        done["voice, hit"] = run(engine, REQUESTS["voice"])
    finally:
        engine.stop()
    return done


def test_chunk_plan_never_crosses_the_prefix_and_keeps_to_the_budget():
    assert prefill_chunks(10, 0, False, 0) == [(0, 10)]
    assert prefill_chunks(10, 0, False, 4) == [(0, 4), (4, 8), (8, 10)]
    assert prefill_chunks(10, 5, False, 4) == [(0, 4), (4, 5), (5, 9), (9, 10)]  # the prefix ends a chunk
    assert prefill_chunks(10, 5, True, 4) == [(5, 9), (9, 10)]  # a hit copies the prefix in
    assert prefill_chunks(10, 5, False, 0) == [(0, 5), (5, 10)]  # as one-shot prefill always did
    old = PrefillTask(0, None, prefill_chunks(10, 0, False, 4), None, False, None, 0.0)
    new = PrefillTask(1, None, prefill_chunks(3, 0, False, 4), None, False, None, 0.0)
    plan = plan_round([old, new], budget=4)
    assert [(t.slot, rows) for t, rows in plan] == [(0, (0, 4))]
    old.next_chunk = 2  # its last chunk (2 rows) and the new prompt's (3 rows) exceed 4: one only
    assert [(t.slot, rows) for t, rows in plan_round([old, new], budget=4)] == [(0, (8, 10))]
    assert [(t.slot, rows) for t, rows in plan_round([old, new], budget=5)] == [(0, (8, 10)), (1, (0, 3))]
    assert len(plan_round([old, new], budget=0)) == 2  # 0: no limit (one shot)


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_chunked_prefill_gives_the_codes_of_one_shot_prefill(chunk, one_shot_codes):
    engine = make_engine(chunk)
    try:
        done = {name: run(engine, request) for name, request in REQUESTS.items()}
        done["voice, hit"] = run(engine, REQUESTS["voice"])
        assert engine.stats.prefill_chunks > len(done)  # really in chunks
    finally:
        engine.stop()
    assert done["long context"].timings.prompt_positions > 300
    assert not done["voice"].timings.prefix_cache_hit and done["voice, hit"].timings.prefix_cache_hit
    for name, reference in one_shot_codes.items():
        assert done[name].num_frames == reference.num_frames == 20, name
        np.testing.assert_array_equal(done[name].codes, reference.codes, err_msg=f"{name}, chunk {chunk}")


def _prompt_rows(request: SpeechRequest) -> tuple[np.ndarray, np.ndarray]:
    prompt = assemble_prompt(ByteTokenizer(), request.context, request.text, request.speaker, 32)
    return prompt.tokens, prompt.mask


def _cache_rows(runner: ModelRunner, slot: int, end: int) -> list[torch.Tensor]:
    return [t[slot, :end].clone() for cache in runner.model.backbone.caches for t in (cache.k, cache.v)]


def test_a_step_beside_an_unfinished_prefill_leaves_its_rows_alone():
    """Slot 0 is live; slot 1 is prefilled 7 rows at a time with a batched step over both rows
    after each chunk. The step writes row 1's (ignored) K/V at its position entry, which points at
    the next row to prefill, so rows already prefilled never change, and slot 1 ends with exactly
    the KV and codes of the same chunks run with no step in between."""
    tokens, mask = _prompt_rows(LONG)
    live_tokens, live_mask = _prompt_rows(LIVE)
    chunks = prefill_chunks(tokens.shape[0], 0, False, 7)
    beside, alone = (ModelRunner(build_tiny_random(seed=1), 2, torch.device("cpu"), torch.float32) for _ in range(2))
    for runner in (beside, alone):
        runner.prefill(0, live_tokens, live_mask, seed=7, temperature=0.9, top_k=50)
    kv_len = tokens.shape[0] + 1
    for rows in chunks:
        for runner in (beside, alone):
            runner.prefill(1, tokens, mask, 2, 0.9, 50, rows=rows)
        if rows[1] < tokens.shape[0]:
            before = _cache_rows(beside, 1, rows[1])
            beside.step_eager(2, kv_len)  # row 1 computes beside row 0, inactive
            assert beside.is_active[1] == 0 and beside.positions[1] == rows[1]
            for b, a in zip(before, _cache_rows(beside, 1, rows[1]), strict=True):
                assert torch.equal(a, b)
    for b, a in zip(_cache_rows(beside, 1, tokens.shape[0]), _cache_rows(alone, 1, tokens.shape[0]), strict=True):
        assert torch.equal(a, b)
    for _ in range(5):  # row 0 moved on in `beside` only; rows are computed independently
        beside.step_eager(2, kv_len + 8)
        alone.step_eager(2, kv_len + 8)
        assert torch.equal(beside.codes[1], alone.codes[1])


def test_a_row_left_at_position_zero_would_be_clobbered():
    """The hazard the position entry guards against: an inactive row pointed at position 0 (as an
    idle row is) has its first prompt row overwritten by a batched step."""
    tokens, mask = _prompt_rows(LONG)
    runner = ModelRunner(build_tiny_random(seed=1), 2, torch.device("cpu"), torch.float32)
    runner.prefill(1, tokens, mask, 2, 0.9, 50, rows=(0, 7))
    before = _cache_rows(runner, 1, 7)
    runner.positions[1] = 0
    runner.step_eager(2, 8)
    after = _cache_rows(runner, 1, 7)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(after, before, strict=True))
    assert all(torch.equal(a[1:], b[1:]) for a, b in zip(after, before, strict=True))


def _record_prefill(monkeypatch, engine, seed: int, then=None) -> list[tuple[int, tuple[int, int], int, int]]:
    """Wrap runner.prefill: for the request seeded ``seed`` record, per chunk, (its slot, its rows,
    frame steps so far, the highest live slot)."""
    calls: list[tuple[int, tuple[int, int], int, int]] = []
    real = engine.runner.prefill

    def prefill(slot, tokens, mask, req_seed, *args, **kwargs):
        out = real(slot, tokens, mask, req_seed, *args, **kwargs)
        if req_seed == seed:
            calls.append((slot, kwargs["rows"], engine.stats.steps, max(engine.slots, default=-1)))
            if then is not None:
                then(len(calls))
        return out

    monkeypatch.setattr(engine.runner, "prefill", prefill)
    return calls


SHORT = SpeechRequest("Short", max_audio_length_ms=160, seed=11)  # 2 frames


def test_a_long_prefill_beside_live_streams_changes_no_ones_codes(monkeypatch):
    """SHORT takes slot 0 and LIVE slot 1; when SHORT ends, a 341-position prompt takes slot 0 and
    is prefilled 16 rows per frame (22 chunks, one frame step between each two), its row inside the
    batched step of LIVE's. Neither LIVE's codes nor its own differ from theirs alone."""
    engine = make_engine(16)
    try:
        live_alone, long_alone = run(engine, LIVE), run(engine, LONG)
        calls = _record_prefill(monkeypatch, engine, LONG.seed)
        events: queue.Queue = queue.Queue()

        def short_sink(event: object) -> None:
            events.put(("short", event))
            if isinstance(event, Finished):  # on the engine thread: LONG is admitted into slot 0
                engine.submit(LONG, lambda e: events.put(("long", e)))

        engine.submit(SHORT, short_sink)
        engine.submit(LIVE, lambda e: events.put(("live", e)))
        finished: dict[str, Finished] = {}
        while len(finished) < 3:
            name, event = events.get(timeout=TIMEOUT)
            if isinstance(event, Finished):
                finished[name] = event
    finally:
        engine.stop()
    positions = long_alone.timings.prompt_positions
    assert positions > 300 and len(calls) == len(prefill_chunks(positions, 0, False, 16)) > 20
    assert all(slot == 0 and live == 1 for slot, _, _, live in calls[:-1])  # below a live row, so stepped
    assert calls[-1][2] - calls[0][2] == len(calls) - 1  # one frame step between every two chunks
    assert finished["short"].num_frames == 2
    np.testing.assert_array_equal(finished["live"].codes, live_alone.codes)
    np.testing.assert_array_equal(finished["long"].codes, long_alone.codes)
    assert finished["long"].timings.prefill_s > 0 and finished["long"].timings.queued_s >= 0


def test_cancel_mid_prefill_frees_the_slot(monkeypatch):
    engine = make_engine(7, max_batch=1)
    try:
        reference = run(engine, REQUESTS["plain"])
        handles = []
        calls = _record_prefill(monkeypatch, engine, LONG.seed, then=lambda n: n == 3 and handles[0].cancel())
        events: queue.Queue = queue.Queue()
        handles.append(engine.submit(LONG, events.put))
        while not isinstance(done := events.get(timeout=TIMEOUT), Finished):
            pass
        assert done.reason == "cancelled" and done.num_frames == 0
        assert len(calls) == 3 < len(prefill_chunks(engine.prepare(LONG).tokens.shape[0], 0, False, 7))  # mid-prefill
        assert engine.is_idle() and engine.scheduler.num_free == 1 and not engine.runner.is_active.any()
        again = run(engine, REQUESTS["plain"])  # the slot serves the next request as before
        np.testing.assert_array_equal(again.codes, reference.codes)
    finally:
        engine.stop()
