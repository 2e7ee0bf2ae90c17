"""The csm.v1 gRPC API against a real `csm-service engine --model tiny-random` process."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_service.rpc.client import EngineClient, channel_target
from csm_service.rpc.convert import codes_to_proto
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from tests.integration.servers import metric, start_engine, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc, grpc_port, metrics_port = start_engine(
        tmp_path_factory.mktemp("engine"), "--max-batch", "2", "--max-queue", "0"
    )
    try:
        wait_until(lambda: metric(metrics_port, "csm_engine_ready") == 1.0, 120, "engine ready")
        yield {"proc": proc, "addr": f"127.0.0.1:{grpc_port}", "metrics": metrics_port}
    finally:
        print(proc.log()[-3000:])
        proc.stop()


def request(**kw) -> pb.SynthesizeRequest:
    kw.setdefault("text", "Hello from the test.")
    kw.setdefault("max_audio_length_ms", 800)
    kw.setdefault("seed", 7)
    return pb.SynthesizeRequest(**kw)


# 800 ms of audio in each format: bytes per second of the format * 0.8
EXPECTED_BYTES = {
    pb.AUDIO_ENCODING_PCM16_24KHZ: 38_400,
    pb.AUDIO_ENCODING_PCM16_8KHZ: 12_800,
    pb.AUDIO_ENCODING_MULAW_8KHZ: 6_400,
    pb.AUDIO_ENCODING_ALAW_8KHZ: 6_400,
}
RATES = {
    pb.AUDIO_ENCODING_PCM16_24KHZ: 24_000,
    pb.AUDIO_ENCODING_PCM16_8KHZ: 8_000,
    pb.AUDIO_ENCODING_MULAW_8KHZ: 8_000,
    pb.AUDIO_ENCODING_ALAW_8KHZ: 8_000,
}


@pytest.mark.parametrize("encoding", list(EXPECTED_BYTES))
async def test_unary_and_stream_in_every_format(engine, encoding):
    client = EngineClient(engine["addr"])
    try:
        whole = await client.synthesize(request(encoding=encoding), timeout=60)
        assert whole.sample_rate == RATES[encoding] and whole.num_frames == 10
        assert len(whole.audio) == EXPECTED_BYTES[encoding]
        assert whole.duration_ms == pytest.approx(800, abs=1)
        assert whole.finish_reason == pb.FINISH_REASON_MAX_LENGTH and whole.seed == 7 and len(whole.codes) == 320
        chunks = [c async for c in client.stream_chunks(request(encoding=encoding), timeout=60)]
        assert len(chunks) > 2 and chunks[-1].final and not any(c.final for c in chunks[:-1])
        assert [c.sequence for c in chunks] == list(range(len(chunks)))
        assert b"".join(c.audio for c in chunks) == whole.audio  # same seed: same audio
        last = chunks[-1]
        assert last.timings.time_to_first_audio_ms > 0 and last.timings.real_time_factor > 0
        assert 0 < last.timings.time_to_first_audio_ms <= last.timings.generation_time_ms
    finally:
        await client.close()


async def test_context_codes_round_trip(engine):
    client = EngineClient(engine["addr"])
    try:
        pcm = (np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 220) * 8000).astype("<i2")
        prompt = await client.encode_prompt(
            pb.EncodePromptRequest(audio=pcm.tobytes(), sample_rate=16_000, transcript="a tone", speaker=1)
        )
        assert prompt.num_frames == 13 and len(prompt.codes) == 13 * 32 and max(prompt.codes) < 2048
        ctx = pb.ContextSegment(speaker=1, text="a tone", codes=prompt.codes)
        with_ctx = await client.synthesize(request(context=[ctx]), timeout=60)
        without = await client.synthesize(request(), timeout=60)
        assert with_ctx.codes != without.codes
    finally:
        await client.close()


async def test_reflection_lists_the_service(engine):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def services():
        with grpc.insecure_channel(engine["addr"]) as channel:
            return ProtoReflectionDescriptorDatabase(channel).get_services()

    names = await asyncio.to_thread(services)
    assert "csm.v1.TextToSpeechService" in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"text": ""}, "text"),
        ({"text": "x" * 5000}, "text"),
        ({"speaker": -1}, "speaker"),
        ({"max_audio_length_ms": 0}, "max_audio_length_ms"),
        ({"max_audio_length_ms": 10_000_000}, "max_audio_length_ms"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": 50.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 5000}, "top_k"),
        ({"seed": 2**63}, "seed"),
        ({"encoding": 99}, "encoding"),
        ({"context": [pb.ContextSegment(speaker=0, text="c", codes=[1, 2, 3])]}, "context[0].codes"),
        ({"context": [pb.ContextSegment(speaker=0, text="c", codes=[4000] * 32)]}, "context[0].codes"),
        ({"context": [pb.ContextSegment(speaker=0, text="c", codes=[0] * 32 * 2100)]}, "text"),
    ],
)
async def test_invalid_fields_name_the_field(engine, fields, field_name):
    client = EngineClient(engine["addr"])
    try:
        for call in (client.synthesize(request(**fields), timeout=30), _drain(client, request(**fields))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field_name + ":"), err.value.details()
    finally:
        await client.close()


async def test_encode_prompt_rejects_bad_input(engine):
    client = EngineClient(engine["addr"])
    try:
        for msg, needle in [
            (pb.EncodePromptRequest(audio=b"\0\0" * 100, sample_rate=16_000, transcript=""), "transcript"),
            (pb.EncodePromptRequest(audio=b"", sample_rate=16_000, transcript="x"), "audio"),
            (pb.EncodePromptRequest(audio=b"\0" * 3, sample_rate=16_000, transcript="x"), "audio"),
            (pb.EncodePromptRequest(audio=b"\0\0" * 10, sample_rate=100, transcript="x"), "sample_rate"),
            (pb.EncodePromptRequest(audio=b"\0\0" * 8000 * 61, sample_rate=8000, transcript="x"), "audio"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.encode_prompt(msg, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    finally:
        await client.close()


async def _drain(
    client: EngineClient, req: pb.SynthesizeRequest, timeout: float = 30
) -> list[pb.SynthesizeStreamResponse]:
    return [c async for c in client.stream_chunks(req, timeout=timeout)]


def _idle(engine) -> bool:
    return metric(engine["metrics"], "csm_engine_active_streams") == 0.0


async def test_cancel_mid_stream_frees_the_slot(engine):
    client = EngineClient(engine["addr"])
    try:
        calls = [client.synthesize_stream(request(max_audio_length_ms=60_000), timeout=120) for _ in range(2)]
        for call in calls:  # both slots busy
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as err:  # queue 0: a third is refused
            await client.synthesize(request(), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()
        await asyncio.to_thread(wait_until, lambda: _idle(engine), 5, "slots freed after cancel")
        done = await client.synthesize(request(), timeout=60)  # the freed slot serves the next request
        assert done.num_frames == 10
    finally:
        await client.close()


async def test_deadline_is_honoured(engine):
    client = EngineClient(engine["addr"])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.synthesize(request(max_audio_length_ms=60_000), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.to_thread(wait_until, lambda: _idle(engine), 5, "slot freed after deadline")
    finally:
        await client.close()


async def test_health_transitions_and_drain(tmp_path):
    proc, grpc_port, metrics_port = start_engine(tmp_path, "--drain-timeout-s", "20")
    await asyncio.to_thread(wait_until, lambda: _port_open(grpc_port), 60, "gRPC port open", 0.01)
    client = EngineClient(f"127.0.0.1:{grpc_port}")
    # A plain channel to watch health: the client's own channel routes nothing to a worker that
    # is not SERVING (client-side health checking), which the last asserts rely on.
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    health = health_pb2_grpc.HealthStub(plain)
    try:
        seen = []

        async def status():
            try:
                s = (
                    await health.Check(health_pb2.HealthCheckRequest(service="csm.v1.TextToSpeechService"), timeout=1)
                ).status
            except grpc.aio.AioRpcError:
                return None
            if not seen or seen[-1] != s:
                seen.append(s)
            return s

        async def until(wanted: int, timeout: float) -> None:
            end = time.monotonic() + timeout
            while await status() != wanted:
                assert time.monotonic() < end, f"health never became {wanted}: {seen}"
                await asyncio.sleep(0.02)

        await until(SERVING, 120)  # NOT_SERVING while loading, then SERVING
        assert seen[-1] == SERVING and health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
        stream = client.synthesize_stream(request(max_audio_length_ms=2_400), timeout=120)
        await stream.read()
        proc.signal(signal.SIGTERM)
        # Draining: wait for the status itself, not for a fixed time. The server turns health
        # NOT_SERVING and stops the engine's admissions in one step of its event loop, so new work
        # is refused from the moment this is seen.
        await until(health_pb2.HealthCheckResponse.NOT_SERVING, 30)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.synthesize(request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        rest = []  # the running utterance still finishes
        while (chunk := await stream.read()) != grpc.aio.EOF:
            rest.append(chunk)
        assert rest[-1].final and rest[-1].num_frames == 30
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        await client.close()
        await plain.close()
        proc.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_channel_targets():
    assert channel_target("127.0.0.1:5001") == "ipv4:127.0.0.1:5001"
    assert channel_target("127.0.0.1:5001,127.0.0.2:5002") == "ipv4:127.0.0.1:5001,127.0.0.2:5002"
    assert channel_target("engine-headless.default.svc:50051") == "dns:///engine-headless.default.svc:50051"
    assert channel_target("localhost:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("[::1]:7") == "ipv6:[::1]:7"
    with pytest.raises(ValueError):
        channel_target("nonsense")
    assert codes_to_proto(np.arange(64).reshape(32, 2)) == [i for f in range(2) for i in range(f, 64, 2)]


async def test_round_robin_over_two_workers(tmp_path):
    workers = [start_engine(tmp_path) for _ in range(2)]
    client = None
    try:
        for _, _, metrics_port in workers:
            await asyncio.to_thread(
                wait_until, lambda p=metrics_port: metric(p, "csm_engine_ready") == 1.0, 120, "ready"
            )
        client = EngineClient(",".join(f"127.0.0.1:{port}" for _, port, _ in workers))

        def served() -> list[float]:
            out = []
            for _, _, m in workers:
                try:
                    out.append(metric(m, 'csm_engine_requests_total{outcome="max_length"}'))
                except KeyError:  # no request finished there yet
                    out.append(0.0)
            return out

        # round_robin spreads calls over the subchannels that are READY; the second may still be
        # connecting for the first call or two, so send one at a time until both have served.
        for _ in range(20):
            await client.synthesize(request(max_audio_length_ms=160), timeout=60)
            if all(n >= 1 for n in await asyncio.to_thread(served)):
                break
        counts = await asyncio.to_thread(served)
        assert all(n >= 1 for n in counts), counts
        await asyncio.gather(*(client.synthesize(request(max_audio_length_ms=160), timeout=60) for _ in range(6)))
        after = await asyncio.to_thread(served)
        assert sum(after) - sum(counts) == 6 and all(a - c >= 2 for a, c in zip(after, counts, strict=True)), (
            counts,
            after,
        )
    finally:
        if client:
            await client.close()
        for proc, _, _ in workers:
            proc.stop()


async def test_voice_profile_id_resolves_from_the_workers_store(engine):
    """A worker resolves voice_profile_id from its own CSM_DATA_DIR: the profile's prompt goes first,
    as a cached prefix; an unknown id is INVALID_ARGUMENT."""
    from csm_service.model.tokenizer import ByteTokenizer
    from csm_service.voices import VoiceStore

    data_dir = engine["proc"].log_path.parent / "engine-data"  # start_engine's --data-dir
    store = VoiceStore(data_dir)
    try:
        codes = np.random.default_rng(1).integers(0, 2048, (32, 12))
        voice = store.create("Ana", "Hello, I am Ana.", codes, speaker=2, description="", duration_ms=960.0)
    finally:
        store.close()
    client = EngineClient(engine["addr"])
    try:
        plain = await client.synthesize(request(speaker=2, max_audio_length_ms=160), timeout=60)
        voiced = [
            await client.synthesize(
                request(speaker=2, max_audio_length_ms=160, voice_profile_id=voice.voice_id), timeout=60
            )
            for _ in range(2)
        ]
        added = len(ByteTokenizer().encode("[2]Hello, I am Ana.")) + 12 + 1
        assert voiced[0].timings.prompt_positions == plain.timings.prompt_positions + added
        assert voiced[0].timings.context_segments == 1 and voiced[1].timings.prefix_cache_hit
        assert voiced[0].codes == voiced[1].codes
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.synthesize(request(voice_profile_id="voice_missing"), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "voice_profile_id" in err.value.details()
    finally:
        await client.close()
