"""Fault injection on tiny-random (CPU, fp32, eager): a prefill or a frame step that raises ends
exactly the requests it touched with a clear error, frees their slots, and the engine keeps serving.

Faults are injected by wrapping the runner's ``prefill`` / ``step`` (or the engine's per-slot chunk
bookkeeping). Requests that must overlap are submitted from a sink, i.e. on the engine thread between
two frames, so the overlap is certain rather than a matter of timing. Every wait is a queue ``get``
with a generous timeout that only guards against a hang.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch

from csm_service.config import EngineConfig
from csm_service.core.constants import SAMPLES_PER_FRAME
from csm_service.core.events import Finished, PcmChunk
from csm_service.core.request import SpeechRequest
from csm_service.engine.build import build_engine

BOOM = 666  # the seed of the request a fault is aimed at
TIMEOUT = 60.0  # a hang guard, not a timing threshold
LIVE = SpeechRequest("The one that is live", max_audio_length_ms=2400, seed=7)  # 30 frames


@pytest.fixture
def make_engine():
    engines = []

    def make(max_batch: int, max_queue: int = 2):
        cfg = EngineConfig(
            model="tiny-random",
            compile_cpu=False,
            max_batch=max_batch,
            max_queue=max_queue,
            first_chunk_frames=1,
            chunk_frames=2,
        )
        engines.append(build_engine(cfg))
        return engines[-1]

    yield make
    for engine in engines:
        engine.stop()


class Recorder:
    """One queue of (name, event) for several requests, in the order the engine delivered them."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def sink(self, name: str, then: Callable[[object], None] | None = None) -> Callable[[object], None]:
        def put(event: object) -> None:
            self.events.put((name, event))
            if then is not None:
                then(event)

        return put

    def wait(self, *names: str) -> tuple[dict[str, list[PcmChunk]], dict[str, Finished], list[str]]:
        """Read events until every named request finished -> chunks, Finished, finishing order."""
        chunks: dict[str, list[PcmChunk]] = {name: [] for name in names}
        finished: dict[str, Finished] = {}
        order: list[str] = []
        while len(finished) < len(names):
            name, event = self.events.get(timeout=TIMEOUT)
            if isinstance(event, Finished):
                finished[name] = event
                order.append(name)
            else:
                chunks[name].append(event)
        return chunks, finished, order


def run(engine, request: SpeechRequest) -> tuple[list[PcmChunk], Finished]:
    recorder = Recorder()
    engine.submit(request, recorder.sink("r"))
    chunks, finished, _ = recorder.wait("r")
    return chunks["r"], finished["r"]


def fail_prefill(monkeypatch, engine, exc: Exception) -> None:
    """The runner's prefill raises ``exc`` for the request seeded BOOM, and only for it."""
    real = engine.runner.prefill

    def prefill(slot, tokens, mask, seed, *args, **kwargs):
        if seed == BOOM:
            raise exc
        return real(slot, tokens, mask, seed, *args, **kwargs)

    monkeypatch.setattr(engine.runner, "prefill", prefill)


def is_first_chunk(event: object) -> bool:
    return isinstance(event, PcmChunk) and event.index == 0


def is_finished(event: object) -> bool:
    return isinstance(event, Finished)


def submit_when(
    engine,
    rec: Recorder,
    when: Callable[[object], bool],
    name: str,
    request: SpeechRequest,
    then: Callable[[object], None] | None = None,
) -> Callable[[object], None]:
    """A sink hook: on the event ``when`` picks, submit ``request`` as ``name`` (engine thread)."""

    def hook(event: object) -> None:
        if when(event):
            engine.submit(request, rec.sink(name, then))

    return hook


def assert_complete(chunks: list[PcmChunk], done: Finished, frames: int) -> None:
    assert done.reason == "max_length" and done.error is None and done.num_frames == frames
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert sum(c.num_frames for c in chunks) == frames
    assert sum(c.pcm.size for c in chunks) == frames * SAMPLES_PER_FRAME
    assert done.codes.shape == (32, frames)


def assert_all_free(engine, max_batch: int) -> None:
    assert engine.num_active == 0 and engine.scheduler.num_free == max_batch
    assert not engine.runner.is_active.any()


def test_failed_prefill_ends_only_that_request(make_engine, monkeypatch):
    """One live stream; a second request's prefill raises: it alone ends with "error", at once;
    the live stream is untouched, and the slot it held takes the next request straight away."""
    engine = make_engine(max_batch=2)
    _, alone = run(engine, LIVE)
    fail_prefill(monkeypatch, engine, RuntimeError("boom: bad tensor\nsecond line"))
    rec = Recorder()
    # C goes in when B's Finished arrives, to take the slot B's failure freed.
    c = SpeechRequest("After the failure", max_audio_length_ms=240, seed=8)
    submit_c = submit_when(engine, rec, is_finished, "c", c)
    # B goes in on A's first chunk, so it is admitted between A's frames with most of A to go.
    b = SpeechRequest("boom", max_audio_length_ms=800, seed=BOOM)
    engine.submit(LIVE, rec.sink("a", submit_when(engine, rec, is_first_chunk, "b", b, then=submit_c)))
    chunks, done, order = rec.wait("a", "b", "c")

    assert done["b"].reason == "error" and done["b"].num_frames == 0 and not chunks["b"]
    assert done["b"].error == "synthesis failed: prefill: RuntimeError: boom: bad tensor"
    # C (3 frames) ran beside A (30) in the slot B had: it finished long before A did.
    assert order == ["b", "c", "a"]
    assert_complete(chunks["c"], done["c"], 3)
    assert_complete(chunks["a"], done["a"], 30)
    assert np.array_equal(done["a"].codes, alone.codes)  # as if nothing had happened beside it
    assert_all_free(engine, 2)
    assert engine.stats.failed_prefills == 1 and engine.stats.finished.get("error") == 1


