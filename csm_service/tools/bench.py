"""Benchmarks: programs that print JSON and a table, never timed tests.

``csm-service bench frame``: ms per 80 ms frame of our model vs transformers'
CsmForConditionalGeneration on the same random weights, the same prompt and the same number of
frames, in one process, for each dtype asked (CUDA graphs on for ours on a GPU).
``csm-service bench engine|prefix|prefill|twilio``: see :mod:`csm_service.tools.bench_engine` and the
other ``bench_*`` modules; this module parses ``csm-service bench`` and runs the one asked for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

import torch

from csm_service.config import NAMED_CONFIGS
from csm_service.engine.runner import ModelRunner
from csm_service.tools import bench_engine, bench_prefill, bench_prefix, bench_twilio
from csm_service.tools.bench_common import command_line, device_name

WARMUP_FRAMES = 3  # both implementations get the same untimed run first
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompt(text_vocab: int, length: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(text_vocab, 128_000), (length,), generator=g)


def time_ours(runner: ModelRunner, ids: torch.Tensor, frames: int) -> dict[str, float]:
    k = runner.cfg.num_codebooks
    tokens = torch.zeros(len(ids), k + 1, dtype=torch.int64)
    tokens[:, -1] = ids
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -1] = True
    tokens_np, mask_np = tokens.numpy(), mask.numpy()

    def run(n: int) -> tuple[float, float]:
        start = time.perf_counter()
        runner.prefill(0, tokens_np, mask_np, seed=1, temperature=0.9, top_k=50)
        _sync(runner.device)
        after_prefill = time.perf_counter()
        for i in range(n):
            codes = runner.step(1, len(ids) + i + 1)
        codes.cpu()
        _sync(runner.device)
        return after_prefill - start, time.perf_counter() - start

    run(WARMUP_FRAMES)
    prefill_s, total_s = run(frames)
    return {
        "total_s": total_s,
        "prefill_s": prefill_s,
        "ms_per_frame": 1000 * total_s / frames,
        "ms_per_step": 1000 * (total_s - prefill_s) / frames,
    }


def time_transformers(hf_model, ids: torch.Tensor, frames: int, device: torch.device) -> dict[str, float]:  # noqa: ANN001
    kwargs = dict(
        do_sample=True,
        temperature=0.9,
        top_k=50,
        depth_decoder_do_sample=True,
        depth_decoder_temperature=0.9,
        depth_decoder_top_k=50,
    )
    input_ids = ids.unsqueeze(0).to(device)

    def run(n: int) -> float:
        start = time.perf_counter()
        out = hf_model.generate(input_ids=input_ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        _sync(device)
        assert out.shape[1] == n, out.shape
        return time.perf_counter() - start

    run(WARMUP_FRAMES)
    total_s = run(frames)
    return {"total_s": total_s, "ms_per_frame": 1000 * total_s / frames}


def bench_frame(args: argparse.Namespace) -> dict:
    from csm_service.model.loader import model_from_state_dict
    from csm_service.tools.peers.transformers_csm import build_hf_model

    cfg = NAMED_CONFIGS[args.config]
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    hf_model = build_hf_model(cfg, seed=0, init_std_scale=1.0)
    hf_model.codec_model = None  # not used: both sides are timed on codes, Mimi is benchmarked apart
    ids = _prompt(cfg.text_vocab_size)
    rows = []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        # A fresh model per dtype: the runner casts, fuses and (on CPU) prepacks it in place.
        runner = ModelRunner(
            model_from_state_dict(hf_model.state_dict(), cfg), 1, device, dtype, use_cuda_graphs=not args.no_cuda_graphs
        )
        runner.capture_graphs()  # no-op on CPU or with --no-cuda-graphs
        mine = time_ours(runner, ids, args.frames)
        mine["cuda_graphs"] = bool(runner.graphs)
        row = {"dtype": name, "ours": mine, "real_time_factor": mine["ms_per_step"] / 80}
        if not args.no_peer:
            hf_model.to(device=device, dtype=dtype)
            peer = time_transformers(hf_model, ids, args.frames, device)
            row["transformers"] = peer
            row["speedup_vs_transformers"] = peer["ms_per_frame"] / mine["ms_per_frame"]
        rows.append(row)
        del runner
    return {
        "benchmark": "frame",
        "config": cfg.name,
        "device": device_name(device),
        "torch": torch.__version__,
        "frames": args.frames,
        "prompt_tokens": len(ids),
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "results": rows,
    }


def print_frame_table(result: dict) -> None:
    print(f"\n{result['config']} on {result['device']}, {result['frames']} frames, torch {result['torch']}")
    print("| dtype | ours ms/frame | ours ms/step (no prefill) | real-time factor | transformers ms/frame | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in result["results"]:
        peer = r.get("transformers", {}).get("ms_per_frame")
        peer_text = f"{peer:.0f}" if peer else "-"
        speedup = f"{r['speedup_vs_transformers']:.2f}x" if peer else "-"
        ours = r["ours"]
        print(
            f"| {r['dtype']} | {ours['ms_per_frame']:.1f} | {ours['ms_per_step']:.1f} | {r['real_time_factor']:.3f} | "
            f"{peer_text} | {speedup} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csm-service bench")
    sub = parser.add_subparsers(dest="which", required=True)
    frame = sub.add_parser("frame", help="ms per frame, ours vs transformers, same weights")
    frame.add_argument("--config", default="csm-1b", choices=sorted(NAMED_CONFIGS))
    frame.add_argument("--device", default="auto")
    frame.add_argument("--dtypes", default="float32,bfloat16")
    frame.add_argument("--frames", type=int, default=16)
    frame.add_argument("--no-peer", action="store_true", help="skip transformers")
    frame.add_argument("--no-cuda-graphs", action="store_true", help="ours eager on CUDA")
    frame.add_argument("--json", help="also write the JSON here")
    bench_engine.add_parser(sub)
    bench_prefix.add_parser(sub)
    bench_prefill.add_parser(sub)
    bench_twilio.add_parser(sub)
    args = parser.parse_args(argv)
    run, table = {
        "engine": (bench_engine.bench_engine, bench_engine.print_engine_table),
        "prefix": (bench_prefix.bench_prefix, bench_prefix.print_prefix_table),
        "prefill": (bench_prefill.bench_prefill, bench_prefill.print_prefill_table),
        "twilio": (bench_twilio.bench_twilio, bench_twilio.print_twilio_table),
        "frame": (bench_frame, print_frame_table),
    }[args.which]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    table(result)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
