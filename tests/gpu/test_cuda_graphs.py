"""CUDA graphs: replay equals eager for the same inputs and seed; many concurrent requests finish
with valid audio through the graphed engine."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from csm_service.config import CSM_1B, EngineConfig
from csm_service.engine.build import build_engine
from csm_service.engine.prompt import build_prompt
from csm_service.engine.request import Finished, SynthesisRequest
from csm_service.engine.runner import ModelRunner, round_up
from csm_service.model.csm import CSM
from csm_service.model.loader import build_tiny_random
from csm_service.model.tokenizer import ByteTokenizer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _prefill(runner: ModelRunner, num_slots: int) -> int:
    tokenizer = ByteTokenizer()
    longest = 0
    for slot in range(num_slots):
        tokens, mask = build_prompt(tokenizer, (), f"Caller number {slot} says hello", slot % 3, 32)
        runner.prefill(slot, tokens, mask, seed=100 + slot, temperature=0.9, top_k=50)
        longest = max(longest, tokens.shape[0])
    return longest


def _graph_vs_eager(model_factory, dtype: torch.dtype, max_batch: int, num_slots: int, frames: int) -> None:
    graphed = ModelRunner(model_factory(), max_batch, CUDA, dtype, use_cuda_graphs=True)
    graphed.capture_graphs()
    eager = ModelRunner(model_factory(), max_batch, CUDA, dtype, use_cuda_graphs=False)
    longest = max(_prefill(graphed, num_slots), _prefill(eager, num_slots))
    for frame in range(frames):
        kv_len = longest + frame + 1
        got = graphed.step(num_slots, kv_len).clone()
        # eager at the very shapes the graph was captured with
        eager.step_eager(round_up(num_slots, eager.batch_buckets), round_up(kv_len, eager.kv_buckets))
        torch.testing.assert_close(got, eager.codes[:num_slots], rtol=0, atol=0)
        torch.testing.assert_close(graphed.hidden[:num_slots], eager.hidden[:num_slots], rtol=0, atol=0)


def test_graph_replay_equals_eager_tiny_fp32():
    _graph_vs_eager(lambda: build_tiny_random(seed=2), torch.float32, max_batch=8, num_slots=5, frames=12)


def test_graph_replay_equals_eager_csm1b_shapes_bf16():
    def random_csm1b() -> CSM:
        torch.manual_seed(0)
        with torch.device(CUDA):
            model = CSM(CSM_1B)
            for p in model.parameters():
                torch.nn.init.normal_(p, std=0.02)
        return model

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
            engine.submit(SynthesisRequest(f"request {i}", max_audio_length_ms=800, seed=i), sink_for(i))
        results = dict(finished.get(timeout=300) for _ in range(num_requests))
        for i, done in results.items():
            assert done.reason == "max_length" and done.num_frames == 10, (i, done.reason, done.error)
            pcm = np.concatenate(chunks[i])
            assert pcm.shape == (10 * 1920,) and np.isfinite(pcm).all() and np.abs(pcm).max() > 0
            assert done.codes.shape == (32, 10) and done.codes.max() < 2051
        # same seed alone gives the same codes as in the crowd
        alone: queue.Queue = queue.Queue()
        engine.submit(SynthesisRequest("request 7", max_audio_length_ms=800, seed=7), alone.put)
        while not isinstance(event := alone.get(timeout=60), Finished):
            pass
        np.testing.assert_array_equal(event.codes, results[7].codes)
    finally:
        engine.stop()
