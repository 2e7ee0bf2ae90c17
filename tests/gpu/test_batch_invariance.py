"""A request alone vs the same request in a crowd. cuBLAS (and the attention kernels) pick different
kernels for different batch sizes, so bit-for-bit equality does not hold in bf16; what holds:

- bf16: every logit of a frame (codebook 0 and the 31 depth-decoder heads, teacher-forced on the
  same codes) within the precision bf16 already has: the crowd's difference from the lone run is
  no larger than a few times the lone bf16 run's difference from fp32.
- fp32: greedy codes identical, through the graphed engine and with full-size shapes.
"""

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
from tests.gpu.helpers import CUDA, frame_logits, prefill_as, prefill_slots, random_csm1b, relative_error

pytestmark = pytest.mark.gpu

CROWD = 16
TARGET = 5  # the request's slot in the crowd
FRAMES = 6
BF16_NOISE_MARGIN = 3.0  # the crowd may differ from the lone run by this many times bf16's own error


def _teacher_forced_logits(runner: ModelRunner, slot: int, num_rows: int, frames: torch.Tensor) -> list[torch.Tensor]:
    """frames [F, num_rows, K] codes fed in turn -> per frame the logits [K, V] of ``slot``."""
    out = []
    rows = slice(0, num_rows)
    positions = runner.positions[:num_rows].clone()  # [B]
    hidden = runner.hidden[:num_rows].clone()  # [B, D]
    for codes in frames:
        kv_len = int(positions.max()) + 1
        logits, hidden = frame_logits(runner.model, rows, hidden, codes, positions, kv_len)
        out.append(logits[slot].float())
        positions += 1
    return out


def test_bf16_logits_in_a_crowd_stay_within_bf16_precision():
    alone = ModelRunner(random_csm1b(), 1, CUDA, torch.bfloat16)
    crowd = ModelRunner(random_csm1b(), CROWD, CUDA, torch.bfloat16)
    reference = ModelRunner(random_csm1b(), 1, CUDA, torch.float32)
    template = "Caller number {} says hello, and then a little more"
    prefill_slots(crowd, range(CROWD), template=template)
    for runner in (alone, reference):  # the target's prompt in slot 0
        prefill_as(runner, 0, TARGET, template=template)
    g = torch.Generator(device=CUDA).manual_seed(0)
    crowd_codes = torch.randint(0, 2048, (FRAMES, CROWD, 32), device=CUDA, generator=g)  # [F, B, K]
    target_codes = crowd_codes[:, TARGET : TARGET + 1]  # [F, 1, K]: the same codes alone
    got = _teacher_forced_logits(crowd, TARGET, CROWD, crowd_codes)
    lone = _teacher_forced_logits(alone, 0, 1, target_codes)
    exact = _teacher_forced_logits(reference, 0, 1, target_codes)
    for frame, (g_, l_, e_) in enumerate(zip(got, lone, exact, strict=True)):
        crowd_error, bf16_error = relative_error(g_, l_), relative_error(l_, e_)
        print(f"frame {frame}: crowd vs alone {crowd_error:.2e}, bf16 alone vs fp32 {bf16_error:.2e}")
        assert crowd_error <= BF16_NOISE_MARGIN * bf16_error, (frame, crowd_error, bf16_error)


def test_fp32_greedy_codes_alone_equal_in_a_crowd_full_size():
    alone = ModelRunner(random_csm1b(), 1, CUDA, torch.float32, use_cuda_graphs=True)
    crowd = ModelRunner(random_csm1b(), 8, CUDA, torch.float32, use_cuda_graphs=True)
    for runner in (alone, crowd):
        runner.capture_graphs()
    longest = prefill_slots(crowd, range(8), top_k=1)
    alone_len = prefill_as(alone, 0, TARGET, top_k=1)  # slot 0 alone holds the crowd's slot-5 request
    for frame in range(FRAMES):
        got = crowd.step(8, longest + frame + 1)[TARGET].clone()
        want = alone.step(1, alone_len + frame + 1)[0].clone()
        assert torch.equal(got, want), frame


def test_fp32_greedy_codes_alone_equal_in_a_crowd_through_the_engine():
    engine = build_engine(EngineConfig(model="tiny-random", device="cuda", dtype="float32", max_batch=32))
    try:
        assert engine.runner.graphs, "the engine should have captured CUDA graphs"
        finished: queue.Queue = queue.Queue()
        num_requests = 48
        for i in range(num_requests):
            request = SpeechRequest(f"request {i}", max_audio_length_ms=800, top_k=1, seed=i)
            engine.submit(request, lambda event, i=i: finished.put((i, event)) if isinstance(event, Finished) else None)
        crowd = dict(finished.get(timeout=300) for _ in range(num_requests))
        for i in (0, 7, 31, 47):
            alone: queue.Queue = queue.Queue()
            engine.submit(SpeechRequest(f"request {i}", max_audio_length_ms=800, top_k=1, seed=i), alone.put)
            while not isinstance(event := alone.get(timeout=60), Finished):
                pass
            assert event.num_frames == crowd[i].num_frames > 0, i
            np.testing.assert_array_equal(event.codes, crowd[i].codes)
    finally:
        engine.stop()
