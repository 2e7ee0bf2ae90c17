"""``csm-service bench prefill``: what admitting a long cold prompt does to the streams already live.

``--live`` streams run (one frame per chunk, so every frame's arrival is seen); once each has
``--warm-frames`` frames, a request with a new ``--voice-seconds`` voice prompt (random Mimi codes,
so the prefix cache misses) is admitted beside them. Measured per mode, one-shot prefill
(``prefill_chunk_positions`` 0) and chunked (``--chunk-positions``): the live streams' largest
frame interval before the admission and while the voice prompt is prefilled, the time of each
prefill chunk, and the voice request's prefill and first-audio times. Both modes run on one
engine (its chunk size switched between runs), so they share weights, warm-up and allocator.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import queue
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from csm_service.config import TINY_RANDOM, EngineConfig
from csm_service.core.constants import FRAME_MS
from csm_service.core.events import Finished
from csm_service.core.request import Segment, SpeechRequest
from csm_service.engine.engine import Engine
from csm_service.tools.bench_common import SHORT_SENTENCE, VOICE_TRANSCRIPT, command_line, device_name, make_engine

HANG_GUARD_S = 3600.0


def _timed_prefill(engine: Engine, seed: int, chunk_s: list[float]) -> Callable[[], None]:
    """Time every runner.prefill call of the request seeded ``seed``; returns the undo."""
    real = engine.runner.prefill
    device = engine.runner.device

    def prefill(slot, tokens, mask, req_seed, *args, **kwargs):  # noqa: ANN001
        start = time.perf_counter()
        out = real(slot, tokens, mask, req_seed, *args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if req_seed == seed:
            chunk_s.append(time.perf_counter() - start)
        return out

    engine.runner.prefill = prefill  # type: ignore[method-assign]
    return lambda: delattr(engine.runner, "prefill")


def _live_intervals(
    arrivals: list[list[float]], admitted_at: float, voice_first_audio_at: float
) -> tuple[list[float], list[float]]:
    """The live streams' frame intervals (s) before the voice request was admitted, and while it was
    prefilled (until its first audio)."""
    # Before: each stream's intervals once all were live (its first one overlaps the others' admission).
    before = [b - a for times in arrivals for a, b in zip(times[1:], times[2:], strict=False) if b <= admitted_at]
    during = [
        b - a
        for times in arrivals
        for a, b in zip(times, times[1:], strict=False)
        if admitted_at < b <= voice_first_audio_at + 1e-3
    ]
    return before, during


def run_mode(engine: Engine, args: argparse.Namespace, chunk: int, voice_seed: int) -> dict:
    """Live streams, then the cold voice request beside them -> the row of the table."""
    engine.cfg = dataclasses.replace(engine.cfg, prefill_chunk_positions=chunk)
    frames = int(args.voice_seconds * 1000 / FRAME_MS)
    voice = Segment(0, VOICE_TRANSCRIPT, np.random.default_rng(voice_seed).integers(0, 2048, (32, frames)))
    voice_request = SpeechRequest(
        SHORT_SENTENCE, context=(voice,), prefix_segments=1, seed=voice_seed, max_audio_length_ms=FRAME_MS
    )
    arrivals: list[list[float]] = [[] for _ in range(args.live)]
    finished: queue.Queue = queue.Queue()
    submitted: list[float] = []
    chunk_s: list[float] = []
    undo = _timed_prefill(engine, voice_seed, chunk_s)

    def live_sink(i: int) -> Callable[[object], None]:
        def sink(event: object) -> None:
            if isinstance(event, Finished):
                finished.put(event)
                return
            arrivals[i].append(time.perf_counter())
            if not submitted and all(len(a) >= args.warm_frames for a in arrivals):  # engine thread
                submitted.append(time.perf_counter())
                engine.submit(voice_request, lambda e: finished.put(e) if isinstance(e, Finished) else None)

        return sink

    positions = engine.prepare(voice_request).tokens.shape[0]
    live_frames = args.live_frames or math.ceil(positions / max(1, args.chunk_positions)) + 4  # outlast the prefill
    live_ms = FRAME_MS * (args.warm_frames + live_frames)
    try:
        for i in range(args.live):
            engine.submit(SpeechRequest(SHORT_SENTENCE, seed=100 + i, max_audio_length_ms=live_ms), live_sink(i))
        done = [finished.get(timeout=HANG_GUARD_S) for _ in range(args.live + 1)]
    finally:
        undo()
    voice_done = next(f for f in done if f.seed == voice_seed)
    before, during = _live_intervals(arrivals, submitted[0], submitted[0] + voice_done.timings.first_audio_s)
    return {
        "mode": "one-shot" if chunk == 0 else f"chunked ({chunk} positions)",
        "prefill_chunk_positions": chunk,
        "voice_prompt_positions": voice_done.timings.prompt_positions,
        "prefix_cache_hit": voice_done.timings.prefix_cache_hit,
        "chunks": len(chunk_s),
        "chunk_ms_max": 1000 * max(chunk_s),
        "chunk_ms_median": 1000 * statistics.median(chunk_s),
        "live_interval_ms_max_before": 1000 * max(before),
        "live_interval_ms_max_during": 1000 * max(during),
        "live_interval_ms_median_during": 1000 * statistics.median(during),
        "live_frames_during": len(during),
        "voice_prefill_ms": 1000 * voice_done.timings.prefill_s,
        "voice_ttfa_ms": 1000 * voice_done.timings.first_audio_s,
        "all_finished": all(f.reason in ("max_length", "eos") for f in done),
    }


MIN_WARM_FRAMES = 3  # a live stream's intervals before the admission need its 2nd and 3rd frames


def bench_prefill(args: argparse.Namespace) -> dict:
    if args.warm_frames < MIN_WARM_FRAMES:
        raise SystemExit(f"--warm-frames must be at least {MIN_WARM_FRAMES} (intervals before the admission)")
    cfg = EngineConfig(
        model=args.model or TINY_RANDOM,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.live + 1,
        max_queue=0,
        first_chunk_frames=1,
        chunk_frames=1,  # one frame per chunk: each frame's arrival time is seen
        use_cuda_graphs=not args.no_cuda_graphs,
        prefill_chunk_positions=args.chunk_positions,
        cpu_kernels=not args.no_cpu_kernels,
    )
    engine, model_name = make_engine(args.config, cfg)
    try:
        rows = [run_mode(engine, args, chunk, voice_seed=1000 + i) for i, chunk in enumerate((0, args.chunk_positions))]
    finally:
        engine.stop()
    return {
        "benchmark": "prefill",
        "model": model_name,
        "device": device_name(engine.runner.device),
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
        "cuda_graphs": bool(engine.runner.graphs),
        "cpu_kernels": bool(engine.runner.gemv),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "live_streams": args.live,
        "voice_seconds": args.voice_seconds,
        "rows": rows,
    }


def print_prefill_table(r: dict) -> None:
    print(
        f"\n{r['model']} on {r['device']} ({r['dtype']}{', our CPU kernels' if r['cpu_kernels'] else ''}): "
        f"{r['live_streams']} live streams, a cold "
        f"{r['voice_seconds']} s voice prompt ({r['rows'][0]['voice_prompt_positions']} positions) admitted beside them"
    )
    print(
        "| prefill | chunks | chunk ms (max) | live frame interval ms, max before | max while prefilling "
        "| raise | voice prefill ms | voice TTFA ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        raise_ms = row["live_interval_ms_max_during"] - row["live_interval_ms_max_before"]
        print(
            f"| {row['mode']} | {row['chunks']} | {row['chunk_ms_max']:.0f} | {row['live_interval_ms_max_before']:.0f} "
            f"| {row['live_interval_ms_max_during']:.0f} | {raise_ms:+.0f} | {row['voice_prefill_ms']:.0f} "
            f"| {row['voice_ttfa_ms']:.0f} |"
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prefill", help="live streams' frame interval when a long cold prompt is admitted")
    p.add_argument("--model", help="build this model (default tiny-random)")
    p.add_argument("--config", help="random weights of this shape instead (e.g. csm-1b)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--live", type=int, default=4, help="streams live when the prompt arrives")
    p.add_argument("--voice-seconds", type=float, default=20.0)
    p.add_argument(
        "--chunk-positions",
        type=int,
        default=EngineConfig.prefill_chunk_positions,
        help="the chunked mode's prefill_chunk_positions (default: the engine's)",
    )
    p.add_argument("--warm-frames", type=int, default=4, help="frames each live stream has before the admission")
    p.add_argument("--live-frames", type=int, default=0, help="frames after that; 0: enough to outlast the prefill")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-cpu-kernels", action="store_true", help="CPU: oneDNN's products instead of our gemv kernels")
    p.add_argument("--json", help="also write the JSON here")
