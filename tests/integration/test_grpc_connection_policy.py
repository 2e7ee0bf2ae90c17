"""The edge <-> engine connection policy (issue 15): keepalive pings and the engine's ping policy
agree, and a maximum connection age recycles connections without cutting utterances.

Real grpc.aio servers (EngineServer) and clients (EngineClient) on loopback around one tiny-random
engine built in this process; short intervals stand in for the production ones (10 s pings, 5 s
permitted, 300 s age, 600 s grace).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from csm_service.config import EngineConfig
from csm_service.engine.build import build_engine
from csm_service.metrics import EngineMetrics
from csm_service.rpc.client import EngineClient
from csm_service.rpc.formats import SERVICE_NAME
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.rpc.server import EngineServer, TextToSpeechServiceServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
PING_S = 1.0  # the client's keepalive in these tests
IDLE_S = 6.0  # six pings' worth with no data on the connection: gRPC's default policy GOAWAYs after 3
# gRPC's defaults, i.e. what EngineServer passed before issue 15 (only so_reuseport was set).
GRPC_DEFAULT_POLICY = [("grpc.so_reuseport", 0)]


@pytest.fixture(scope="module")
def engine():
    eng = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=4, max_queue=4))
    yield eng
    eng.stop()


@asynccontextmanager
async def serving(engine, **server_kw):
    """An EngineServer on a free loopback port, serving ``engine`` (which outlives it)."""
    server = EngineServer(EngineMetrics(CollectorRegistry()), "127.0.0.1:0", "tiny-random", **server_kw)
    await server.start()
    await server.attach(engine)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.server.stop(grace=0)


async def connected(addr: str, **client_kw) -> EngineClient:
    """An EngineClient whose channel has a SERVING worker (its Health.Watch stream is open)."""
    client = EngineClient(addr, **client_kw)
    end = time.monotonic() + 60
    while True:
        try:
            if await client.health() == SERVING:
                return client
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > end:
            await client.close()
            raise TimeoutError(f"{addr} never became SERVING")
        await asyncio.sleep(0.05)


def request(**kw) -> pb.SynthesizeRequest:
    kw.setdefault("text", "Keep the line open.")
    kw.setdefault("max_audio_length_ms", 400)
    kw.setdefault("seed", 3)
    return pb.SynthesizeRequest(**kw)


async def read_all(call: grpc.aio.UnaryStreamCall) -> list[pb.SynthesizeStreamResponse]:
    chunks = []
    while (chunk := await call.read()) != grpc.aio.EOF:
        chunks.append(chunk)
    return chunks


def assert_whole(chunks: list[pb.SynthesizeStreamResponse], frames: int) -> None:
    """Every chunk in order, one final chunk last, all the audio the request asked for."""
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert chunks[-1].finish_reason == pb.FINISH_REASON_MAX_LENGTH and chunks[-1].num_frames == frames
    assert sum(len(c.audio) for c in chunks) == frames * 1920 * 2  # PCM16 at 24 kHz, 80 ms frames


async def idle_with_a_watch_open(addr: str) -> str | None:
    """What an edge does between calls: a Health.Watch stream open, no data for a while, pings
    every PING_S. None if the connection and the next stream came through; else how the open
    stream ended."""
    client = await connected(addr, keepalive_time_s=PING_S, keepalive_timeout_s=5)
    try:
        watch = client.health_stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await watch.read()).status == SERVING
        await asyncio.sleep(IDLE_S)  # the idle period is the thing under test
        if watch.done():  # the connection was closed under it
            return f"{(await watch.code()).name}: {await watch.details()}"
        # ... and the next stream on the same channel gets all of its audio.
        assert_whole(await read_all(client.synthesize_stream(request(), timeout=60)), 5)
        assert not watch.done()
        watch.cancel()
        return None
    finally:
        await client.close()


@pytest.mark.parametrize(
    "policy",
    [
        # the project's defaults (5 s permitted, no strikes) with a client pinging faster than that
        {},
        # the interval agreeing with the client keeps the connection alone, strikes enforced or not
        {"min_ping_interval_s": PING_S / 2, "max_ping_strikes": 2},
    ],
    ids=["default-policy", "agreeing-interval-with-strikes"],
)
async def test_idle_connection_survives_keepalive_pings(engine, policy):
    async with serving(engine, **policy) as addr:
        assert await idle_with_a_watch_open(addr) is None


async def test_grpc_default_ping_policy_cuts_the_connection(engine):
    """The control: with gRPC's default server policy (the engine's before issue 15) the same
    client's pings get GOAWAY too_many_pings and the open stream dies, as seen in three runs."""
    async with serving(engine, options=GRPC_DEFAULT_POLICY) as addr:
        ended = await idle_with_a_watch_open(addr)
    assert ended is not None and ended.startswith("UNAVAILABLE") and "ping" in ended.lower(), ended


AGE_S = 2.0  # gRPC adds up to +-10 % of jitter


async def test_max_connection_age_recycles_without_cutting_a_stream(engine, monkeypatch):
    """A stream in flight when its connection reaches the maximum age gets all its chunks (the
    grace); the client reconnects (a fresh connection: what re-resolves DNS) and later requests
    succeed. The servicer holds the stream after its first chunk until a request has come in on a
    new connection, so it is in flight across the age boundary however fast the machine is."""
    peers: list[str] = []  # the client address of every stream, in order: a new port = a new connection
    release = asyncio.Event()
    original = TextToSpeechServiceServicer.SynthesizeStream

    async def recording(self, req, context):
        peers.append(context.peer())
        async for chunk in original(self, req, context):
            yield chunk
            if req.request.request_id == "long" and chunk.sequence == 0:
                await release.wait()  # a slow utterance: nothing more on this stream for now

    monkeypatch.setattr(TextToSpeechServiceServicer, "SynthesizeStream", recording)
    async with serving(engine, max_connection_age_s=AGE_S, max_connection_age_grace_s=120.0) as addr:
        started = time.monotonic()  # before the first connection: it cannot reach its age sooner than AGE_S
        client = await connected(addr)
        try:
            long_call = client.synthesize_stream(request(max_audio_length_ms=1600, request_id="long"), timeout=120)
            first = await long_call.read()
            assert first.sequence == 0 and len(peers) == 1
            while peers[-1] == peers[0]:  # short requests until one arrives on a new connection
                assert time.monotonic() < started + 60, f"the connection was never recycled: {peers}"
                assert_whole(await read_all(client.synthesize_stream(request(), timeout=60)), 5)
                await asyncio.sleep(0.1)
            assert time.monotonic() - started >= AGE_S * 0.8  # recycled by its age (+-10 %), not by accident
            assert not long_call.done()
            release.set()
            rest = await read_all(long_call)
            assert_whole([first, *rest], 20)
            assert await long_call.code() == grpc.StatusCode.OK
            assert_whole(await read_all(client.synthesize_stream(request(), timeout=60)), 5)
            assert (await client.synthesize(request(), timeout=60)).num_frames == 5
        finally:
            release.set()
            await client.close()
