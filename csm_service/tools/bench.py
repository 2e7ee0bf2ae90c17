"""Benchmarks: programs that print JSON and a table, never timed tests.

``csm-service bench frame``: ms per 80 ms frame of our model vs transformers'
CsmForConditionalGeneration on the same random weights, the same prompt and the same number of
frames, in one process, for each dtype asked (CUDA graphs on for ours on a GPU). Every run of a
dtype is built first, then timed in ``--repeats`` rounds, transformers and each of ours one after
the other in every round; each reports its median round, and its ratio to transformers is the median
of the per-round ratios (each round against transformers' in the same round). A shared machine's
speed drifts by 10-20 % over minutes: runs timed minutes apart drift apart, and a round's pair
drifts together.
``csm-service bench engine|prefix|prefill|twilio|gemv``: see :mod:`csm_service.tools.bench_engine` and the
other ``bench_*`` modules; this module parses ``csm-service bench`` and runs the one asked for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

import numpy as np
import torch

from csm_service.config import NAMED_CONFIGS
from csm_service.engine.runner import ModelRunner
from csm_service.tools import bench_engine, bench_gemv, bench_mimi, bench_prefill, bench_prefix, bench_twilio
from csm_service.tools.bench_common import command_line, device_name, synchronize

WARMUP_FRAMES = 3  # both implementations get the same untimed run first
GREEDY_FRAMES = 8  # int8 vs bf16: greedy codes compared over this many frames
INT8_MODES = ("int8", "int8_dynamic")  # --quantize modes the frame bench runs (bf16, compiled)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _prompt(text_vocab: int, length: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(text_vocab, 128_000), (length,), generator=g)


def _prompt_rows(ids: torch.Tensor, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    """Text ids -> prompt tokens, mask [S, K + 1] (the text column only)."""
    tokens = torch.zeros(len(ids), num_codebooks + 1, dtype=torch.int64)
    tokens[:, -1] = ids
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -1] = True
    return tokens.numpy(), mask.numpy()


def time_ours(runner: ModelRunner, ids: torch.Tensor, frames: int, warm_up: bool = True) -> dict[str, float]:
    tokens_np, mask_np = _prompt_rows(ids, runner.cfg.num_codebooks)

    def run(n: int) -> tuple[float, float]:
        start = time.perf_counter()
        runner.prefill(0, tokens_np, mask_np, seed=1, temperature=0.9, top_k=50)
        synchronize(runner.device)
        after_prefill = time.perf_counter()
        for i in range(n):
            codes = runner.step(1, len(ids) + i + 1)
        codes.cpu()
        synchronize(runner.device)
        return after_prefill - start, time.perf_counter() - start

    if warm_up:
        run(WARMUP_FRAMES)
    prefill_s, total_s = run(frames)
    return {
        "total_s": total_s,
        "prefill_s": prefill_s,
        "ms_per_frame": 1000 * total_s / frames,
        "ms_per_step": 1000 * (total_s - prefill_s) / frames,
    }


def time_transformers(
    hf_model,  # noqa: ANN001
    ids: torch.Tensor,
    frames: int,
    device: torch.device,
    warm_up: bool = True,
) -> dict[str, float]:
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
        synchronize(device)
        assert out.shape[1] == n, out.shape
        return time.perf_counter() - start

    if warm_up:
        run(WARMUP_FRAMES)
    total_s = run(frames)
    return {"total_s": total_s, "ms_per_frame": 1000 * total_s / frames}


def _variants(device: torch.device, dtype_name: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Our runs for one dtype: (label, ModelRunner options). CPU: eager, compiled, and compiled with
    each int8 mode (bf16 only); with ``--compare-kernels`` also compiled on oneDNN's products instead
    of our gemv kernels (``--no-cpu-kernels``), side by side in the same rounds."""
    if device.type == "cuda":
        return [("eager" if args.no_cuda_graphs else "cuda graphs", {"use_cuda_graphs": not args.no_cuda_graphs})]
    out: list[tuple[str, dict]] = [("eager", {})]
    if not args.no_compile:
        out.append(("compiled", {"compile_cpu": True}))
        if args.compare_kernels:
            out.append(("compiled, oneDNN", {"compile_cpu": True, "cpu_kernels": False}))
        if dtype_name == "bfloat16" and not args.no_int8:
            out += [(f"compiled+{mode}", {"compile_cpu": True, "quantize": mode}) for mode in INT8_MODES]
    return out


