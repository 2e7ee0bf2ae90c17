"""Engine behaviour on tiny-random (CPU, fp32, eager): streaming, reproducibility, batching,
cancellation, queue bounds and bad input."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch

from csm_service.codec.mimi import MimiCodec
from csm_service.config import EngineConfig
from csm_service.core.constants import SAMPLES_PER_FRAME
from csm_service.core.errors import InvalidRequest, Overloaded
from csm_service.core.events import Finished, PcmChunk
from csm_service.core.request import Segment, SpeechRequest
from csm_service.engine.build import build_engine


@pytest.fixture(scope="module")
def engine():
    eng = build_engine(
        EngineConfig(
            model="tiny-random", compile_cpu=False, max_batch=4, max_queue=2, first_chunk_frames=1, chunk_frames=2
        )
    )
    yield eng
    eng.stop()


def run(engine, request: SpeechRequest, timeout: float = 60.0):
    events: queue.Queue = queue.Queue()
    engine.submit(request, events.put)
    chunks = []
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, Finished):
            return chunks, event
        chunks.append(event)


def test_stream_chunks_and_lengths(engine):
    chunks, done = run(engine, SpeechRequest("Hello there", max_audio_length_ms=800, seed=1))
    assert done.reason == "max_length" and done.num_frames == 10
    # the first chunk after one frame; then none longer than the audio already sent, up to chunk_frames
    assert [c.num_frames for c in chunks] == [1, 1, 2, 2, 2, 2]
    assert all(c.pcm.dtype == np.float32 and c.pcm.size == c.num_frames * SAMPLES_PER_FRAME for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert done.codes.shape == (32, 10) and done.codes.max() <= 2047
    assert done.timings.first_audio_s <= done.timings.total_s


def test_streamed_audio_equals_whole_sequence_decode(engine):
    chunks, done = run(engine, SpeechRequest("Stream me", max_audio_length_ms=640, seed=5))
    streamed = np.concatenate([c.pcm for c in chunks])
    reference_codec = MimiCodec(None, torch.device("cpu"), seed=0, tiny=True)  # same seeded random weights
    whole = reference_codec.decode_all(torch.from_numpy(done.codes)).numpy()
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_same_seed_same_codes_and_different_seed_differs(engine):
    _, a = run(engine, SpeechRequest("Repeat", max_audio_length_ms=400, seed=42))
    _, b = run(engine, SpeechRequest("Repeat", max_audio_length_ms=400, seed=42))
    _, c = run(engine, SpeechRequest("Repeat", max_audio_length_ms=400, seed=43))
    assert np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, c.codes)
    assert a.seed == 42


def test_batched_equals_alone(engine):
    """A request's codes depend only on its own seed: alone == with three neighbours."""
    alone = {}
    requests = [SpeechRequest(f"Caller number {i}", max_audio_length_ms=480, seed=100 + i) for i in range(4)]
    for i, r in enumerate(requests):
        alone[i] = run(engine, r)[1].codes
    results: dict[int, Finished] = {}
    threads = [
        threading.Thread(target=lambda i=i, r=r: results.__setitem__(i, run(engine, r)[1]))
        for i, r in enumerate(requests)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert engine.stats.steps > 0
    for i in range(4):
        assert np.array_equal(results[i].codes, alone[i]), i


def test_context_segment_changes_output(engine):
    rng = np.random.default_rng(0)
    seg = Segment(1, "Earlier turn.", rng.integers(0, 2048, (32, 20)))
    _, plain = run(engine, SpeechRequest("Reply", max_audio_length_ms=240, seed=9))
    _, with_ctx = run(engine, SpeechRequest("Reply", max_audio_length_ms=240, seed=9, context=(seg,)))
    assert not np.array_equal(plain.codes, with_ctx.codes)


def test_cancel_frees_slot(engine):
    """A cancel frees the slot at the next frame: at most one more frame is generated for it.

    The sink holds the engine thread on the first chunk until the cancel has been made, so the
    cancel lands at a known frame however loaded the machine is (no race with the generation)."""
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def sink(event):
        events.put(event)
        if isinstance(event, PcmChunk) and event.index == 0:
            cancelled.wait(timeout=60)  # the engine thread waits here until the test has cancelled

    before_cancelled, before_after = engine.stats.cancelled_running, engine.stats.frames_after_cancel
    free_before = engine.scheduler.num_free
    handle = engine.submit(SpeechRequest("Long one", max_audio_length_ms=60_000, seed=1), sink)
    first = events.get(timeout=30)
    assert isinstance(first, PcmChunk) and first.num_frames == 1
    handle.cancel()
    cancelled.set()
    while not isinstance(event := events.get(timeout=30), Finished):
        assert isinstance(event, PcmChunk)
    assert event.reason == "cancelled"
    assert handle.frames_at_cancel == 1  # the cancel came right after the first frame...
    assert event.num_frames <= handle.frames_at_cancel + 1  # ...and at most one frame followed it
    assert engine.stats.cancelled_running == before_cancelled + 1
    assert engine.stats.frames_after_cancel - before_after == event.num_frames - handle.frames_at_cancel
    # The slot is free by the time the request's end is delivered, not some time later.
    assert engine.scheduler.num_free == free_before
    _, done = run(engine, SpeechRequest("Next", max_audio_length_ms=160, seed=1))
    assert done.reason == "max_length"


def test_queue_full_is_refused(engine):
    finished: queue.Queue = queue.Queue()
    handles = []
    capacity = engine.cfg.max_batch + engine.cfg.max_queue
    try:
        for _ in range(capacity):
            handles.append(engine.submit(SpeechRequest("x", max_audio_length_ms=20_000, seed=1), finished.put))
        with pytest.raises(Overloaded, match="overloaded"):
            engine.submit(SpeechRequest("one too many", seed=1), finished.put)
    finally:
        for h in handles:
            h.cancel()
    reasons = []
    while len(reasons) < len(handles):
        if isinstance(event := finished.get(timeout=30), Finished):
            reasons.append(event.reason)
    assert reasons == ["cancelled"] * capacity
    _, done = run(engine, SpeechRequest("after", max_audio_length_ms=160, seed=1))
    assert done.reason == "max_length"


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 5000}, "text"),
        ({"text": "hi", "max_audio_length_ms": -5}, "max_audio_length_ms"),
        ({"text": "hi", "max_audio_length_ms": 0}, "max_audio_length_ms"),
        ({"text": "hi", "max_audio_length_ms": 10**9}, "max_audio_length_ms"),
        ({"text": "hi", "speaker": "bob"}, "speaker"),
        ({"text": "hi", "speaker": 1.5}, "speaker"),
        ({"text": "hi", "speaker": -1}, "speaker"),
        ({"text": "hi", "temperature": 0}, "temperature"),
        ({"text": "hi", "top_k": 0}, "top_k"),
        ({"text": "hi", "seed": -1}, "seed"),
        ({"text": "hi", "context": (Segment(0, "c", np.full((32, 2), 4096)),)}, "context[0].codes"),
        ({"text": "hi", "context": (Segment(0, "c", np.zeros((8, 2), dtype=np.int64)),)}, "context[0].codes"),
    ],
)
def test_bad_input_names_the_field(engine, request_kwargs, field):
    with pytest.raises(InvalidRequest) as err:
        engine.submit(SpeechRequest(**request_kwargs), lambda e: None)
    assert err.value.field == field


