"""The compiled CPU frame step (engine/compiled.py) against the eager one, and int8 weights.

Compiled and eager run the same four pieces on the same weights, so they must produce the same
codes, sampled and greedy, for one live row and for several (each row with its own seed, temperature,
top-k and cache length, past 300 positions). The comparison with transformers runs on the
compiled path too (tests/unit/test_equivalence_hf.py). Compiling takes about a minute on 2 cores
the first time; it needs a C++ compiler, and without one these tests are skipped with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_service.config import TINY, EngineConfig
from csm_service.engine.compiled import find_cxx
from csm_service.engine.runner import ModelRunner
from csm_service.engine.sampling import _at_least_kth_largest
from csm_service.model.fuse import PackedHeads, PackedLinear, can_pack_cpu
from csm_service.model.kernels.ops import kernels_available
from csm_service.model.loader import build_tiny_random
from csm_service.model.quantize import Int8DynamicLinear, Int8GemvLinear, Int8Linear, has_vnni, quantize_int8

needs_cxx = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler: Inductor cannot compile the CPU step")
ROWS = 3
FRAMES = 6


def _runner(compiled: bool, cache_dir: str, quantize: str = "none", dtype=torch.float32) -> ModelRunner:
    return ModelRunner(
        build_tiny_random(seed=7),
        ROWS,
        torch.device("cpu"),
        dtype,
        compile_cpu=compiled,
        compile_cache_dir=cache_dir,
        quantize=quantize,
    )


def _prefill_rows(runner: ModelRunner, lengths: tuple[int, ...], top_ks: tuple[int, ...]) -> int:
    """Prompts of ``lengths`` into rows 0.. (random tokens, one text column) -> the longest."""
    rng = np.random.default_rng(3)
    for row, (length, top_k) in enumerate(zip(lengths, top_ks, strict=True)):
        tokens = rng.integers(0, 2048, (length, TINY.num_codebooks + 1))
        tokens[:, -1] = rng.integers(0, 250, length)
        mask = np.ones_like(tokens, dtype=bool)
        runner.prefill(row, tokens, mask, seed=100 + row, temperature=0.7 + 0.2 * row, top_k=top_k)
    return max(lengths)


def _frames(runner: ModelRunner, num_rows: int, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes = [runner.step(num_rows, longest + i + 1).clone() for i in range(FRAMES)]
    return torch.stack(codes), runner.hidden[:num_rows].clone()  # [F, n, K], [n, D]


@needs_cxx
@pytest.mark.parametrize("lengths,top_ks", [((320,), (50,)), ((320, 17, 301), (50, 1, 2051))])
def test_compiled_step_matches_eager(inductor_cache, lengths, top_ks):
    eager = _runner(False, inductor_cache)
    compiled = _runner(True, inductor_cache)
    assert compiled.compiled and not eager.compiled
    results = []
    for runner in (eager, compiled):
        longest = _prefill_rows(runner, lengths, top_ks)
        results.append(_frames(runner, len(lengths), longest))
    (codes_e, hidden_e), (codes_c, hidden_c) = results
    assert torch.equal(codes_c, codes_e)
    torch.testing.assert_close(hidden_c, hidden_e, rtol=1e-4, atol=1e-4)


@needs_cxx
def test_capture_times_the_compile_and_restores_state(inductor_cache):
    runner = _runner(True, inductor_cache)
    _prefill_rows(runner, (40,), (50,))
    before = [t.clone() for t in runner._state()]
    runner.capture_graphs()  # what the engine does after sizing its slots
    assert runner.compile_s is not None and runner.compile_s > 0
    for tensor, value in zip(runner._state(), before, strict=True):
        assert torch.equal(tensor, value)


def test_int8_linear_is_the_dequantized_product():
    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    layer = Int8Linear(weight)
    x = torch.randn(3, 5, 64)
    dequantized = layer.weight_int8.float() * layer.scale.float()[:, None]  # [N, K]
    torch.testing.assert_close(layer(x), x @ dequantized.T, rtol=1e-4, atol=1e-4)
    # Per-channel symmetric: each row's largest weight is exactly +-127 steps, and the error is at most half a step.
    assert layer.weight_int8.abs().amax(dim=1).eq(127).all()
    assert ((dequantized - weight).abs() <= layer.scale.float()[:, None] / 2 + 1e-7).all()


def test_int8_dynamic_linear_is_within_the_activation_rounding_of_the_dequantized_product():
    """W8A8: the same int8 weights, the input rounded per tensor (asymmetric, 255 steps; 127 without
    VNNI). Each output can be off by at most half an input step times the row's weight mass."""
    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    layer = Int8DynamicLinear(weight)
    reference = Int8Linear(weight)
    assert torch.equal(layer.weight_int8, reference.weight_int8)
    dequantized = layer.weight_int8.float() * layer.scale[:, None]  # [N, K]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 64).to(dtype)
        out = layer(x)
        assert out.dtype == dtype and out.shape == (3, 5, 96)
        exact = x.float() @ dequantized.T
        span = float(x.float().max().clamp_min(0) - x.float().min().clamp_max(0))
        half_step = span / (255 if has_vnni() else 127) / 2
        bound = half_step * dequantized.abs().sum(dim=1) * 1.01 + 1e-4  # [N]
        if dtype == torch.bfloat16:
            bound = bound + exact.abs() * 2**-8  # the output's own rounding to bf16
        assert ((out.float() - exact).abs() <= bound).all()
        assert (out.float() - exact).abs().max() > 0  # activations really are rounded (not a float product)


