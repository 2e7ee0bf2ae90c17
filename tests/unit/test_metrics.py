"""The engine's metrics an operator graphs: slot capacity, device memory, build info, where an
utterance's time goes, and time per frame against the 80 ms budget; the exposition formats."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from csm_service import __version__
from csm_service.config import EngineConfig
from csm_service.core.constants import SAMPLES_PER_FRAME
from csm_service.core.events import Finished
from csm_service.core.request import SpeechRequest
from csm_service.engine.build import build_engine
from csm_service.engine.delivery import Delivery
from csm_service.engine.state import RequestHandle, SlotState
from csm_service.metrics import FRAME_BUDGET_BUCKETS, EngineMetrics, exposition


@pytest.fixture(scope="module")
def bound():
    engine = build_engine(
        EngineConfig(model="tiny-random", compile_cpu=False, max_batch=3, first_chunk_frames=1, chunk_frames=2)
    )
    registry = CollectorRegistry()
    EngineMetrics(registry).bind(engine)
    yield engine, registry
    engine.stop()


def _run(engine, request: SpeechRequest) -> tuple[int, Finished]:
    events: queue.Queue = queue.Queue()
    engine.submit(request, events.put)
    chunks = 0
    while not isinstance(event := events.get(timeout=60), Finished):
        chunks += 1
    return chunks, event


def test_capacity_and_device_memory(bound):
    engine, registry = bound
    assert registry.get_sample_value("csm_engine_slot_capacity") == engine.num_slots == 3
    total = registry.get_sample_value("csm_engine_device_memory_total_bytes")
    allocated = registry.get_sample_value("csm_engine_device_memory_allocated_bytes")
    reserved = registry.get_sample_value("csm_engine_device_memory_reserved_bytes")
    assert 0 < allocated <= reserved <= total  # CPU: the resident set, within the machine's RAM


def test_build_info_names_model_device_and_settings(bound):
    _, registry = bound
    (family,) = [f for f in registry.collect() if f.name == "csm_engine_build"]
    (sample,) = family.samples
    assert sample.value == 1.0
    assert {k: v for k, v in sample.labels.items() if k != "device_name"} == {
        "version": __version__,
        "model": "tiny-random",
        "device": "cpu",
        "dtype": "float32",
        "mimi_dtype": "float32",
        "quantize": "none",
        "compiled": "false",
        "cuda_graphs": "false",
    }
    assert sample.labels["device_name"]


def test_an_utterance_is_timed_once_per_chunk_interval(bound):
    """Every chunk after the first reports its time per frame: 800 ms in chunks of 1, 1, 2, 2, 2, 2
    frames gives five intervals; none is longer than the time from first audio to the end."""
    engine, registry = bound
    before = registry.get_sample_value("csm_engine_inter_frame_latency_seconds_count")
    chunks, done = _run(engine, SpeechRequest("Time me", max_audio_length_ms=800, seed=3))
    assert done.reason == "max_length" and chunks == 6
    count = registry.get_sample_value("csm_engine_inter_frame_latency_seconds_count") - before
    assert count == chunks - 1
    total = registry.get_sample_value("csm_engine_inter_frame_latency_seconds_sum")
    assert 0 < total <= done.timings.total_s - done.timings.first_audio_s


def test_interval_is_divided_by_the_frames_the_chunk_carries():
    """A chunk of four frames 320 ms after the last one: 80 ms per frame, exactly on budget."""

    class Chunks(Delivery):
        pass

    delivery, seen, sent = Chunks(), [], []
    delivery.observe_frame_interval = seen.append
    handle = RequestHandle(SpeechRequest("x"), sent.append, prompt=None, seed=0)
    state = SlotState(handle, max_frames=10, position=0)
    state.pcm = [np.zeros(SAMPLES_PER_FRAME, np.float32)]
    delivery._emit_chunk(state, now=100.0)  # the first chunk: time to first audio, no interval
    state.pcm = [np.zeros(SAMPLES_PER_FRAME, np.float32)] * 4
    delivery._emit_chunk(state, now=100.32)
    assert seen == [pytest.approx(0.08)] and [c.num_frames for c in sent] == [1, 4]
    assert 0.08 in FRAME_BUDGET_BUCKETS


def test_exposition_follows_the_accept_header():
    registry = CollectorRegistry()
    Histogram("csm_test_seconds", "a histogram", registry=registry).observe(0.08)
    body, content_type = exposition(registry, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    for accept in (None, "", "text/plain", "*/*"):
        body, content_type = exposition(registry, accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8", accept
        assert b"csm_test_seconds_bucket" in body and b"# EOF" not in body
