"""The RunPod serverless handler, called in process on a tiny-random engine."""

from __future__ import annotations

import base64
import importlib.util
import io
import wave
from pathlib import Path

import pytest

from csm_service.config import EngineConfig
from csm_service.engine.build import build_engine
from csm_service.serverless import run_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine():
    engine = build_engine(EngineConfig(model="tiny-random", max_batch=2))
    yield engine
    engine.stop()


def test_plain_result_is_the_synthesize_response(engine):
    (result,) = list(run_job({"text": "Hello", "max_audio_length_ms": 400, "seed": 3}, engine))
    assert result["format"] == "wav" and result["sample_rate"] == 24000 and result["duration_ms"] == 400
    with wave.open(io.BytesIO(base64.b64decode(result["audio_base64"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (24000, 1, 400 * 24)
    assert result["seed"] == 3 and result["finish_reason"] == "max_length" and result["generation_time_ms"] > 0


def test_stream_yields_chunks_that_join_to_the_whole(engine):
    job = {"text": "Hello", "max_audio_length_ms": 800, "seed": 4, "output_format": "mulaw"}
    (whole,) = list(run_job(job, engine))
    items = list(run_job({**job, "stream": True}, engine))
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
        ({"text": "hi", "output_format": "mp3"}, "output_format"),
    ],
)
def test_bad_input_yields_one_clear_error(engine, job_input, field):
    (result,) = list(run_job(job_input, engine))
    assert set(result) <= {"error", "field"} and result["error"]
    assert result.get("field") == field


def test_runpod_handler_module(engine, monkeypatch):
    import csm_service.serverless as serverless

    monkeypatch.setattr(serverless, "_engine", engine)
    spec = importlib.util.spec_from_file_location("runpod_handler", ROOT / "runpod" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (result,) = list(module.handler({"id": "job-1", "input": {"text": "Hi", "max_audio_length_ms": 160}}))
    assert result["duration_ms"] == 160
    assert list(module.handler({"id": "job-2"}))[0]["error"]
