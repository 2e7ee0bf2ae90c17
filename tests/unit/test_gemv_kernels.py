"""Our CPU matrix-vector kernels (model/kernels/gemv.cpp) against plain torch on the same numbers.

They run only on a CPU with AVX-512 bf16 and VNNI; elsewhere these tests skip with that reason and
the model keeps oneDNN's and fbgemm's kernels (tests/unit/test_compiled_step.py covers those).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from csm_service.model.gemv import GemvHeads, GemvLinear
from csm_service.model.kernels import build
from csm_service.model.kernels.ops import (
    block_weight,
    kernels_available,
    quantize_activations,
    reference_gemv_int8,
    unblock_weight,
)
from csm_service.model.quantize import Int8GemvLinear, per_channel_int8

needs_kernels = pytest.mark.skipif(
    not kernels_available(),
    reason=f"CPU gemv kernels unavailable here (need {', '.join(build.REQUIRED_CPU_FLAGS)} and a C++ compiler)",
)
SHAPES = [(1, 32), (7, 64), (2051, 1024), (1536, 96), (64, 8192)]  # (N, K): N not a multiple of 64 too
ROWS = [1, 2, 3, 5, 7, 13]  # within and across chunks of 6 rows


def _f64_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.double() @ w.double().T


@needs_kernels
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", ROWS)
def test_float_kernels_are_the_matrix_product(n, k, m):
    gen = torch.Generator().manual_seed(n * 31 + k + m)
    w = torch.randn(n, k, generator=gen) / k**0.5
    x = torch.randn(m, k, generator=gen)
    out = torch.ops.csm_cpu.gemv_f32(x, block_weight(w), n)
    torch.testing.assert_close(out.double(), _f64_product(x, w), rtol=1e-5, atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    out = torch.ops.csm_cpu.gemv_bf16(xb, block_weight(wb), n)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    exact = _f64_product(xb, wb)  # bf16 inputs, exact sums: ours differs by float32 summation and one rounding
    assert ((out.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-4).all()


@pytest.mark.skipif(
    not (build.cpu_has_flags() and shutil.which(os.environ.get("CXX", "c++"))),
    reason=f"this CPU lacks one of {', '.join(build.REQUIRED_CPU_FLAGS)}, or there is no C++ compiler",
)
def test_the_kernels_build_and_load_where_they_can():
    """Where the CPU and the compiler allow, a failed build is a failure, not every test here skipped."""
    assert kernels_available()


@needs_kernels
def test_a_row_gets_the_same_bits_whatever_shares_its_call():
    """Rows run in chunks of up to 6 (3 for int8) over K tiles of each block of 64 outputs, blocks
    split between threads: a row's result must not depend on M, from one row to a prefill chunk's
    many, nor on the thread count. K = 4096 spans several K tiles in every dtype."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2051, 4096, generator=gen) / 64
    x = torch.randn(70, 4096, generator=gen) * 3
    q, scale = per_channel_int8(w)
    w8, int8 = Int8GemvLinear(w, round_activations=False), Int8GemvLinear(w, round_activations=True)
    cases = [
        ("gemv_f32", x, (block_weight(w),)),
        ("gemv_bf16", x.bfloat16(), (block_weight(w.bfloat16()),)),
        ("gemv_w8", x, (w8.blocked, w8.block_scale)),
        ("gemv_int8", x, (int8.blocked, int8.block_scale)),
    ]
    threads = torch.get_num_threads()
    for op, xs, weights in cases:
        together = getattr(torch.ops.csm_cpu, op)(xs, *weights, 2051)
        for i in range(70):
            alone = getattr(torch.ops.csm_cpu, op)(xs[i : i + 1].contiguous(), *weights, 2051)
            assert torch.equal(alone[0], together[i]), (op, i)
        torch.set_num_threads(1)
        try:
            assert torch.equal(getattr(torch.ops.csm_cpu, op)(xs, *weights, 2051), together), op
        finally:
            torch.set_num_threads(threads)
    reference = x.double() @ (q.double() * scale.double()[:, None]).T
    assert ((w8(x).double() - reference).abs() <= reference.abs().amax() * 1e-5).all()


