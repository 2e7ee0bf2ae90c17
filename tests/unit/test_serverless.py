"""The RunPod serverless handler, called in process on a tiny-random engine."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import wave
from pathlib import Path

import pytest

import csm_service.serverless as serverless
from csm_service.config import EngineConfig, build_config
from csm_service.core.errors import EngineUnavailable
from csm_service.engine.build import build_engine
from csm_service.serverless import (
    BadInput,
    handler_one_result,
    job_concurrency,
    run_job,
    sdk_awaits_one_result,
    worker_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine():
    engine = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=2))
    yield engine
    engine.stop()


async def _all(items) -> list[dict]:
    return [item async for item in items]


async def _until(condition, what: str, deadline_s: float = 60.0) -> None:
    """Wait for a condition (the deadline only turns a hang into a failure)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


async def test_plain_result_is_the_synthesize_response(engine):
    (result,) = await _all(run_job({"text": "Hello", "max_audio_length_ms": 400, "seed": 3}, engine))
    assert result["format"] == "wav" and result["sample_rate"] == 24000 and result["duration_ms"] == 400
    with wave.open(io.BytesIO(base64.b64decode(result["audio_base64"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (24000, 1, 400 * 24)
    assert result["seed"] == 3 and result["finish_reason"] == "max_length" and result["generation_time_ms"] > 0


async def test_stream_yields_chunks_that_join_to_the_whole(engine):
    job = {"text": "Hello", "max_audio_length_ms": 800, "seed": 4, "output_format": "mulaw"}
    (whole,) = await _all(run_job(job, engine))
    items = await _all(run_job({**job, "stream": True}, engine))
    *chunks, done = items
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))) and len(chunks) > 2
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    joined = b"".join(base64.b64decode(c["audio_base64"]) for c in chunks)
    assert joined == base64.b64decode(whole["audio_base64"]) and len(joined) == 6400
    assert done["done"] is True and done["chunks"] == len(chunks) and done["duration_ms"] == 800


@pytest.mark.parametrize(
    "job_input, field",
    [
        (None, None),
        ("just text", None),
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "hi", "speaker": "a"}, "speaker"),
        ({"text": "hi", "max_audio_length_ms": 5}, "max_audio_length_ms"),  # the engine's range check
        ({"text": "hi", "temperature": 0}, "temperature"),
        ({"text": "hi", "output_format": "mp3"}, "output_format"),
        ({"text": "hi", "voice_profile_id": "nobody"}, "voice_profile_id"),
    ],
)
async def test_bad_input_yields_one_clear_error(engine, job_input, field, tmp_path, monkeypatch):
    monkeypatch.setenv("CSM_DATA_DIR", str(tmp_path))  # an empty voice store
    (result,) = await _all(run_job(job_input, engine))
    assert isinstance(result, BadInput)
    assert set(result) <= {"error", "field"} and result["error"]
    assert result.get("field") == field


def test_bad_input_hides_its_error_from_the_sdk_check_only():
    item = BadInput(error="Empty text: text: must be non-empty", field="text")
    assert item.get("error") is None and item.get("error", "x") == "x"  # what the SDK's job runner asks
    assert item["error"] == "Empty text: text: must be non-empty" and item.get("field") == "text"
    assert json.loads(json.dumps({"output": [item]})) == {"output": [dict(item)]}  # what RunPod receives


async def test_stopping_a_job_frees_its_slot(engine):
    """The SDK stops a job by cancelling its task: the engine frees the slot."""
    cancelled_before = engine.stats.cancelled_running
    first = asyncio.Event()

    async def consume() -> None:
        job = {"text": "Hello", "max_audio_length_ms": 20_000, "output_format": "mulaw", "stream": True}
        async for _item in run_job(job, engine):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    assert engine.num_active == 1
    task.cancel()
    await _until(lambda: engine.is_idle(), "the slot to be freed")
    assert engine.stats.cancelled_running == cancelled_before + 1


def test_concurrency_follows_the_engine_slots_unless_overridden(engine):
    assert job_concurrency(engine, build_config({}, environ={})) == 2  # max_batch
    assert job_concurrency(engine, build_config({}, environ={"CSM_RUNPOD_CONCURRENCY": "5"})) == 5
    assert job_concurrency(engine, build_config({}, environ={"CSM_RUNPOD_CONCURRENCY": "0"})) == 2
    config = worker_config(engine, cfg=build_config({}, environ={"CSM_RUNPOD_CONCURRENCY": "3"}))
    assert config["concurrency_modifier"](1) == 3 and config["return_aggregate_stream"] is True
    assert config["handler"] is serverless.handler
    assert worker_config(engine, one_result=True)["handler"] is handler_one_result


@pytest.mark.parametrize(
    "serve_api, test_input, environ, one_result",
    [
        (False, True, {"RUNPOD_WEBHOOK_GET_JOB": "https://api/job-take/$ID"}, True),  # --test_input
        (False, False, {}, True),  # not on RunPod: the SDK runs test_input.json
        (False, False, {"RUNPOD_WEBHOOK_GET_JOB": "https://api/job-take/$ID"}, False),  # the job runner
        (False, False, {"RUNPOD_WEBHOOK_GET_JOB": "x", "RUNPOD_REALTIME_PORT": "8080"}, True),  # /realtime
        (True, False, {}, False),  # --rp_serve_api iterates generators
    ],
)
def test_which_handler_the_sdk_path_needs(serve_api, test_input, environ, one_result):
    assert sdk_awaits_one_result(serve_api, test_input, environ) is one_result


async def test_one_result_handler_returns_what_the_generator_yields(engine, monkeypatch):
    monkeypatch.setattr(serverless, "_engine", engine)
    (result,) = await handler_one_result({"id": "j1", "input": {"text": "Hi", "max_audio_length_ms": 160}})
    assert result["duration_ms"] == 160 and result["format"] == "wav"
    bad = await handler_one_result({"id": "j2", "input": {"text": ""}})
    assert bad == [{"error": "Empty text: text: must be non-empty", "field": "text"}]


async def test_one_result_handler_fails_a_job_the_worker_could_not_run(monkeypatch):
    class StoppedEngine:
        def submit(self, request: object, sink: object) -> None:
            raise EngineUnavailable("engine is stopped")

    monkeypatch.setattr(serverless, "_engine", StoppedEngine())
    out = await handler_one_result({"id": "j3", "input": {"text": "Hi"}})
    assert out == {"error": "engine is stopped"}  # the SDK fails the job (and --test_input exits 1)


async def test_runpod_handler_module(engine, monkeypatch):
    monkeypatch.setattr(serverless, "_engine", engine)
    spec = importlib.util.spec_from_file_location("runpod_handler", ROOT / "runpod" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (result,) = await _all(module.handler({"id": "job-1", "input": {"text": "Hi", "max_audio_length_ms": 160}}))
    assert result["duration_ms"] == 160
    assert (await _all(module.handler({"id": "job-2"})))[0]["error"]
    job_runner = {"RUNPOD_WEBHOOK_GET_JOB": "https://api/job-take/$ID"}
    assert module.start_config([], job_runner)["handler"] is serverless.handler
    assert module.start_config(["--test_input", '{"input": {}}'], job_runner)["handler"] is handler_one_result
    assert module.start_config(["--rp_serve_api"], {})["handler"] is serverless.handler
