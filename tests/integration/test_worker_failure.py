"""Two engine workers behind one edge (three real processes). A worker SIGKILLed mid-utterance costs
the caller nothing: the edge replays the request (same seed) on the other worker from the first
chunk not yet delivered, and the bytes the caller receives equal an undisturbed run's. With no
worker left serving, the caller gets a clear error within a second. A worker that comes back on
its address gets work again."""

from __future__ import annotations

import base64
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

UTTERANCE = {"type": "synthesize", "text": "failover", "stream": True, "seed": 4242, "max_audio_length_ms": 4000}


def _requests(metrics_port: int) -> float:
    """Utterances the worker finished (any finish reason)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("csm_engine_requests_total{") and ('"max_length"' in line or '"eos"' in line)
    )


async def _chunks_until_end(ws: aiohttp.ClientWebSocketResponse, chunks: list[bytes]) -> tuple[dict, float]:
    """Collect audio chunks into ``chunks``; -> the last reply (done or error) and when it came."""
    while True:
        reply = await ws.receive_json(timeout=120)
        if reply["type"] == "audio":
            chunks.append(base64.b64decode(reply["audio_base64"]))
        elif reply["type"] in ("done", "error"):
            return reply, time.monotonic()


async def _first_chunks(ws: aiohttp.ClientWebSocketResponse, chunks: list[bytes], count: int) -> None:
    while len(chunks) < count:
        reply = await ws.receive_json(timeout=120)
        assert reply["type"] == "audio", reply
        chunks.append(base64.b64decode(reply["audio_base64"]))


def _holder(engines: dict[str, tuple]) -> str:
    """The one worker generating the utterance (by its active-streams gauge)."""
    holding = [name for name, (_, metrics_port) in engines.items() if metric(metrics_port, "csm_engine_active_streams")]
    assert len(holding) == 1, holding
    return holding[0]


async def test_worker_killed_mid_utterance_is_replayed_seamlessly(tmp_path):
    engine_a, port_a, metrics_a = start_engine(tmp_path, "--max-batch", "4")
    engine_b, port_b, metrics_b = start_engine(tmp_path, "--max-batch", "4")
    edge, edge_port = start_edge(tmp_path, f"127.0.0.1:{port_a},127.0.0.1:{port_b}")
    procs = [engine_a, engine_b, edge]
    engines = {"a": (engine_a, metrics_a), "b": (engine_b, metrics_b)}
    try:
        for port in (metrics_a, metrics_b):
            wait_until(lambda port=port: metric(port, "csm_engine_ready") == 1, 120, "engine ready")
        wait_until(lambda: http_status(edge_port, "/health") == 200, 60, "edge healthy")
        url = f"ws://127.0.0.1:{edge_port}/v1/native/ws/"
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + "failover")
            # An undisturbed run: the reference bytes, chunk by chunk.
            await ws.send_json(UTTERANCE)
            reference: list[bytes] = []
            done, _ = await _chunks_until_end(ws, reference)
            assert done["type"] == "done" and done["duration_ms"] == 4000, done
            assert len(reference) > 4

            # The same request; the worker generating it is SIGKILLed after two chunks went out.
            await ws.send_json(UTTERANCE)
            received: list[bytes] = []
            await _first_chunks(ws, received, 2)
            victim = _holder(engines)
            engines[victim][0].signal(signal.SIGKILL)
            end, _ = await _chunks_until_end(ws, received)
            assert end["type"] == "done", end
            assert metric(edge_port, "csm_edge_engine_replays_total") == 1  # the kill landed mid-utterance
            assert [len(c) for c in received] == [len(c) for c in reference]  # the same chunk sequence
            assert b"".join(received) == b"".join(reference)  # byte for byte
            assert end["seed"] == done["seed"] and end["duration_ms"] == done["duration_ms"]
            print(f"worker {victim} killed after 2 of {len(reference)} chunks: the caller got identical bytes")

            # New requests (HTTP and WebSocket) go to the live worker.
            survivor = "b" if victim == "a" else "a"
            served = _requests(engines[survivor][1])
            await ws.send_json({"type": "synthesize", "text": "again", "max_audio_length_ms": 160})
            assert (await ws.receive_json(timeout=60))["type"] == "audio"
            body = {"text": "over http", "max_audio_length_ms": 160}
            async with http.post(f"http://127.0.0.1:{edge_port}/synthesize", json=body) as resp:
                assert resp.status == 200
            assert _requests(engines[survivor][1]) == served + 2

            # The worker returns on its address: the edge uses it again.
            victim_port = port_a if victim == "a" else port_b
            back, _, metrics_back = start_engine(tmp_path, "--max-batch", "4", grpc_port=victim_port)
            procs.append(back)
            await async_wait_until(lambda: metric(metrics_back, "csm_engine_ready") == 1, 120, "worker back")
            back_at = time.monotonic()
            while _requests(metrics_back) == 0:
                assert time.monotonic() < back_at + 30, "the edge never used the returned worker"
                await ws.send_json({"type": "synthesize", "text": "round", "max_audio_length_ms": 80})
                assert (await ws.receive_json(timeout=60))["type"] == "audio"
            print(f"returned worker served again {time.monotonic() - back_at:.2f} s after it was ready")

            # No worker left: a clear error, promptly.
            await ws.send_json(UTTERANCE)
            await _first_chunks(ws, [], 1)
            killed_at = time.monotonic()
            for proc in (engines[survivor][0], back):
                proc.signal(signal.SIGKILL)
            end, at = await _chunks_until_end(ws, [])
            print(f"no worker left: {end} after {at - killed_at:.3f} s")
            assert end["type"] == "error" and end["error"] == "Engine worker lost", end
            assert "no other worker" in end["detail"]
            assert at - killed_at < 5.0  # by construction ~0.75 s (REPLAY_READY_WAIT_S); generous on a busy machine
            await ws.close()
    finally:
        for proc in procs:
            print(proc.log()[-2000:])
            proc.stop()