@needs_kernels
def test_int8_activations_keep_nan_and_survive_tiny_groups():
    """A NaN or an infinity in a row makes that row's outputs NaN (as a float product's would be),
    not finite garbage; other rows are untouched. A group of near-zero inputs rounds to zeros."""
    gen = torch.Generator().manual_seed(0)
    layer = Int8GemvLinear(torch.randn(12, 128, generator=gen), round_activations=True)
    x = torch.randn(4, 128, generator=gen)
    clean = layer(x)
    x[1, 5], x[2, 100] = float("nan"), float("inf")
    x[3, 64:] = 1e-35  # its second group: 1 / scale would overflow
    out = layer(x)
    assert out[1].isnan().all() and out[2].isnan().all()
    assert torch.equal(out[0], clean[0])
    assert out[3].isfinite().all()
    torch.testing.assert_close(out[3], layer(torch.cat([x[3, :64], torch.zeros(64)])[None])[0])


@needs_kernels
@pytest.mark.parametrize("n,k", [(1, 64), (7, 64), (2051, 1024), (64, 8192)])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_int8_kernel_is_its_reference_arithmetic(n, k, m):
    gen = torch.Generator().manual_seed(n + k + m)
    weight = torch.randn(n, k, generator=gen) / k**0.5
    q, scale = per_channel_int8(weight)
    x = torch.randn(m, k, generator=gen) * 3
    for round_activations in (True, False):
        layer = Int8GemvLinear(weight, round_activations)
        assert torch.equal(layer.weight_int8, q) and torch.equal(layer.scale, scale)
        out = layer(x)
        if round_activations:  # gemv_int8: x rounded per group of 64
            reference = reference_gemv_int8(x, q, scale)
        else:  # gemv_w8: weight-only
            reference = x.double() @ (q.double() * scale.double()[:, None]).T
        assert ((out.double() - reference).abs() <= reference.abs().amax() * 1e-5 + 1e-5).all(), round_activations


