"""Start-up slot sizing: the arithmetic with given memory figures (an H100 with CSM-1B, a CPU
box, an explicit budget, not enough memory), which graphs are captured, and the engine's order:
warm up on one slot, free it, measure, size, allocate (tiny-random, CPU, a fake probe)."""

from __future__ import annotations

import queue

import pytest
import torch

from csm_service.config import CSM_1B, TINY, EngineConfig
from csm_service.core.events import Finished
from csm_service.core.request import SpeechRequest
from csm_service.engine import engine as engine_module
from csm_service.engine.buckets import backbone_kv_bytes_per_position, graph_lengths, step_weight_bytes
from csm_service.engine.build import build_engine
from csm_service.engine.memory import (
    MemoryFigures,
    NotEnoughMemory,
    kv_bytes_per_slot,
    plan_slots,
    read_meminfo,
    weight_bytes,
)
from csm_service.engine.runner import ModelRunner
from csm_service.model.loader import build_tiny_random

GiB, MiB = 1 << 30, 1 << 20
H100 = MemoryFigures(  # after loading CSM-1B in bf16 and warming up: what start-up would measure
    total_bytes=80 * GiB,
    free_bytes=74 * GiB,
    weight_bytes=3 * GiB,
    activation_peak_bytes=1 * GiB,
    frame_bytes_per_slot=2 * MiB,
)


def test_kv_bytes_per_slot():
    # backbone 16 layers x 2048 positions x 8 KV heads x 64 x (k, v) x 2 bytes; decoder 4 x 32 x 2 x 128 x 2 x 2
    assert kv_bytes_per_slot(CSM_1B, 2) == 64 * MiB + 128 * 1024
    assert kv_bytes_per_slot(CSM_1B, 4) == 2 * kv_bytes_per_slot(CSM_1B, 2)
    assert backbone_kv_bytes_per_position(CSM_1B, 2) == 32 * 1024