def lower_median(values: list[float]) -> float:
    """The median (the lower of the two middle values for an even count)."""
    return sorted(values)[(len(values) - 1) // 2]


def per_round_ratios(ours: list[dict[str, float]], peer: list[dict[str, float]]) -> list[float]:
    """ours / transformers' ms per frame, round by round (each pair timed back to back)."""
    return [round(o["ms_per_frame"] / p["ms_per_frame"], 4) for o, p in zip(ours, peer, strict=True)]


def median_run(runs: list[dict[str, float]]) -> dict[str, object]:
    """The round with the median ms/frame (the lower of the two middle ones for an even count), with
    every round's ms/frame beside it."""
    median = lower_median([run["ms_per_frame"] for run in runs])
    chosen = next(run for run in runs if run["ms_per_frame"] == median)
    return {**chosen, "rounds_ms_per_frame": [round(r["ms_per_frame"], 1) for r in runs]}


def _greedy_frames(runner: ModelRunner, ids: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy codes [frames, K] from the bench prompt, and codebook 0's logits after the prefill [V]."""
    tokens, mask = _prompt_rows(ids, runner.cfg.num_codebooks)
    runner.prefill(0, tokens, mask, seed=1, temperature=1.0, top_k=1)
    with torch.inference_mode():
        logits = runner.model.codebook0_logits(runner.hidden[:1])[0].float().clone()
    codes = torch.stack([runner.step(1, len(ids) + i + 1)[0].clone() for i in range(frames)])
    runner.release(0)
    return codes, logits


def _agreement(codes: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far greedy codes [F, K] follow a reference run: whole frames alike before the first
    difference (after it the two runs continue from different audio), and codes alike overall."""
    alike = (codes == reference).all(dim=1).tolist()
    leading = next((i for i, same in enumerate(alike) if not same), len(alike))
    return {
        "frames_identical_before_first_difference": leading,
        "codes_equal_fraction": float((codes == reference).float().mean()),
    }


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
    greedy: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # label -> (codes, logits) for int8's report
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        row: dict[str, object] = {"dtype": name, "variants": {}}
        runners: dict[str, ModelRunner] = {}
        for label, options in _variants(device, name, args):
            # A fresh model per run: the runner casts, fuses, prepacks or quantizes it in place.
            runners[label] = ModelRunner(model_from_state_dict(hf_model.state_dict(), cfg), 2, device, dtype, **options)
            runners[label].capture_graphs()  # CUDA graphs, or on CPU the compile (timed: runner.compile_s)
        if not args.no_peer:
            hf_model.to(device=device, dtype=dtype)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in runners}
        peer_runs: list[dict[str, float]] = []
        for round_index in range(args.repeats):  # interleaved: every run sees the same machine
            warm_up = round_index == 0
            if not args.no_peer:
                peer_runs.append(time_transformers(hf_model, ids, args.frames, device, warm_up))
            for label, runner in runners.items():
                runs[label].append(time_ours(runner, ids, args.frames, warm_up))
        for label, runner in runners.items():
            mine = median_run(runs[label])
            if peer_runs:  # each round against transformers' in the same round, then the median
                mine["vs_transformers_rounds"] = ratios = per_round_ratios(runs[label], peer_runs)
                mine["vs_transformers"] = lower_median(ratios)
            mine["cuda_graphs"] = bool(runner.graphs)
            mine["compile_s"] = runner.compile_s
            if runner.quantize != "none" or label == "compiled":
                greedy[f"{name} {label}"] = _greedy_frames(runner, ids, GREEDY_FRAMES)
            row["variants"][label] = mine  # type: ignore[index]
        del runners, runner
        # "ours": what serves by default (compiled on CPU, CUDA graphs on a GPU); every run in "variants"
        served = "compiled" if "compiled" in row["variants"] else next(iter(row["variants"]))  # type: ignore[operator]
        row["ours"] = row["variants"][served]  # type: ignore[index]
        row["real_time_factor"] = row["ours"]["ms_per_step"] / 80  # type: ignore[index]
        if peer_runs:
            row["transformers"] = median_run(peer_runs)
            row["speedup_vs_transformers"] = 1 / row["ours"]["vs_transformers"]  # type: ignore[index]
        rows.append(row)
    result = {
        "benchmark": "frame",
        "config": cfg.name,
        "device": device_name(device),
        "torch": torch.__version__,
        "frames": args.frames,
        "repeats": args.repeats,
        "prompt_tokens": len(ids),
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "results": rows,
    }
    if "bfloat16 compiled" in greedy and len(greedy) > 1:
        result["int8_quality"] = _int8_quality(hf_model, cfg, ids, device, greedy)
    if not args.no_mimi:
        result["mimi"] = bench_mimi.time_mimi(device, args.config, args.mimi_rows, args.frames)
    return result


def _int8_quality(hf_model, cfg, ids: torch.Tensor, device: torch.device, greedy: dict) -> dict:  # noqa: ANN001
    """Each int8 mode against bf16 (greedy codes) and against fp32 (codebook 0's logits after the prompt)."""
    from csm_service.model.loader import model_from_state_dict

    fp32 = ModelRunner(model_from_state_dict(hf_model.float().state_dict(), cfg), 2, device, torch.float32)
    fp32_codes, reference_logits = _greedy_frames(fp32, ids, GREEDY_FRAMES)
    del fp32
    bf16_codes, bf16_logits = greedy["bfloat16 compiled"]

    def deviation(logits: torch.Tensor) -> dict[str, float]:
        diff = logits - reference_logits
        return {"relative_l2": float(diff.norm() / reference_logits.norm()), "max_abs": float(diff.abs().max())}

    result: dict[str, object] = {
        "greedy_frames": GREEDY_FRAMES,
        "bf16_vs_fp32": _agreement(bf16_codes, fp32_codes),  # for scale: random weights give near-flat logits
        "logits_vs_fp32": {"bf16": deviation(bf16_logits)},
    }
    for mode in INT8_MODES:
        if f"bfloat16 compiled+{mode}" in greedy:
            codes, logits = greedy[f"bfloat16 compiled+{mode}"]
            result[f"{mode}_vs_bf16"] = _agreement(codes, bf16_codes)
            result["logits_vs_fp32"][mode] = deviation(logits)  # type: ignore[index]
    return result


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_frame_table(result: dict) -> None:
    repeats = result.get("repeats", 1)
    print(
        f"\n{result['config']} on {result['device']}, {result['frames']} frames, torch {result['torch']}, "
        f"median of {repeats} interleaved round(s)"
    )
    print(
        "| dtype | ours | ms/frame | ms/step (no prefill) | compile s | transformers ms/frame | ours / transformers |"
    )
    print("|---|---|---|---|---|---|---|")
    peers = {r["dtype"]: r.get("transformers", {}).get("ms_per_frame") for r in result["results"]}
    for r in result["results"]:
        peer = peers[r["dtype"]]
        for label, ours in r.get("variants", {"ours": r["ours"]}).items():
            vs_peer = ours.get("vs_transformers", ours["ms_per_frame"] / peer if peer else None)
            ratio = f"{vs_peer:.2f}x" if vs_peer is not None else "-"
            print(
                f"| {r['dtype']} | {label} | {ours['ms_per_frame']:.1f} | {ours['ms_per_step']:.1f} | "
                f"{_seconds(ours.get('compile_s'))} | {f'{peer:.0f}' if peer else '-'} | {ratio} |"
            )
    quality = result.get("int8_quality")
    if quality:
        bf16 = quality["bf16_vs_fp32"]
        print(
            f"{quality['greedy_frames']} greedy frames: bf16 vs fp32 {bf16['frames_identical_before_first_difference']} "
            f"identical before the first difference, {100 * bf16['codes_equal_fraction']:.1f} % of codes equal"
        )
        for mode in INT8_MODES:
            if f"{mode}_vs_bf16" in quality:
                agree, logits = quality[f"{mode}_vs_bf16"], quality["logits_vs_fp32"]
                print(
                    f"{mode} vs bf16: {agree['frames_identical_before_first_difference']} frames identical, "
                    f"{100 * agree['codes_equal_fraction']:.1f} % of codes equal; codebook-0 logits vs fp32 "
                    f"(relative L2): bf16 {logits['bf16']['relative_l2']:.4f}, {mode} {logits[mode]['relative_l2']:.4f}"
                )
    for m in result.get("mimi", []):
        print(
            f"Mimi streaming decode, {m.get('dtype', 'float32')}, {m['rows']} rows: {m['ms_per_frame']:.1f} ms per 80 ms frame"
        )
    if result.get("mimi"):
        print(f"Mimi bf16 audio vs fp32: SNR {result['mimi'][0]['bf16_snr_db_vs_fp32']:.1f} dB (random weights)")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csm-service bench")
    sub = parser.add_subparsers(dest="which", required=True)
    frame = sub.add_parser("frame", help="ms per frame, ours vs transformers, same weights")
    frame.add_argument("--config", default="csm-1b", choices=sorted(NAMED_CONFIGS))
    frame.add_argument("--device", default="auto")
    frame.add_argument("--dtypes", default="float32,bfloat16")
    frame.add_argument("--frames", type=int, default=16)
    frame.add_argument("--repeats", type=_at_least_one, default=3, help="rounds, interleaved; medians reported")
    frame.add_argument("--no-peer", action="store_true", help="skip transformers")
    frame.add_argument("--no-cuda-graphs", action="store_true", help="ours eager on CUDA")
    frame.add_argument("--no-compile", action="store_true", help="CPU: eager only")
    frame.add_argument("--no-int8", action="store_true", help="CPU: skip the compiled int8 runs (bf16)")
    frame.add_argument(
        "--compare-kernels", action="store_true", help="CPU: also run compiled on oneDNN instead of our gemv kernels"
    )
    frame.add_argument("--no-mimi", action="store_true", help="skip Mimi's decode timing")
    frame.add_argument("--mimi-rows", default="1,4,8", help="Mimi decode: rows (streams) per call")
    frame.add_argument("--json", help="also write the JSON here")
    bench_engine.add_parser(sub)
    bench_prefix.add_parser(sub)
    bench_prefill.add_parser(sub)
    bench_twilio.add_parser(sub)
    bench_gemv.add_parser(sub)
    args = parser.parse_args(argv)
    run, table = {
        "engine": (bench_engine.bench_engine, bench_engine.print_engine_table),
        "prefix": (bench_prefix.bench_prefix, bench_prefix.print_prefix_table),
        "prefill": (bench_prefill.bench_prefill, bench_prefill.print_prefill_table),
        "twilio": (bench_twilio.bench_twilio, bench_twilio.print_twilio_table),
        "gemv": (bench_gemv.bench_gemv, bench_gemv.print_gemv_table),
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
