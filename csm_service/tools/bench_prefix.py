"""``csm-service bench prefix``: what the voice-prompt KV cache saves in time to first audio.

One engine, one voice prompt (its transcript and ``--voice-seconds`` of random Mimi codes, so the
prompt has a real voice's length), a short sentence after it. Measured through the engine: time to
first audio and prefill time with no voice, with the voice on a cold cache (the prefix is
prefilled, then cached), and with the voice on a warm cache (its KV is copied in).
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import statistics

import numpy as np
import torch

from csm_service.config import TINY_RANDOM, EngineConfig
from csm_service.core.constants import FRAME_MS
from csm_service.core.events import Finished
from csm_service.core.request import Segment, SpeechRequest
from csm_service.engine.engine import Engine
from csm_service.tools.bench_common import SHORT_SENTENCE, VOICE_TRANSCRIPT, command_line, device_name, make_engine


def _once(engine: Engine, request: SpeechRequest) -> Finished:
    events: queue.Queue = queue.Queue()
    engine.submit(request, events.put)
    while not isinstance(event := events.get(timeout=3600), Finished):
        pass
    return event


def bench_prefix(args: argparse.Namespace) -> dict:
    cfg = EngineConfig(
        model=args.model or TINY_RANDOM,
        device=args.device,
        dtype=args.dtype,
        max_batch=1,
        use_cuda_graphs=not args.no_cuda_graphs,
    )
    engine, model_name = make_engine(args.config, cfg)
    frames = int(args.voice_seconds * 1000 / FRAME_MS)
    rows: dict[str, list[Finished]] = {"no voice": [], "voice, cold cache": [], "voice, warm cache": []}
    try:
        _once(engine, SpeechRequest(SHORT_SENTENCE, max_audio_length_ms=FRAME_MS, seed=0))  # warm run
        for i in range(args.repeats):
            voice = Segment(0, VOICE_TRANSCRIPT, np.random.default_rng(i).integers(0, 2048, (32, frames)))
            plain = SpeechRequest(SHORT_SENTENCE, max_audio_length_ms=FRAME_MS, seed=i)
            voiced = SpeechRequest(
                SHORT_SENTENCE, max_audio_length_ms=FRAME_MS, seed=i, context=(voice,), prefix_segments=1
            )
            rows["no voice"].append(_once(engine, plain))
            rows["voice, cold cache"].append(_once(engine, voiced))  # a new voice each round: a miss
            rows["voice, warm cache"].append(_once(engine, voiced))
    finally:
        engine.stop()
    assert all(not f.timings.prefix_cache_hit for f in rows["voice, cold cache"])
    assert all(f.timings.prefix_cache_hit for f in rows["voice, warm cache"])
    return {
        "benchmark": "prefix",
        "model": model_name,
        "device": device_name(engine.runner.device),
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "voice_seconds": args.voice_seconds,
        "repeats": args.repeats,
        "rows": [
            {
                "case": case,
                "prompt_positions": finished[0].timings.prompt_positions,
                "ttfa_ms_median": 1000 * statistics.median(f.timings.first_audio_s for f in finished),
                "prefill_ms_median": 1000 * statistics.median(f.timings.prefill_s for f in finished),
            }
            for case, finished in rows.items()
        ],
    }


def print_prefix_table(r: dict) -> None:
    print(
        f"\n{r['model']} on {r['device']} ({r['dtype']}), {r['voice_seconds']} s voice prompt, median of {r['repeats']}"
    )
    print("| case | prompt positions | time to first audio ms | prefill ms |")
    print("|---|---|---|---|")
    for row in r["rows"]:
        print(
            f"| {row['case']} | {row['prompt_positions']} | {row['ttfa_ms_median']:.1f} | {row['prefill_ms_median']:.1f} |"
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prefix", help="time to first audio with a voice prompt: no cache vs cached KV prefix")
    p.add_argument("--model", help="build this model (default tiny-random)")
    p.add_argument("--config", help="random weights of this shape instead (e.g. csm-1b)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--voice-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--json", help="also write the JSON here")
