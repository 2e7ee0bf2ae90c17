"""``csm-service bench gemv``: our CPU matrix-vector kernels against the products they replace.

``--rows`` rows of activations (1: a batch-1 frame step; several: streams batched together; a few
hundred: a prefill chunk) times full-size weights: a depth-decoder step's (4 layers: qkv, o,
gate_up, down) or, with ``--stack backbone``, two backbone layers', ``--sets`` distinct copies so
the weights come from memory, not cache, as in a frame. Each pair is timed in interleaved rounds,
median reported, with the bytes of weight read per second:

| ours | replaces | used for |
|---|---|---|
| ``gemv_f32`` | oneDNN prepacked fp32 | ``--dtype float32`` |
| ``gemv_bf16`` | oneDNN prepacked bf16 | ``--dtype bfloat16`` |
| ``gemv_w8`` | ``torch._weight_int8pack_mm`` (bf16 activations) | ``--quantize int8`` |
| ``gemv_int8`` | fbgemm's ``quantized.linear_dynamic`` | ``--quantize int8_dynamic`` |
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from csm_service.config import CSM_1B
from csm_service.model.kernels.ops import block_scale, block_weight, kernels_available
from csm_service.model.quantize import INT8_MAX, per_channel_int8
from csm_service.tools.bench_common import command_line, device_name

Products = Callable[[], object]


STACK_LAYERS = {"depth": 4, "backbone": 2}  # layers per set: a whole depth step; two backbone layers


def _step_shapes(stack: str) -> list[tuple[int, int]]:
    """[N, K] of every projection in ``STACK_LAYERS[stack]`` layers of csm-1b's depth decoder or backbone."""
    d = CSM_1B.decoder if stack == "depth" else CSM_1B.backbone
    qkv = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    layer = [(qkv, d.dim), (d.dim, d.num_heads * d.head_dim), (2 * d.mlp_dim, d.dim), (d.dim, d.mlp_dim)]
    return layer * STACK_LAYERS[stack]


Pairs = dict[str, tuple[Products, Products, int]]


