"""``csm-service bench twilio``: Twilio media streams as a phone call sees them.

N simulated calls (:class:`~csm_service.tools.twilio_sim.TwilioSimulator`, Twilio's behaviour as its
docs describe it) connect at once. On each, one utterance is asked for over the control API; once
its audio has started, a second one barges in (``interrupt: true``); with ``--frames-before-barge-in 0``
it plays to its mark instead (underruns over a whole utterance). Reported, over all calls:

- time to first frame: ``POST .../say`` -> the first ``media`` message at the simulator;
- barge-in: ``POST .../say`` with ``interrupt`` -> ``clear`` at the simulator (the cut must come
  within one 20 ms frame);
- pacing: the most audio any call held unplayed at Twilio (the lead, if the sender keeps up), and
  gaps: times Twilio's buffer ran dry mid-utterance (it then plays silence), with their length.

``--spawn`` starts ``csm-service serve --model tiny-random`` on loopback itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import time

import aiohttp

from csm_service.edge.twilio.pacer import FRAME_S
from csm_service.tools.loadtest_report import percentiles
from csm_service.tools.spawn import spawn_serve, wait_healthy
from csm_service.tools.twilio_sim import TwilioSimulator


async def one_call(url: str, index: int, args: argparse.Namespace) -> dict[str, float | int]:
    ws_url = url.replace("http", "ws", 1) + "/v1/twilio/media-stream"
    sid = f"MZbench{index:026d}"
    calls = f"{url}/v1/calls/{sid}"
    async with TwilioSimulator(ws_url, sid) as twilio, aiohttp.ClientSession() as http:
        for _ in range(400):  # the start event registered the call
            async with http.get(calls) as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.025)
        first = {"text": args.text, "max_audio_length_ms": args.audio_ms, "seed": index}
        posted = time.monotonic()
        async with http.post(f"{calls}/say", json=first) as resp:
            assert resp.status == 202, await resp.text()
        while not any(r.event == "media" for r in twilio.log):
            await asyncio.sleep(0.005)
        media = [r for r in twilio.log if r.event == "media"]
        first_frame_ms = (media[0].at - posted) * 1000
        barge_in_ms, end_at = await (
            barge_in(twilio, http, calls, index, args) if args.frames_before_barge_in else played(twilio)
        )
        first_utterance = [r.at for r in twilio.log if r.event == "media" and r.at < end_at]
    # Twilio's playhead: it plays what it holds and, when it runs dry, silence until the next frame.
    play_end, most_unplayed, gaps, gap_ms = None, 0.0, 0, 0.0
    for arrival in first_utterance:
        if play_end is not None and arrival > play_end:
            gaps, gap_ms = gaps + 1, gap_ms + (arrival - play_end) * 1000
        play_end = max(play_end or arrival, arrival) + FRAME_S
        most_unplayed = max(most_unplayed, (play_end - arrival) * 1000)
    return {
        "first_frame_ms": first_frame_ms,
        "barge_in_ms": barge_in_ms,
        "max_unplayed_ms": most_unplayed,
        "gaps": gaps,
        "gap_ms": gap_ms,
        "frames": len(first_utterance),
    }


async def barge_in(
    twilio: TwilioSimulator, http: aiohttp.ClientSession, calls: str, index: int, args: argparse.Namespace
) -> tuple[float, float]:
    """After ``frames_before_barge_in`` frames, a second say interrupts -> (say -> clear ms, clear's arrival)."""
    while sum(r.event == "media" for r in twilio.log) < args.frames_before_barge_in:
        await asyncio.sleep(0.005)
    second = {"text": "Sorry, one moment.", "max_audio_length_ms": 800, "seed": index, "interrupt": True}
    barged = time.monotonic()
    async with http.post(f"{calls}/say", json=second) as resp:
        assert resp.status == 202, await resp.text()
    while not any(r.event == "clear" for r in twilio.log):
        await asyncio.sleep(0.001)
    clear_at = next(r.at for r in twilio.log if r.event == "clear")
    return (clear_at - barged) * 1000, clear_at


async def played(twilio: TwilioSimulator) -> tuple[float, float]:
    """``--frames-before-barge-in 0``: the utterance plays to its end -> (nan: no barge-in, the mark's arrival)."""
    while not any(r.event == "mark" for r in twilio.log):
        await asyncio.sleep(0.005)
    return float("nan"), next(r.at for r in twilio.log if r.event == "mark")


async def run(args: argparse.Namespace, url: str) -> dict:
    rows = []
    for calls in [int(c) for c in args.calls.split(",")]:
        results = await asyncio.gather(*(one_call(url, i, args) for i in range(calls)))
        rows.append(
            {
                "calls": calls,
                "time_to_first_frame_ms": percentiles([r["first_frame_ms"] for r in results]),
                "barge_in_ms": percentiles([r["barge_in_ms"] for r in results if not math.isnan(r["barge_in_ms"])]),
                "max_unplayed_ms": round(max(r["max_unplayed_ms"] for r in results), 1),
                "gaps_per_call": round(sum(r["gaps"] for r in results) / calls, 2),
                "gap_ms_per_call": round(sum(r["gap_ms"] for r in results) / calls, 1),
                "frames": sum(r["frames"] for r in results),
            }
        )
    return {
        "benchmark": "twilio",
        "date": dt.date.today().isoformat(),
        "url": url,
        "audio_ms": args.audio_ms,
        "results": rows,
    }


def bench_twilio(args: argparse.Namespace) -> dict:
    async def main() -> dict:
        if not args.spawn:
            return await run(args, args.url)
        args.serve_args, args.server_log = args.serve_args or "", ""
        proc, url = spawn_serve(args)
        try:
            await wait_healthy(url, proc, 300)
            return {**await run(args, url), "server": "csm-service serve --model tiny-random " + args.serve_args}
        finally:
            proc.kill()
            proc.wait()

    return asyncio.run(main())


def print_twilio_table(r: dict) -> None:
    print(f"\nTwilio media streams against {r['url']}, {r['audio_ms']} ms utterances, {r['date']}")
    print("| calls | first frame p50 / p99 ms | barge-in p50 / p99 / max ms | most unplayed ms | gaps per call (ms) |")
    print("|---|---|---|---|---|")
    for row in r["results"]:
        f, b = row["time_to_first_frame_ms"], row["barge_in_ms"]
        barge = f"{b['p50']:.1f} / {b['p99']:.1f} / {b['max']:.1f}" if b else "-"
        print(
            f"| {row['calls']} | {f['p50']:.0f} / {f['p99']:.0f} | {barge} | "
            f"{row['max_unplayed_ms']:.0f} | {row['gaps_per_call']} ({row['gap_ms_per_call']:.0f} ms) |"
        )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twilio", help="Twilio media streams: first frame, barge-in, pacing (simulated calls)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the edge (ignored with --spawn)")
    p.add_argument("--spawn", action="store_true", help="start csm-service serve --model tiny-random itself")
    p.add_argument("--serve-args", default="", help="extra flags for the spawned server")
    p.add_argument("--calls", default="1,4,8", help="concurrent calls, comma-separated")
    p.add_argument("--audio-ms", type=int, default=2400, help="the first utterance's length")
    p.add_argument(
        "--frames-before-barge-in", type=int, default=25, help="0: no barge-in, the utterance plays to its end"
    )
    p.add_argument("--text", default="Thanks for calling, how can I help you today?")
    p.add_argument("--json", help="also write the JSON here")
