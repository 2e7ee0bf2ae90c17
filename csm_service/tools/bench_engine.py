"""``csm-service bench engine``: the engine as callers see it: time to first audio, single-stream
frame time and real-time factor, and how many streams stay real-time as concurrency rises.

Every number is from the engine's own loop (scheduler, CUDA graphs when on, batched Mimi decode),
with chunk arrival times taken where the engine hands chunks to the caller. ``--model`` runs a
real build (``tiny-random`` or a checkpoint); ``--config csm-1b`` runs random weights of the
full-size shapes with a random full-size Mimi, so speed can be measured without the gated weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from csm_service.config import NAMED_CONFIGS, QUANT_MODES, TINY_RANDOM, EngineConfig
from csm_service.core.constants import FRAME_MS
from csm_service.core.events import Finished
from csm_service.core.request import SpeechRequest
from csm_service.engine.engine import Engine
from csm_service.tools.bench_common import SHORT_SENTENCE, command_line, device_name, make_engine


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_wave(engine: Engine, num_streams: int, audio_ms: int, text: str) -> list[dict]:
    """Submit ``num_streams`` requests at once; per request: first-chunk time and frame interval."""
    arrivals: dict[int, list[tuple[float, int]]] = {i: [] for i in range(num_streams)}
    finished: queue.Queue = queue.Queue()
    submitted: dict[int, float] = {}

    def sink_for(i: int) -> Callable[[object], None]:
        def sink(event: object) -> None:
            if isinstance(event, Finished):
                finished.put((i, event))
            else:
                arrivals[i].append((time.perf_counter(), event.num_frames))  # type: ignore[attr-defined]

        return sink

    for i in range(num_streams):
        submitted[i] = time.perf_counter()
        engine.submit(SpeechRequest(text, max_audio_length_ms=audio_ms, seed=i), sink_for(i))
    results = []
    for _ in range(num_streams):
        i, done = finished.get(timeout=3600)
        times = arrivals[i]
        first_t, first_frames = times[0]
        last_t = times[-1][0]
        later_frames = sum(n for _, n in times) - first_frames
        results.append(
            {
                "ttfa_s": first_t - submitted[i],
                "frame_interval_s": (last_t - first_t) / later_frames if later_frames else float("nan"),
                "num_frames": done.num_frames,
                "total_s": done.timings.total_s,
                "reason": done.reason,
            }
        )
    return results


def bench_engine(args: argparse.Namespace) -> dict:
    levels = [int(v) for v in args.concurrency.split(",")]
    cfg = EngineConfig(
        model=args.model or TINY_RANDOM,
        device=args.device,
        dtype=args.dtype,
        max_batch=max(levels),
        max_queue=0,
        first_chunk_frames=1,
        chunk_frames=args.chunk_frames,
        use_cuda_graphs=not args.no_cuda_graphs,
        compile_cpu=not args.no_compile,
        quantize=args.quantize,
        mimi_dtype=args.mimi_dtype,
    )
    started = time.perf_counter()
    engine, model_name = make_engine(args.config, cfg)
    startup_s = time.perf_counter() - started
    device = engine.runner.device
    try:
        run_wave(engine, 1, 4 * FRAME_MS, SHORT_SENTENCE)  # untimed warm run
        ttfa = [run_wave(engine, 1, FRAME_MS * 2, SHORT_SENTENCE)[0]["ttfa_s"] for _ in range(args.repeats)]
        single = run_wave(engine, 1, args.audio_ms, SHORT_SENTENCE)[0]
        ladder = []
        for n in levels:
            wave = run_wave(engine, n, args.audio_ms, SHORT_SENTENCE)
            intervals = [w["frame_interval_s"] for w in wave]
            ladder.append(
                {
                    "streams": n,
                    "frame_interval_ms_mean": 1000 * statistics.fmean(intervals),
                    "frame_interval_ms_p99": 1000 * _percentile(intervals, 99),
                    "ttfa_ms_p50": 1000 * _percentile([w["ttfa_s"] for w in wave], 50),
                    "ttfa_ms_p99": 1000 * _percentile([w["ttfa_s"] for w in wave], 99),
                    "real_time_streams": sum(i < FRAME_MS / 1000 for i in intervals),
                    "all_finished": all(w["reason"] in ("max_length", "eos") for w in wave),
                }
            )
    finally:
        engine.stop()

    return {
        "benchmark": "engine",
        "model": model_name,
        "device": device_name(device),
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
        "cuda_graphs": bool(engine.runner.graphs),
        "compiled": engine.runner.compiled,
        "quantize": engine.runner.quantize,
        "mimi_dtype": args.mimi_dtype,
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "startup_s": startup_s,
        "ttfa_ms_median": 1000 * statistics.median(ttfa),
        "single_stream_ms_per_frame": 1000 * single["frame_interval_s"],
        "single_stream_real_time_factor": single["frame_interval_s"] / (FRAME_MS / 1000),
        "audio_ms_per_request": args.audio_ms,
        "concurrency": ladder,
    }


def print_engine_table(r: dict) -> None:
    mode = "CUDA graphs" if r["cuda_graphs"] else ("compiled" if r.get("compiled") else "eager")
    quantized = f", {r['quantize']} weights" if r.get("quantize", "none") != "none" else ""
    quantized += f", Mimi {r['mimi_dtype']}" if r.get("mimi_dtype", "float32") != "float32" else ""
    print(f"\n{r['model']} on {r['device']} ({r['dtype']}, {mode}{quantized})")
    print(
        f"time to first audio (engine, short sentence, no context): {r['ttfa_ms_median']:.1f} ms; "
        f"single stream {r['single_stream_ms_per_frame']:.1f} ms per 80 ms frame "
        f"(real-time factor {r['single_stream_real_time_factor']:.3f}); start-up {r['startup_s']:.1f} s"
    )
    print("| streams | ms/frame per stream (mean) | p99 | streams faster than real time | TTFA p50 ms | TTFA p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in r["concurrency"]:
        print(
            f"| {row['streams']} | {row['frame_interval_ms_mean']:.1f} | {row['frame_interval_ms_p99']:.1f} | "
            f"{row['real_time_streams']}/{row['streams']} | {row['ttfa_ms_p50']:.0f} | {row['ttfa_ms_p99']:.0f} |"
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="TTFA, frame time and concurrency ladder through the engine")
    p.add_argument("--model", help="build this model (default tiny-random)")
    p.add_argument("--config", choices=sorted(NAMED_CONFIGS), help="random weights of this shape instead")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--concurrency", default="1,4,8,16", help="stream counts, e.g. 1,8,32,64,128")
    p.add_argument("--audio-ms", type=int, default=2000, help="audio per request in the ladder")
    p.add_argument("--chunk-frames", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="time-to-first-audio samples")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="CPU: the eager frame step")
    p.add_argument("--quantize", default="none", choices=QUANT_MODES, help="CPU: int8 projections (model/quantize.py)")
    p.add_argument("--mimi-dtype", default="float32", choices=("float32", "bfloat16"), help="Mimi's decode")
    p.add_argument("--json", help="also write the JSON here")