def _pairs(sets: int, stack: str) -> Callable[[int], Pairs]:
    """Weights built, blocked, packed and quantized once -> rows -> {kernel: (ours, peer, weight
    bytes per call of each)} on that many activation rows."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) * 0.02 for _ in range(sets) for n, k in _step_shapes(stack)]
    count = sum(w.numel() for w in weights)
    ops = torch.ops.csm_cpu
    floats = {}  # dtype -> [(ours' blocked weight, oneDNN's packed one, N)]
    for dtype in (torch.float32, torch.bfloat16):
        cast = [w.to(dtype) for w in weights]
        floats[dtype] = [(block_weight(w), torch.ops.mkldnn._reorder_linear_weight(w, 1), w.shape[0]) for w in cast]
    quantized = [per_channel_int8(w) for w in weights]
    w8 = [(b, block_scale(s, b), q.shape[0]) for q, s in quantized for b in [block_weight(q)]]
    shifted = [((q.to(torch.int16) + INT8_MAX + 1).to(torch.uint8), s) for q, s in quantized]
    int8 = [(b, block_scale(s, b), u.shape[0]) for u, s in shifted for b in [block_weight(u)]]
    pack_mm = [(q, s.bfloat16()) for q, s in quantized]
    with warnings.catch_warnings():  # torch marks the quantized-tensor API deprecated
        warnings.simplefilter("ignore")
        fbgemm = [torch.ops.quantized.linear_prepack(_qtensor(q, s), None) for q, s in quantized]
    ks = [w.shape[1] for w in weights]  # each projection's input width

    def for_rows(rows: int) -> Pairs:
        xs = {k: torch.randn(rows, k, generator=gen) for k in set(ks)}
        xb = {k: x.bfloat16() for k, x in xs.items()}

        def mkldnn(dtype: torch.dtype) -> tuple[Products, Products]:
            inputs = [(xs if dtype == torch.float32 else xb)[k] for k in ks]
            op = ops.gemv_f32 if dtype == torch.float32 else ops.gemv_bf16
            return (
                lambda: [op(x, b, n) for x, (b, _, n) in zip(inputs, floats[dtype], strict=True)],
                lambda: [
                    torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
                    for x, (_, p, _) in zip(inputs, floats[dtype], strict=True)
                ],
            )

        x32, x16 = [xs[k] for k in ks], [xb[k] for k in ks]
        return {
            "gemv_f32 vs oneDNN fp32": (*mkldnn(torch.float32), 4 * count),
            "gemv_bf16 vs oneDNN bf16": (*mkldnn(torch.bfloat16), 2 * count),
            "gemv_w8 vs _weight_int8pack_mm": (
                lambda: [ops.gemv_w8(x, *a) for x, a in zip(x32, w8, strict=True)],
                lambda: [torch._weight_int8pack_mm(x, *a) for x, a in zip(x16, pack_mm, strict=True)],
                count,
            ),
            "gemv_int8 vs fbgemm dynamic": (
                lambda: [ops.gemv_int8(x, *a) for x, a in zip(x32, int8, strict=True)],
                lambda: [torch.ops.quantized.linear_dynamic(x, p, False) for x, p in zip(x32, fbgemm, strict=True)],
                count,
            ),
        }

    return for_rows


def _qtensor(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    zero_points = torch.zeros(len(scale), dtype=torch.int64)
    return torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)


def _seconds(run: Products, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def bench_gemv(args: argparse.Namespace) -> dict:
    if not kernels_available():
        raise SystemExit("our CPU kernels cannot run here (they need AVX-512 bf16 and VNNI, and a C++ compiler)")
    rows = []
    with torch.inference_mode():
        pairs = _pairs(args.sets, args.stack)
        for m, name, (ours, peer, nbytes) in (
            (n_rows, *pair) for n_rows in args.rows for pair in pairs(n_rows).items()
        ):
            ours(), peer()  # warm up
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            for _ in range(args.repeats):  # interleaved: both see the same machine
                times["ours"].append(_seconds(ours, args.calls))
                times["peer"].append(_seconds(peer, args.calls))
            ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
            rows.append(
                {
                    "kernels": name,
                    "rows": m,
                    "ours_ms": 1000 * ours_s,
                    "peer_ms": 1000 * peer_s,
                    "ours_gb_s": nbytes / ours_s / 1e9,
                    "peer_gb_s": nbytes / peer_s / 1e9,
                    "speed_up": peer_s / ours_s,
                }
            )
    return {
        "benchmark": "gemv",
        "device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "weights": f"{args.sets} copies of the projections of {STACK_LAYERS[args.stack]} csm-1b {args.stack} layers",
        "repeats": args.repeats,
        "rows": rows,
    }


def print_gemv_table(r: dict) -> None:
    print(f"\n{r['weights']}, on {r['device']}; median of {r['repeats']} interleaved rounds")
    print("| ours vs peer | rows | ours ms | peer ms | ours GB/s | peer GB/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(
            f"| {row['kernels']} | {row['rows']} | {row['ours_ms']:.2f} | {row['peer_ms']:.2f} | {row['ours_gb_s']:.1f} "
            f"| {row['peer_gb_s']:.1f} | {row['speed_up']:.2f}x |"
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gemv", help="CPU: our matrix-vector kernels vs oneDNN, fbgemm and torch's int8 (full-size shapes)"
    )
    p.add_argument("--sets", type=int, default=2, help="copies of the weights (2 depth steps: ~450 MB in fp32)")
    p.add_argument("--stack", choices=sorted(STACK_LAYERS), default="depth", help="whose weights: see STACK_LAYERS")
    p.add_argument(
        "--rows",
        type=lambda v: [int(r) for r in v.split(",")],
        default=[1],
        help="activation rows per call, comma-separated (1: a frame step; 128-512: a prefill chunk)",
    )
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=10, help="passes over the weights per round")
    p.add_argument("--json", help="also write the JSON here")
