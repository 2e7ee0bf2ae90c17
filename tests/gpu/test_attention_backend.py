"""Which attention kernel runs on the GPU: the folded formulation (csm_service/model/attention.py)
must run on a fused SDPA backend (flash, memory-efficient or cuDNN), never the math fallback, for
decode steps and prefill, at the backbone's and the depth decoder's shapes, in bf16 and fp32; and
give what the math kernel gives."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from csm_service.engine.frame import FrameInputs, frame_step
from csm_service.engine.runner import ModelRunner
from csm_service.model.attention import attend_exact, attend_folded, causal_mask, folded_bias
from tests.gpu.helpers import CUDA, prefill_slots, random_csm1b

pytestmark = pytest.mark.gpu

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
FUSED_OPS = (
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)
MATH_OP = "aten::_scaled_dot_product_attention_math"
SHAPES = {"backbone": (32, 8, 64), "decoder": (8, 2, 128)}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def _inputs(batch: int, shape: tuple[int, int, int], s: int, kv_len: int, dtype: torch.dtype):
    heads, kv_heads, head_dim = shape
    g = torch.Generator(device=CUDA).manual_seed(0)
    q = torch.randn(batch, heads, s, head_dim, device=CUDA, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, device=CUDA, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device=CUDA, generator=g, dtype=dtype)
    return q, k, v


# (stack, batch, new positions S, cache length L, rows at their own lengths?)
CASES = {
    "backbone-decode": ("backbone", 64, 1, 1500, True),
    "backbone-prefill": ("backbone", 1, 333, 333, False),
    "backbone-prefill-after-prefix": ("backbone", 1, 64, 400, False),
    "decoder-first-step": ("decoder", 64, 2, 2, False),
    "decoder-step": ("decoder", 64, 1, 17, False),
}


def _positions(batch: int, s: int, kv_len: int, ragged: bool) -> torch.Tensor:
    """[B, S]: each row at a random length (a decode step), or the last S positions of the cache."""
    if ragged:
        return torch.randint(0, kv_len, (batch, 1), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
    return torch.arange(kv_len - s, kv_len, device=CUDA).expand(batch, s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_attention_runs_a_fused_kernel(case, dtype):
    stack, batch, s, kv_len, ragged = CASES[case]
    q, k, v = _inputs(batch, SHAPES[stack], s, kv_len, dtype)
    mask = causal_mask(_positions(batch, s, kv_len, ragged), kv_len)  # [B, 1, S, L]
    bias = folded_bias(mask, q.shape[1] // k.shape[1], dtype)
    with sdpa_kernel(FUSED):  # no math fallback: raises if no fused kernel takes these inputs
        fused = attend_folded(q, k, v, bias)
    with sdpa_kernel([SDPBackend.MATH]):
        reference = attend_exact(q.double(), k.double(), v.double(), mask)
    torch.testing.assert_close(fused.double(), reference, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_a_whole_frame_step_runs_only_fused_attention():
    """The real step (backbone + 31 depth-decoder calls) at CSM-1B shapes in bf16, profiled."""
    runner = ModelRunner(random_csm1b(), 8, CUDA, torch.bfloat16)
    longest = prefill_slots(runner, range(8))
    inputs = FrameInputs(
        hidden=runner.hidden,
        positions=runner.positions,
        seeds=runner.seeds,
        frame_index=runner.frame_index,
        temperature=runner.temperature,
        top_k=runner.top_k,
    )
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        frame_step(runner.model, slice(0, 8), inputs, longest + 1)
        torch.cuda.synchronize()
    ops = {event.key: event.count for event in prof.key_averages()}
    fused_calls = sum(ops.get(name, 0) for name in FUSED_OPS)
    print({name: ops[name] for name in (*FUSED_OPS, MATH_OP) if name in ops})
    assert MATH_OP not in ops, ops.get(MATH_OP)
    layers = runner.cfg.backbone.num_layers + (runner.cfg.num_codebooks - 1) * runner.cfg.decoder.num_layers
    assert fused_calls == layers, (fused_calls, layers)


def test_the_exact_formulation_is_what_fell_back_to_math():
    """Not a requirement, a record: whether this torch runs the old formulation (boolean mask +
    enable_gqa) on a fused kernel. Printed; the folded formulation is used on CUDA either way."""
    q, k, v = _inputs(8, SHAPES["backbone"], 1, 1024, torch.bfloat16)
    mask = causal_mask(torch.randint(0, 1024, (8, 1), device=CUDA), 1024)
    try:
        with sdpa_kernel(FUSED):
            attend_exact(q, k, v, mask)
        print(f"torch {torch.__version__}: the exact formulation also runs a fused kernel")
    except RuntimeError as exc:
        print(f"torch {torch.__version__}: the exact formulation needs the math kernel ({str(exc)[:120]})")