def test_prompt_overflowing_positions_is_refused(engine):
    long_context = (Segment(0, "context", np.zeros((32, 2100), dtype=np.int64)),)
    with pytest.raises(InvalidRequest, match="no room"):
        engine.submit(SpeechRequest("hi", context=long_context), lambda e: None)
    # the engine still serves
    _, done = run(engine, SpeechRequest("still alive", max_audio_length_ms=160, seed=1))
    assert done.reason == "max_length"


def test_sixteen_concurrent_requests_on_tiny_random():
    """The CPU target of the scheduler: 16 requests at once, all correct, each as if alone."""
    engine = build_engine(
        EngineConfig(model="tiny-random", compile_cpu=False, max_batch=16, max_queue=0, chunk_frames=2)
    )
    try:
        finished: queue.Queue = queue.Queue()

        def sink(event: object) -> None:
            if isinstance(event, Finished):
                finished.put(event)

        for i in range(16):
            engine.submit(SpeechRequest(f"caller {i}", max_audio_length_ms=400, seed=200 + i), sink)
        results = [finished.get(timeout=120) for _ in range(16)]
        assert all(r.reason == "max_length" and r.num_frames == 5 for r in results)
        _, alone = run(engine, SpeechRequest("caller 9", max_audio_length_ms=400, seed=209))
        by_seed = {r.seed: r for r in results}
        assert sorted(by_seed) == list(range(200, 216))
        assert np.array_equal(alone.codes, by_seed[209].codes)  # in a crowd of 16 as alone
        assert not np.array_equal(by_seed[209].codes, by_seed[210].codes)
        assert engine.num_active == 0 and engine.scheduler.num_free == 16
    finally:
        engine.stop()