def test_int8_dynamic_traces_through_its_handle_op():
    torch.manual_seed(0)
    layer = Int8DynamicLinear(torch.randn(48, 32))
    compiled = torch.compile(lambda x: layer(x).relu() * 2, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 32)
    assert torch.equal(compiled(x), layer(x).relu() * 2)


# Codebook-0 logits' relative distance from fp32 on tiny-random: ~3 % weight-only, ~9 % with the
# activations rounded per row by fbgemm, ~5.5 % rounded per group of 64 by our kernel (measured); a
# wrong scale or a transposed weight gives ~100 %. int8_dynamic runs our kernel where it can.
_GEMV = kernels_available()


@pytest.mark.parametrize(
    "mode,kind,limit",
    [
        ("int8", Int8GemvLinear if _GEMV else Int8Linear, 0.05),
        ("int8_dynamic", Int8GemvLinear if _GEMV else Int8DynamicLinear, 0.15),
    ],
)
def test_int8_runner_quantizes_every_projection_and_stays_close(mode, kind, limit):
    model = build_tiny_random(seed=7)
    reference = ModelRunner(build_tiny_random(seed=7), 1, torch.device("cpu"), torch.float32)
    quantized = ModelRunner(model, 1, torch.device("cpu"), torch.float32, quantize=mode)
    layers = [m for m in quantized.model.modules() if isinstance(m, kind)]
    assert len(layers) == 4 * (TINY.backbone.num_layers + TINY.decoder.num_layers) + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.model.backbone.modules())
    for runner in (reference, quantized):
        _prefill_rows(runner, (30,), (1,))
    with torch.inference_mode():
        ref_logits = reference.model.codebook0_logits(reference.hidden[:1])
        q_logits = quantized.model.codebook0_logits(quantized.hidden[:1])
    relative = (q_logits - ref_logits).norm() / ref_logits.norm()
    assert relative < limit, relative


def test_int8_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="CPU only"):
        ModelRunner(build_tiny_random(seed=7), 1, torch.device("meta"), torch.float32, quantize="int8")
    with pytest.raises(ValueError, match="one of none, int8"):
        ModelRunner(build_tiny_random(seed=7), 1, torch.device("cpu"), torch.float32, quantize="int4")
    with pytest.raises(ValueError, match="one of none, int8"):
        EngineConfig(quantize="int4")
    with pytest.raises(RuntimeError, match="fuse the projections"):
        quantize_int8(build_tiny_random(seed=7))


def test_counting_top_k_picks_the_same_candidates_as_sorting():
    """The compiled step finds the top-k candidates by bisection (Inductor has no CPU sort): the
    same mask as sorting, ties, signed zeros and -inf included."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        x = torch.randn(4, 2051, generator=generator) * 10.0 ** torch.randint(-3, 4, (1,), generator=generator).item()
        if trial % 3 == 0:
            x = x.round()  # many ties
        if trial % 5 == 0:
            x[:, :7], x[:, 7:9], x[0, 10] = 0.0, -0.0, float("-inf")
        k = torch.randint(1, 2052, (4,), generator=generator)
        kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
        assert torch.equal(_at_least_kth_largest(x, k), x >= kth), trial


@needs_cxx
@pytest.mark.skipif(not can_pack_cpu(), reason="no oneDNN linear kernels in this torch build")
def test_packed_weights_trace_through_the_handle_op():
    """Prepacked oneDNN weights (full-size models) inside a compiled graph: the handle op gives the
    eager product, and one graph serves every codebook's head (the codebook is symbolic)."""
    torch.manual_seed(0)
    linear = PackedLinear(torch.randn(48, 32))
    heads = PackedHeads(torch.randn(5, 32, 40))  # [K - 1, d, V]
    x = torch.randn(3, 32)
    compiled_linear = torch.compile(lambda h: torch.nn.functional.silu(linear(h)), dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled_linear(x), torch.nn.functional.silu(linear(x)), rtol=1e-5, atol=1e-5)
    compiled_heads = torch.compile(lambda cb, h: heads(cb, h) * 2, dynamic=True, fullgraph=True)
    torch._dynamo.utils.counters.clear()
    for codebook in range(1, 6):
        torch.testing.assert_close(compiled_heads(codebook, x), heads(codebook, x) * 2, rtol=1e-5, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # codebook 1 specialised, then one for all


@pytest.mark.parametrize("op", ["packed_linear", "int8_dynamic_linear"])
def test_handle_ops_have_no_python_autograd_layer(op):
    """A full-size frame calls these ~600 times: registered through ``torch.library.custom_op`` each
    call went through a Python autograd kernel first (~15-30 us measured, docs/benchmarks.md). They
    are plain CPU kernels with a fake for tracing (model/handle_ops.py)."""
    name = f"csm::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta")  # the fake kernel
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd")