def test_h100_with_utilization():
    per_slot = kv_bytes_per_slot(CSM_1B, 2) + 2 * MiB
    room = 74 * GiB - 0.1 * 80 * GiB  # free less the 10 % of the device left alone: 66 GiB
    expected = int((room - 1 * GiB - 1 * GiB) // per_slot)  # less activations and prefix cache: 64 GiB / 66.125 MiB
    plan = plan_slots(H100, kv_bytes_per_slot(CSM_1B, 2), 4096, 0.9, prefix_cache_bytes=1 * GiB)
    assert plan.num_slots == expected == 991 and plan.limited_by == "memory"
    assert plan.per_slot_bytes == per_slot
    # max_batch stays the upper bound
    capped = plan_slots(H100, kv_bytes_per_slot(CSM_1B, 2), 128, 0.9, prefix_cache_bytes=1 * GiB)
    assert capped.num_slots == 128 and capped.limited_by == "max_batch"
    assert "128 slot(s), limited by max_batch" in capped.describe()


def test_utilization_leaves_other_users_their_share():
    # Another process already holds 40 GiB: free is 34 GiB, and 8 GiB of the rest stays untouched.
    busy = MemoryFigures(80 * GiB, 34 * GiB, 3 * GiB, 1 * GiB, 2 * MiB)
    plan = plan_slots(busy, 64 * MiB, 4096, 0.9, prefix_cache_bytes=0)
    assert plan.room_bytes == 26 * GiB
    assert plan.num_slots == (25 * GiB) // (66 * MiB) == 387


def test_explicit_budget():
    plan = plan_slots(H100, 64 * MiB, 4096, 0.9, prefix_cache_bytes=0, budget_bytes=20 * GiB)
    assert plan.room_bytes == 17 * GiB  # the budget covers the weights too
    assert plan.num_slots == (16 * GiB) // (66 * MiB) == 248
    # a budget beyond what is free is held to what is free
    huge = plan_slots(H100, 64 * MiB, 4096, 0.9, prefix_cache_bytes=0, budget_bytes=500 * GiB)
    assert huge.room_bytes == 74 * GiB


def test_cpu_ram_budget():
    box = MemoryFigures(16 * GiB, 9 * GiB, 6 * GiB, 2 * GiB, 8 * MiB)  # CSM-1B fp32 on a 16 GiB machine
    per_slot = kv_bytes_per_slot(CSM_1B, 4)
    plan = plan_slots(box, per_slot, 8, 0.9, prefix_cache_bytes=1 * GiB)
    assert plan.num_slots == 8  # room: 9 - 1.6 - 2 - 1 = 4.4 GiB, 136 MiB per slot: 33 fit
    tight = plan_slots(box, per_slot, 64, 0.9, prefix_cache_bytes=1 * GiB)
    assert tight.num_slots == int((9 * GiB - 0.1 * 16 * GiB - 3 * GiB) // (per_slot + 8 * MiB)) == 33


def test_not_enough_memory_says_what_to_change():
    small = MemoryFigures(8 * GiB, 2 * GiB, 3 * GiB, 1 * GiB, 2 * MiB)
    with pytest.raises(NotEnoughMemory) as info:
        plan_slots(small, kv_bytes_per_slot(CSM_1B, 2), 8, 0.9, prefix_cache_bytes=1 * GiB)
    text = str(info.value)
    assert "not enough memory for one batch slot" in text and "one slot needs 66.1 MiB" in text
    assert "memory_utilization" in text and "prefix_cache_mb" in text
    with pytest.raises(ValueError, match="memory_utilization"):
        plan_slots(H100, 64 * MiB, 8, 1.5, prefix_cache_bytes=0)


def test_graphs_for_csm1b_in_bf16():
    shapes = graph_lengths(64, 2048, backbone_kv_bytes_per_position(CSM_1B, 2), step_weight_bytes(CSM_1B, 2))
    assert 8.5e9 < step_weight_bytes(CSM_1B, 2) < 9.5e9  # ~2 GB backbone + 31 x ~0.22 GB decoder + heads
    assert shapes == {
        1: (2048,),
        2: (2048,),
        4: (2048,),
        8: (2048,),
        16: (256, 2048),
        32: (256, 512, 1024, 2048),
        64: (256, 512, 1024, 2048),
    }
    assert sum(map(len, shapes.values())) == 14  # was 7 batch x 4 length buckets = 28


def test_cpu_runner_captures_nothing_and_keeps_exact_steps():
    runner = ModelRunner(build_tiny_random(seed=1), 4, torch.device("cpu"), torch.float32, use_cuda_graphs=True)
    runner.capture_graphs()
    assert not runner.use_cuda_graphs and not runner.graphs
    assert runner.graph_lengths == graph_lengths(
        4, TINY.max_seq_len, backbone_kv_bytes_per_position(TINY, 4), step_weight_bytes(TINY, 4)
    )
    runner.allocate_slots(3)
    assert runner.num_slots == 3 and runner.batch_buckets == (1, 2, 3)
    assert runner.model.backbone.caches[0].k.shape[0] == 3 and runner.positions.shape == (3,)


def test_weight_bytes_and_meminfo(tmp_path):
    model = build_tiny_random(seed=1)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes(model) >= params
    runner = ModelRunner(model, 2, torch.device("cpu"), torch.float32)  # fused, caches allocated
    cache_bytes = sum(c.k.numel() * 4 * 2 for c in runner.model.backbone.caches)
    assert weight_bytes(runner.model) < params + cache_bytes  # KV caches are not weights
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:   100 kB\nMemAvailable:    8192000 kB\n")
    assert read_meminfo(str(meminfo)) == (16384000 << 10, 8192000 << 10)
    assert read_meminfo(str(tmp_path / "missing")) is None


class FakeProbe:
    """Fixed figures; records how many slots the runner held when free memory was read."""

    runner: ModelRunner | None = None
    slots_when_measured: list[int] = []

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> int:
        return 0

    def peak(self) -> int:
        return 10 * MiB

    def reset_peak(self) -> None:
        pass

    def totals(self) -> tuple[int, int]:
        FakeProbe.slots_when_measured.append(FakeProbe.runner.num_slots if FakeProbe.runner else -1)
        return 1 * GiB, 600 * MiB


def test_engine_sizes_its_slots_after_warm_up(monkeypatch):
    """1 GiB device, 600 MiB free, 10 MiB peaks: (600 - 102.4 - 10) MiB for slots of 2.02 + 10 MiB."""
    monkeypatch.setattr(engine_module, "MemoryProbe", FakeProbe)
    real_warm_up = engine_module.warm_up
    warm_up_slots: list[int] = []

    def warm_up(runner, *args):
        FakeProbe.runner = runner
        warm_up_slots.append(runner.num_slots)
        return real_warm_up(runner, *args)

    monkeypatch.setattr(engine_module, "warm_up", warm_up)
    engine = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=64, prefix_cache_mb=0))
    try:
        expected = int((600 * MiB - 0.1 * GiB - 10 * MiB) // (kv_bytes_per_slot(TINY, 4) + 10 * MiB))
        assert warm_up_slots == [1] and FakeProbe.slots_when_measured == [0]  # warmed on 1, measured on none
        assert engine.num_slots == expected == 40
        assert engine.runner.num_slots == expected and engine.scheduler.num_free == expected
        assert engine.codec._stream_rows == expected
        assert engine.describe()["max_batch"] == expected
        events: queue.Queue = queue.Queue()
        engine.submit(SpeechRequest("Sized", max_audio_length_ms=240, seed=1), events.put)
        while not isinstance(done := events.get(timeout=60), Finished):
            pass
        assert done.reason == "max_length" and done.num_frames == 3
    finally:
        engine.stop()
    FakeProbe.slots_when_measured.clear()
    with pytest.raises(NotEnoughMemory):
        build_engine(
            EngineConfig(model="tiny-random", compile_cpu=False, max_batch=4, prefix_cache_mb=1024)
        )  # 1 GiB > 600 MiB free
