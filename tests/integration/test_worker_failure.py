"""Two engine workers behind one edge (three real processes). Killing one mid-load fails only the
utterances it held, each with a clear error within a second; new requests go to the live worker;
when the dead one comes back on its address, the edge sends it work again."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import aiohttp

from tests.integration.servers import (
    async_wait_until,
    http_status,
    metric,
    start_edge,
    start_engine,
    wait_until,
)

STREAMS = 6


def _requests(metrics_port: int) -> float:
    """Utterances the worker finished (any finish reason)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("csm_engine_requests_total{") and ('"max_length"' in line or '"eos"' in line)
    )


async def _stream_until_end(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict, float]:
    """The last reply of a streamed request (done or error) and when it arrived."""
    while True:
        reply = await ws.receive_json(timeout=120)
        if reply["type"] in ("done", "error"):
            return reply, time.monotonic()


async def test_killing_one_worker_fails_only_its_requests(tmp_path):
    engine_a, port_a, metrics_a = start_engine(tmp_path, "--max-batch", "4")
    engine_b, port_b, metrics_b = start_engine(tmp_path, "--max-batch", "4")
    edge, edge_port = start_edge(tmp_path, f"127.0.0.1:{port_a},127.0.0.1:{port_b}")
    procs = [engine_a, engine_b, edge]
    try:
        for port in (metrics_a, metrics_b):
            wait_until(lambda port=port: metric(port, "csm_engine_ready") == 1, 120, "engine ready")
        wait_until(lambda: http_status(edge_port, "/health") == 200, 60, "edge healthy")
        url = f"ws://127.0.0.1:{edge_port}/v1/native/ws/"
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(url + f"load-{i}") for i in range(STREAMS)]
            for i, ws in enumerate(sockets):
                await ws.send_json(
                    {"type": "synthesize", "text": f"caller {i}", "stream": True, "max_audio_length_ms": 20_000}
                )
            for ws in sockets:  # every utterance is producing audio on one worker or the other
                assert (await ws.receive_json(timeout=60))["type"] == "audio"
            held_by_a = metric(metrics_a, "csm_engine_active_streams")
            assert held_by_a >= 1 and metric(metrics_b, "csm_engine_active_streams") >= 1  # round robin

            engine_a.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            endings = await asyncio.gather(*(_stream_until_end(ws) for ws in sockets))
            failed = [(reply, at) for reply, at in endings if reply["type"] == "error"]
            finished = [reply for reply, _ in endings if reply["type"] == "done"]
            assert len(failed) == held_by_a and len(finished) == STREAMS - held_by_a, endings
            print(
                f"worker killed: {len(failed)} utterances failed after", [f"{at - killed_at:.3f} s" for _, at in failed]
            )
            for reply, at in failed:
                assert reply["error"] == "Engine worker lost", reply
                assert at - killed_at < 1.0, f"the error took {at - killed_at:.2f} s"
            assert all(r["duration_ms"] == 20_000 for r in finished)

            # New requests (HTTP and WebSocket) all go to the live worker.
            served_by_b = _requests(metrics_b)
            for i, ws in enumerate(sockets):
                await ws.send_json({"type": "synthesize", "text": f"again {i}", "max_audio_length_ms": 160})
            replies = [await ws.receive_json(timeout=60) for ws in sockets]
            assert all(r["type"] == "audio" for r in replies), replies
            body = {"text": "over http", "max_audio_length_ms": 160}
            async with http.post(f"http://127.0.0.1:{edge_port}/synthesize", json=body) as resp:
                assert resp.status == 200
            assert _requests(metrics_b) == served_by_b + STREAMS + 1

            # The worker returns on its address: the edge uses it again.
            engine_a2, _, metrics_a2 = start_engine(tmp_path, "--max-batch", "4", grpc_port=port_a)
            procs.append(engine_a2)
            await async_wait_until(lambda: metric(metrics_a2, "csm_engine_ready") == 1, 120, "worker back")

            async def one_round() -> bool:
                for ws in sockets:
                    await ws.send_json({"type": "synthesize", "text": "round", "max_audio_length_ms": 80})
                for ws in sockets:
                    assert (await ws.receive_json(timeout=60))["type"] == "audio"
                return _requests(metrics_a2) > 0

            back_at = time.monotonic()
            while not await one_round():
                assert time.monotonic() < back_at + 30, "the edge never used the returned worker"
                await asyncio.sleep(0.5)
            print(f"returned worker served again {time.monotonic() - back_at:.2f} s after it was ready")
            for ws in sockets:
                await ws.close()
    finally:
        for proc in procs:
            print(proc.log()[-2000:])
            proc.stop()
