"""``csm-service loadtest``: N concurrent WebSocket sessions plus HTTP clients against a running edge.

Each session pipelines its requests (all sent at once, streamed) and checks what the service
promises: every request answered exactly once, replies in the order the requests were sent, chunk
indexes contiguous and ending with ``final``. HTTP clients post ``/synthesize`` one after another.
Reported: throughput, time to first audio and completion percentiles, errors by text, lost and
misordered replies, and (with ``--pid`` or ``--spawn``) the server's resident memory over the run.

``--spawn`` starts ``csm-service serve --model tiny-random`` on loopback itself, and at the end
sends it SIGTERM and checks that it drains and exits 0. No torch is imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import aiohttp

from csm_service.tools.loadtest_report import Report, RequestResult, percentiles, render
from csm_service.tools.spawn import spawn_serve, wait_healthy


async def run_session(
    http: aiohttp.ClientSession, ws_url: str, index: int, args: argparse.Namespace, report: Report
) -> list[RequestResult]:
    """One session: send every request at once, read until each is answered, check the order."""
    ids = [f"s{index}-r{j}" for j in range(args.requests_per_session)]
    results = {rid: RequestResult(0.0) for rid in ids}
    try:
        ws = await http.ws_connect(f"{ws_url}/load-{index}", heartbeat=None, timeout=aiohttp.ClientWSTimeout(60))
    except (TimeoutError, aiohttp.ClientError):
        report.connect_failures += 1
        for r in results.values():
            r.error = "connect failed"
        return list(results.values())
    async with ws:
        for j, rid in enumerate(ids):
            results[rid].sent_at = time.perf_counter()
            await ws.send_json(
                {
                    "type": "synthesize",
                    "text": f"{args.text} {index} {j}",
                    "stream": True,
                    "request_id": rid,
                    "max_audio_length_ms": args.max_audio_ms,
                    "seed": index * 1000 + j,
                }
            )
        await _read_replies(ws, ids, results, args.timeout_s, report)
    return list(results.values())


async def _read_replies(
    ws: aiohttp.ClientWebSocketResponse,
    ids: list[str],
    results: dict[str, RequestResult],
    timeout_s: float,
    report: Report,
) -> None:
    """Read until every request in ``ids`` (in the order sent) is answered, the socket ends or stalls
    ``timeout_s``; fill ``results`` and count replies out of order in ``report.misordered``."""
    pending = list(ids)  # unanswered, in the order sent: replies must follow it
    next_chunk = 0
    while pending:
        try:
            msg = await ws.receive(timeout=timeout_s)
        except TimeoutError:
            break
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        reply = json.loads(msg.data)
        rid, now = reply.get("request_id"), time.perf_counter()
        if rid not in pending:
            report.misordered += 1  # unknown or already answered
            continue
        result = results[rid]
        if reply["type"] == "error" and rid != pending[0]:  # refused at once (rate, bounds): no order
            result.error = str(reply.get("error"))
            pending.remove(rid)
            continue
        if rid != pending[0]:  # audio of a later request before this one finished
            report.misordered += 1
            continue
        if reply["type"] == "audio":
            if reply.get("chunk_index") != next_chunk:
                report.misordered += 1
            next_chunk += 1
            result.chunks += 1
            result.audio_ms += int(reply["duration_ms"])
            if result.first_audio_s is None:
                result.first_audio_s = now - result.sent_at
            continue
        if reply["type"] == "done":
            result.done_s = now - result.sent_at
        else:
            result.error = str(reply.get("error"))
        pending.pop(0)
        next_chunk = 0


async def run_http_client(
    http: aiohttp.ClientSession, base: str, index: int, args: argparse.Namespace
) -> list[RequestResult]:
    out = []
    for j in range(args.http_requests):
        body = {
            "text": f"{args.text} http {index} {j}",
            "max_audio_length_ms": args.max_audio_ms,
            "output_format": "mulaw",
            "seed": index * 1000 + j,
        }
        result = RequestResult(time.perf_counter())
        try:
            async with http.post(f"{base}/synthesize", json=body) as resp:
                payload = await resp.json()
                if resp.status == 200:
                    result.done_s = time.perf_counter() - result.sent_at
                    result.audio_ms = int(payload["duration_ms"])
                else:
                    result.error = f"HTTP {resp.status} {payload.get('detail', '')[:60]}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            result.error = type(exc).__name__
        out.append(result)
    return out


async def sample_rss(pid: int, samples: list[float], stop: asyncio.Event) -> None:
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]) / 1024)
        except OSError:
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def run(args: argparse.Namespace, pid: int | None = None) -> Report:
    base = args.url.rstrip("/")
    ws_url = base.replace("http", "ws", 1) + "/v1/native/ws"
    report = Report(args.sessions, args.requests_per_session, args.http_clients)
    rss: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, rss, stop)) if pid else None
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s * max(1, args.http_requests))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        started = time.perf_counter()
        session_tasks = [run_session(http, ws_url, i, args, report) for i in range(args.sessions)]
        http_tasks = [run_http_client(http, base, i, args) for i in range(args.http_clients)]
        outcomes = await asyncio.gather(*session_tasks, *http_tasks)
        report.wall_s = round(time.perf_counter() - started, 2)
    stop.set()
    if sampler:
        await sampler
    ws_results = [r for group in outcomes[: args.sessions] for r in group]
    http_results = [r for group in outcomes[args.sessions :] for r in group]
    report.ws_requests = len(ws_results)
    report.ws_completed = sum(r.done_s is not None for r in ws_results)
    report.http_requests = len(http_results)
    report.http_completed = sum(r.done_s is not None for r in http_results)
    report.lost = sum(r.done_s is None and r.error is None for r in ws_results)
    report.errors = dict(Counter(r.error for r in ws_results + http_results if r.error))
    report.audio_seconds = round(sum(r.audio_ms for r in ws_results + http_results if r.done_s) / 1000, 2)
    report.ttfa_ms = percentiles([r.first_audio_s * 1000 for r in ws_results if r.first_audio_s is not None])
    report.complete_ms = percentiles([r.done_s * 1000 for r in ws_results if r.done_s is not None])
    report.http_ms = percentiles([r.done_s * 1000 for r in http_results if r.done_s is not None])
    if rss:
        report.rss_mb = {"start": round(rss[0], 1), "peak": round(max(rss), 1), "end": round(rss[-1], 1)}
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="csm-service loadtest", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the edge (ignored with --spawn)")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--requests-per-session", type=int, default=2)
    p.add_argument("--http-clients", type=int, default=20)
    p.add_argument("--http-requests", type=int, default=2, help="requests per HTTP client, one after another")
    p.add_argument("--max-audio-ms", type=int, default=240)
    p.add_argument("--text", default="Thanks for calling, how can I help")
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole load (memory must not grow)")
    p.add_argument("--pid", type=int, help="sample this server process's memory")
    p.add_argument("--spawn", action="store_true", help="start csm-service serve --model tiny-random itself")
    p.add_argument(
        "--serve-args",
        # One client address poses as every caller: the per-client in-flight cap would refuse it.
        default="--max-batch 32 --max-queue 2048 --max-sessions 1000 --max-inflight-per-key 0",
        help="extra flags for the spawned server",
    )
    p.add_argument("--server-log", default="", help="the spawned server's log file")
    p.add_argument("--json", dest="json_out", default="", help="write the report here as JSON")
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> list[Report]:
    """One report per round; rounds run one after another against the same server."""
    if not args.spawn:
        return [await run(args, args.pid) for _ in range(args.rounds)]
    proc, args.url = spawn_serve(args)
    try:
        await wait_healthy(args.url, proc, 300)
        reports = [await run(args, proc.pid) for _ in range(args.rounds)]
        proc.send_signal(signal.SIGTERM)
        reports[-1].server_exit_code = await asyncio.to_thread(proc.wait, 120)
        return reports
    finally:
        if proc.poll() is None:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reports = asyncio.run(main_async(args))
    for i, report in enumerate(reports, 1):
        print(f"round {i}/{len(reports)}" if len(reports) > 1 else "")
        print(render(report))
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        Path(args.json_out).write_text(json.dumps([asdict(r) for r in reports], indent=2))
    ok = all(r.lost == 0 and r.misordered == 0 and not r.errors and not r.connect_failures for r in reports)
    return 0 if ok and reports[-1].server_exit_code in (None, 0) else 1
