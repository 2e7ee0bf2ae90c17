"""CUDA graphs: a replay equals eager at the shapes it was captured with, bit for bit (the same
kernels on the same inputs); many concurrent requests finish with valid audio through the graphed
engine. Batch invariance (a request alone vs in a crowd) is in test_batch_invariance.py: across
batch sizes cuBLAS picks different kernels, so it holds to rounding, not bit for bit."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from csm_service.config import EngineConfig
from csm_service.core.events import Finished
from csm_service.core.request import SpeechRequest
from csm_service.engine.build import build_engine
from csm_service.engine.runner import ModelRunner
from csm_service.model.loader import build_tiny_random
from tests.gpu.helpers import CUDA, prefill_slots, random_csm1b, record_replays

pytestmark = pytest.mark.gpu


def _graph_vs_eager(model_factory, dtype: torch.dtype, max_batch: int, num_slots: int, frames: int) -> None:
    graphed = ModelRunner(model_factory(), max_batch, CUDA, dtype, use_cuda_graphs=True)
    graphed.capture_graphs()
    assert graphed.graphs, "no CUDA graph was captured"
    replayed = record_replays(graphed)
    eager = ModelRunner(model_factory(), max_batch, CUDA, dtype, use_cuda_graphs=False)
    longest = max(prefill_slots(graphed, range(num_slots)), prefill_slots(eager, range(num_slots)))
    for frame in range(frames):
        kv_len = longest + frame + 1
        got = graphed.step(num_slots, kv_len).clone()
        batch, length = replayed[-1]  # the shapes that graph was captured with
        assert batch >= num_slots and length >= kv_len
        eager.step_eager(batch, length)
        torch.testing.assert_close(got, eager.codes[:num_slots], rtol=0, atol=0)
        torch.testing.assert_close(graphed.hidden[:num_slots], eager.hidden[:num_slots], rtol=0, atol=0)
    assert len(replayed) == frames


def test_graph_replay_equals_eager_tiny_fp32():
    _graph_vs_eager(lambda: build_tiny_random(seed=2), torch.float32, max_batch=8, num_slots=5, frames=12)


def test_graph_replay_equals_eager_csm1b_shapes_bf16():
    _graph_vs_eager(random_csm1b, torch.bfloat16, max_batch=4, num_slots=3, frames=4)


def test_many_concurrent_requests_finish_with_valid_audio():
    engine = build_engine(EngineConfig(model="tiny-random", device="cuda", max_batch=32, max_queue=128))
    try:
        assert engine.runner.graphs, "the engine should have captured CUDA graphs"
        finished: queue.Queue = queue.Queue()
        chunks: dict[int, list[np.ndarray]] = {}

        def sink_for(i: int):
            def sink(event) -> None:
                if isinstance(event, Finished):
                    finished.put((i, event))
                else:
                    chunks.setdefault(i, []).append(event.pcm)

            return sink

        num_requests = 96
        for i in range(num_requests):
            engine.submit(SpeechRequest(f"request {i}", max_audio_length_ms=800, seed=i), sink_for(i))
        results = dict(finished.get(timeout=300) for _ in range(num_requests))
        for i, done in results.items():
            assert done.reason == "max_length" and done.num_frames == 10, (i, done.reason, done.error)
            pcm = np.concatenate(chunks[i])
            assert pcm.shape == (10 * 1920,) and np.isfinite(pcm).all() and np.abs(pcm).max() > 0
            assert done.codes.shape == (32, 10) and done.codes.max() < 2051
    finally:
        engine.stop()