@needs_kernels
def test_int8_activations_are_rounded_per_group_not_per_row():
    """One outlier input costs only its own group of 64 its precision: with one scale per row (as
    fbgemm rounds) every other input of this row would round to zero."""
    k = 256
    x = torch.full((1, k), 0.01)
    x[0, 0] = 100.0  # an outlier channel, as trained activations have
    xq, xs = quantize_activations(x)
    assert xs.shape == (1, k // 64)
    assert (xq[0, 64:] == 127).all()  # groups 1..3 keep full precision
    weight = torch.zeros(4, k)
    weight[:, 64:] = 1.0  # reads only the small inputs
    out = Int8GemvLinear(weight, round_activations=True)(x)
    torch.testing.assert_close(out, torch.full((1, 4), 0.01 * (k - 64)), rtol=1e-3, atol=0)


@needs_kernels
def test_modules_trace_and_one_graph_serves_every_codebook():
    torch.manual_seed(0)
    linear = GemvLinear(torch.randn(48, 32).bfloat16())
    heads = GemvHeads(torch.randn(5, 32, 41).bfloat16())  # [K - 1, d, V]
    int8 = Int8GemvLinear(torch.randn(40, 64), round_activations=True)
    w8 = Int8GemvLinear(torch.randn(40, 64), round_activations=False)
    x = torch.randn(3, 32).bfloat16()
    compiled = torch.compile(lambda h: torch.nn.functional.silu(linear(h)), dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.nn.functional.silu(linear(x)))
    compiled_int8 = torch.compile(lambda h: int8(h) * 2, dynamic=True, fullgraph=True)
    x8 = torch.randn(2, 64)
    torch.testing.assert_close(compiled_int8(x8), int8(x8) * 2)
    compiled_w8 = torch.compile(lambda h: w8(h) * 2, dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled_w8(x8.bfloat16()), w8(x8.bfloat16()) * 2)
    compiled_heads = torch.compile(lambda cb, h: heads(cb, h) * 2, dynamic=True, fullgraph=True)
    torch._dynamo.utils.counters.clear()
    for codebook in range(1, 6):
        expected = (x.double() @ heads_weight(heads, codebook)).bfloat16() * 2
        torch.testing.assert_close(compiled_heads(codebook, x), heads(codebook, x) * 2)
        torch.testing.assert_close(heads(codebook, x), expected / 2, rtol=2**-7, atol=1e-3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # codebook 1 specialised, then one for all


def heads_weight(heads: GemvHeads, codebook: int) -> torch.Tensor:
    """Codebook's head [d, V] read back from the blocked buffer."""
    return unblock_weight(heads.blocked[codebook - 1], heads.vocab_size).double().T  # [d, V]


@needs_kernels
@pytest.mark.parametrize(
    "call,message",
    [
        (lambda w: torch.ops.csm_cpu.gemv_f32(torch.randn(2, 48), w, 8), "columns"),
        (lambda w: torch.ops.csm_cpu.gemv_f32(torch.randn(2, 32), w, 65), "does not fit"),
        (lambda w: torch.ops.csm_cpu.gemv_f32(torch.randn(32, 2).T, w, 8), "contiguous"),
        (lambda w: torch.ops.csm_cpu.gemv_bf16(torch.randn(2, 32), w, 8), "bfloat16"),
        (lambda w: torch.ops.csm_cpu.gemv_int8(torch.randn(2, 32), w, torch.ones(8), 8), "uint8"),
        (lambda w: torch.ops.csm_cpu.gemv_w8(torch.randn(2, 32), w, torch.ones(8), 8), "int8"),
        (lambda w: torch.ops.csm_cpu.gemv_f32(torch.randn(2, 0), torch.empty(2, 0, 64, 1), 8), "no columns"),
    ],
)
def test_bad_arguments_raise_instead_of_reading_out_of_bounds(call, message):
    w = block_weight(torch.randn(8, 32))
    with pytest.raises(RuntimeError, match=message):
        call(w)


def test_kernels_need_every_cpu_flag(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni\n")  # no avx512_bf16
    assert build.cpu_flags(str(cpuinfo)) >= {"avx512f", "avx512_vnni"}
    assert not build.cpu_has_flags(str(cpuinfo))
    cpuinfo.write_text(f"flags\t\t: fpu {' '.join(build.REQUIRED_CPU_FLAGS)}\n")
    assert build.cpu_has_flags(str(cpuinfo))
    assert build.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_switch_keeps_onednn(tmp_path):
    """--no-cpu-kernels (EngineConfig.cpu_kernels=False): the runner prepacks for oneDNN instead."""
    from csm_service.engine.runner import ModelRunner
    from csm_service.model.fuse import PackedLinear
    from csm_service.model.loader import build_tiny_random

    runner = ModelRunner(build_tiny_random(seed=1), 1, torch.device("cpu"), torch.bfloat16, cpu_kernels=False)
    assert not runner.gemv
    assert not any(isinstance(m, (GemvLinear, GemvHeads, Int8GemvLinear)) for m in runner.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in runner.model.modules())  # tiny: below oneDNN's size
    if kernels_available():
        runner = ModelRunner(build_tiny_random(seed=1), 1, torch.device("cpu"), torch.bfloat16)
        assert runner.gemv and isinstance(runner.model.backbone.layers[0].mlp.gate_up, GemvLinear)


@needs_kernels
def test_a_failed_build_falls_back_instead_of_failing_the_model(tmp_path):
    """No usable compiler (a fresh cache, CXX that always fails): the runner keeps oneDNN's kernels."""
    script = (
        "import sys, torch\n"
        "from csm_service.engine.runner import ModelRunner\n"
        "from csm_service.model.loader import build_tiny_random\n"
        "r = ModelRunner(build_tiny_random(seed=1), 1, torch.device('cpu'), torch.float32, compile_cache_dir=sys.argv[1])\n"
        "print(sorted({type(m).__name__ for m in r.model.modules() if 'Linear' in type(m).__name__ or 'Heads' in type(m).__name__}))\n"
    )
    env = {**os.environ, "CXX": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Gemv" not in done.stdout and "Linear" in done.stdout
    assert "CPU gemv kernels unavailable" in done.stderr
    assert (tmp_path / "csm-kernels").is_dir()  # it did try to build there
    assert not list((tmp_path / "csm-kernels").iterdir())  # and left no library, whole or half-built