def test_failed_step_ends_the_batch_frees_its_slots_and_serves_on(make_engine, monkeypatch):
    """A frame step raises once with two streams live: both end with "error", both slots are
    freed, and the next request gets exactly what it got before the failure."""
    engine = make_engine(max_batch=2)
    after = SpeechRequest("After the failure", max_audio_length_ms=480, seed=8)
    ref_chunks, reference = run(engine, after)
    real_step, fired = engine.runner.step, threading.Event()

    def step(num_rows: int, kv_len: int) -> torch.Tensor:
        if len(engine.slots) == 2 and not fired.is_set():  # engine thread: its own dict
            fired.set()
            raise RuntimeError("boom in the frame step")
        return real_step(num_rows, kv_len)

    monkeypatch.setattr(engine.runner, "step", step)
    rec = Recorder()
    engine.submit(LIVE, rec.sink("a"))
    engine.submit(SpeechRequest("The other live one", max_audio_length_ms=2400, seed=9), rec.sink("b"))
    _, done, _ = rec.wait("a", "b")

    assert fired.is_set()
    for name in ("a", "b"):
        assert done[name].reason == "error" and done[name].num_frames < 30
        assert done[name].error == "synthesis failed: frame step: RuntimeError: boom in the frame step"
    assert_all_free(engine, 2)
    assert engine.stats.failed_steps == 1 and engine.stats.finished.get("error") == 2
    chunks, again = run(engine, after)
    assert_complete(chunks, again, 6)
    # Same codes and same audio as before: the failed step left no state behind (model or Mimi).
    assert np.array_equal(again.codes, reference.codes)
    np.testing.assert_array_equal(np.concatenate([c.pcm for c in chunks]), np.concatenate([c.pcm for c in ref_chunks]))
    assert_all_free(engine, 2)


def test_failed_prefill_with_one_slot_does_not_lose_it(make_engine, monkeypatch):
    """max_batch 1: a prefill out of memory ends that request, and the one queued behind it runs."""
    engine = make_engine(max_batch=1, max_queue=1)
    fail_prefill(monkeypatch, engine, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    rec = Recorder()
    engine.submit(SpeechRequest("boom", max_audio_length_ms=800, seed=BOOM), rec.sink("b"))
    engine.submit(SpeechRequest("Queued behind it", max_audio_length_ms=320, seed=8), rec.sink("c"))
    chunks, done, order = rec.wait("b", "c")

    assert order == ["b", "c"]
    assert done["b"].reason == "error" and done["b"].error == "synthesis failed: prefill: out of memory"
    assert_complete(chunks["c"], done["c"], 4)
    assert_all_free(engine, 1)


def test_failure_pinned_to_one_slot_ends_only_that_one(make_engine, monkeypatch):
    """The host-side bookkeeping of one slot raises: that request ends, its neighbour does not."""
    engine = make_engine(max_batch=2)
    _, alone = run(engine, LIVE)
    real_emit = engine._emit_chunk

    def emit_chunk(state, now):
        if state.handle.seed == BOOM:
            raise ValueError("boom in one slot's chunk")
        return real_emit(state, now)

    monkeypatch.setattr(engine, "_emit_chunk", emit_chunk)
    rec = Recorder()
    b = SpeechRequest("boom", max_audio_length_ms=800, seed=BOOM)
    engine.submit(LIVE, rec.sink("a", submit_when(engine, rec, is_first_chunk, "b", b)))  # B beside A
    chunks, done, order = rec.wait("a", "b")

    assert order == ["b", "a"]
    assert done["b"].reason == "error" and done["b"].num_frames == 1
    assert done["b"].error == "synthesis failed: frame: ValueError: boom in one slot's chunk"
    assert_complete(chunks["a"], done["a"], 30)
    assert np.array_equal(done["a"].codes, alone.codes)
    assert_all_free(engine, 2)


def test_sink_that_raises_frees_its_slot(make_engine):
    """A sink that raises cancels its request; the slot comes back and the next request runs."""
    engine = make_engine(max_batch=1, max_queue=1)
    rec = Recorder()

    def broken(event: object) -> None:
        raise RuntimeError("client went away")

    engine.submit(SpeechRequest("Broken sink", max_audio_length_ms=2400, seed=1), rec.sink("b", broken))
    engine.submit(SpeechRequest("Next", max_audio_length_ms=240, seed=2), rec.sink("c"))
    chunks, done, order = rec.wait("b", "c")

    assert order == ["b", "c"]
    assert done["b"].reason == "cancelled" and done["b"].num_frames < 30
    assert_complete(chunks["c"], done["c"], 3)
    assert_all_free(engine, 1)
