"""Our RunPod handler under the SDK: its job runner (the path a real worker takes), its local API
(`runpod/handler.py --rp_serve_api`) and its local test job (`--test_input`)."""

from __future__ import annotations

import ast
import asyncio
import base64
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import urllib.request
import wave

import pytest

import csm_service.serverless as serverless
from csm_service.config import EngineConfig
from csm_service.engine.build import build_engine
from tests.integration.servers import ROOT, Process, free_port, wait_until

runpod = pytest.importorskip("runpod", reason="the runpod SDK is not installed (pip install runpod)")


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=60).read())


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("runpod") / "runpod.log"
    proc = Process(
        ["--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        log,
        env={"CSM_MODEL": "tiny-random", "PYTHONPATH": str(ROOT)},
        script=str(ROOT / "runpod" / "handler.py"),
        cwd=log.parent,  # not the repository root, where runpod/ would shadow the SDK
    )
    try:
        wait_until(lambda: _post(port, "/runsync", {"input": {"text": "up?", "max_audio_length_ms": 80}}), 120, "up")
        yield port
    finally:
        print(proc.log()[-2000:])
        proc.stop()


def test_runsync_plain_result_and_error(sdk_server):
    out = _post(
        sdk_server, "/runsync", {"input": {"text": "Hello", "max_audio_length_ms": 400, "output_format": "mulaw"}}
    )
    assert out["status"] == "COMPLETED"
    (result,) = out["output"]
    assert result["format"] == "mulaw_8khz" and len(base64.b64decode(result["audio_base64"])) == 3200
    bad = _post(sdk_server, "/runsync", {"input": {"text": ""}})
    assert bad["output"] == [{"error": "Empty text: text: must be non-empty", "field": "text"}]


def test_run_then_stream_gives_chunks(sdk_server):
    job = _post(
        sdk_server,
        "/run",
        {"input": {"text": "Hi", "max_audio_length_ms": 400, "output_format": "mulaw", "stream": True}},
    )
    items: list[dict] = []

    def poll() -> bool:  # /stream returns what the handler yielded since the last call
        reply = _post(sdk_server, f"/stream/{job['id']}", {})
        items.extend(entry["output"] for entry in reply.get("stream", []))
        return reply["status"] == "COMPLETED"

    wait_until(poll, 60, "stream complete")
    *chunks, done = items
    assert len(chunks) >= 2 and chunks[-1]["final"] and done["done"] and done["chunks"] == len(chunks)
    assert sum(len(base64.b64decode(c["audio_base64"])) for c in chunks) == 3200


# -- the SDK's job runner (JobScaler -> handle_job -> run_job_generator), in process ---------------------------------

SLOTS = 3
JOB_RUNNER_ENV = {"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/x/job-take/$ID?gpu=none"}


@pytest.fixture(scope="module")
def engine():
    engine = build_engine(EngineConfig(model="tiny-random", compile_cpu=False, max_batch=SLOTS))
    yield engine
    engine.stop()


@pytest.fixture
def worker_config(engine, monkeypatch):
    """The config `python runpod/handler.py` gives `runpod.serverless.start` on a RunPod worker."""
    monkeypatch.setattr(serverless, "_engine", engine)
    monkeypatch.delenv("CSM_RUNPOD_CONCURRENCY", raising=False)
    spec = importlib.util.spec_from_file_location("runpod_handler", ROOT / "runpod" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_config([], JOB_RUNNER_ENV)


class FakeRunPod:
    """RunPod's side of the job runner: hands out jobs, receives streamed items and results.

    Only the transport is replaced (the job-take fetcher, which the SDK lets a local test set, and
    the two POSTs); the SDK's scaler and job handling run as they are.
    """

    def __init__(self, jobs: list[dict]) -> None:
        self.pending = list(jobs)
        self.expected = len(jobs)
        self.asked: list[int] = []  # how many jobs the worker asked for, per job-take
        self.results: dict[str, dict] = {}  # job id -> what the worker sent as the job's result
        self.streamed: dict[str, list] = {}  # job id -> the streamed items
        self.finished = asyncio.Event()
        self.scaler = None

    async def take(self, session, num_jobs: int):
        self.asked.append(num_jobs)
        if self.pending:
            batch, self.pending = self.pending[:num_jobs], self.pending[num_jobs:]
            return batch
        await self.finished.wait()  # a long-poll with nothing more to give
        return None

    async def send_result(self, session, job_data: dict, job: dict, is_stream: bool = False) -> None:
        self.results[job["id"]] = json.loads(json.dumps(job_data))  # as RunPod receives it
        if len(self.results) == self.expected:
            self.scaler.kill_worker()
            self.finished.set()

    async def stream_result(self, session, job_data: dict, job: dict) -> None:
        self.streamed.setdefault(job["id"], []).append(json.loads(json.dumps(job_data)))

    async def run(self, config: dict, monkeypatch) -> None:
        from runpod.serverless.modules import rp_job, rp_scale, worker_state

        if not worker_state.IS_LOCAL_TEST:
            pytest.skip("RUNPOD_WEBHOOK_GET_JOB is set: the SDK would take real jobs")
        monkeypatch.setattr(rp_job, "send_result", self.send_result)
        monkeypatch.setattr(rp_job, "stream_result", self.stream_result)
        self.scaler = rp_scale.JobScaler({**config, "jobs_fetcher": self.take})
        await asyncio.wait_for(self.scaler.run(), 300)  # the deadline only turns a hang into a failure


def _wav_frames(result: dict) -> int:
    with wave.open(io.BytesIO(base64.b64decode(result["audio_base64"]))) as w:
        return w.getnframes()


async def test_job_runner_runs_jobs_at_once_in_the_engine_batch(engine, worker_config, monkeypatch):
    """The worker takes one job per slot at once, and the engine runs them in one batch.

    The engine holds its first frame step until every job has been submitted, so the jobs can only
    all reach it if the worker runs them concurrently; then it must see all of them in its slots.
    """
    assert worker_config["concurrency_modifier"](1) == SLOTS
    real_submit, real_step = engine.submit, engine._step
    submitted: list[object] = []
    all_submitted = threading.Event()
    active_per_step: list[int] = []

    def submit(request, sink):
        handle = real_submit(request, sink)
        submitted.append(handle)
        if len(submitted) == SLOTS:
            all_submitted.set()
        return handle

    def step():  # the engine's thread
        all_submitted.wait(120)  # guard only: a worker that runs one job at a time never gets here in time
        active_per_step.append(len(engine.slots))
        real_step()

    monkeypatch.setattr(engine, "submit", submit)
    monkeypatch.setattr(engine, "_step", step)
    jobs = [
        {"id": "plain-1", "input": {"text": "One", "max_audio_length_ms": 800, "seed": 1}},
        {"id": "plain-2", "input": {"text": "Two", "max_audio_length_ms": 400, "seed": 2}},
        {
            "id": "stream-3",
            "input": {"text": "Three", "max_audio_length_ms": 800, "output_format": "mulaw", "stream": True},
        },
    ]
    runpod_side = FakeRunPod(jobs)
    await runpod_side.run(worker_config, monkeypatch)

    assert runpod_side.asked[0] == SLOTS  # one job-take for all the slots
    assert len(submitted) == SLOTS and max(active_per_step) == SLOTS  # all three in the batch at once
    out = runpod_side.results
    assert set(out) == {"plain-1", "plain-2", "stream-3"} and not any("error" in r for r in out.values())
    (one,), (two,) = out["plain-1"]["output"], out["plain-2"]["output"]
    assert (one["duration_ms"], _wav_frames(one)) == (800, 800 * 24)
    assert (two["duration_ms"], _wav_frames(two)) == (400, 400 * 24)
    *chunks, done = out["stream-3"]["output"]
    assert [item["output"] for item in runpod_side.streamed["stream-3"]] == [*chunks, done]
    assert len(chunks) >= 2 and chunks[-1]["final"] and done["done"] and done["chunks"] == len(chunks)
    assert sum(len(base64.b64decode(c["audio_base64"])) for c in chunks) == 6400  # 800 ms of 8 kHz mu-law


async def test_job_runner_bad_input_completes_with_field(worker_config, monkeypatch, tmp_path):
    """Bad input comes back as the job's output `[{"error", "field"}]`, not as a failed job."""
    monkeypatch.setenv("CSM_DATA_DIR", str(tmp_path))  # no voice profiles
    bad = {
        "empty": ({"text": ""}, "text"),
        "speaker": ({"text": "hi", "speaker": "a"}, "speaker"),
        "too-short": ({"text": "hi", "max_audio_length_ms": 5}, "max_audio_length_ms"),  # the engine's check
        "format": ({"text": "hi", "output_format": "mp3"}, "output_format"),
        "voice": ({"text": "hi", "voice_profile_id": "nobody"}, "voice_profile_id"),
        "stream": ({"text": "", "stream": True, "output_format": "mulaw"}, "text"),
    }
    runpod_side = FakeRunPod([{"id": name, "input": job_input} for name, (job_input, _) in bad.items()])
    await runpod_side.run(worker_config, monkeypatch)

    for name, (_, field) in bad.items():
        result = runpod_side.results[name]
        assert "error" not in result, result  # a top-level "error" is what makes RunPod mark it FAILED
        (item,) = result["output"]
        assert item["field"] == field and item["error"] and set(item) == {"error", "field"}
        assert runpod_side.streamed[name] == [{"output": item}]
    assert runpod_side.results["empty"]["output"] == [{"error": "Empty text: text: must be non-empty", "field": "text"}]


# -- `python runpod/handler.py --test_input ...`: the line in the file's docstring ---------------------------------------


def _run_handler(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, as RunPod's local test would; it must exit 0."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_test_input_line_runs_a_job(tmp_path):
    doc = (ROOT / "runpod" / "handler.py").read_text()
    (line,) = [ln for ln in doc.splitlines() if "--test_input" in ln and ln.startswith("CSM_MODEL=")]
    words = shlex.split(line)
    env_words = [w for w in words if re.fullmatch(r"[A-Z_]+=.*", w)]
    assert env_words == ["CSM_MODEL=tiny-random"] and words[len(env_words)] == "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}  # not on RunPod
    env.update(w.split("=", 1) for w in env_words)
    env["PYTHONPATH"] = str(ROOT)
    proc = _run_handler(words[len(env_words) + 1 :], env)
    assert "completed successfully" in proc.stdout
    # The SDK logs the result as a dict, cut in the middle when long (the head and the tail are whole).
    logged = proc.stdout.split("| Job result: ", 1)[1].split("| Local testing complete", 1)[0]
    assert logged.startswith("{'output': [{'audio_base64': 'UklGR")  # base64 of b"RIFF": a WAV
    expected_ms = json.loads(words[-1])["input"]["max_audio_length_ms"]
    assert f"'format': 'wav', 'duration_ms': {expected_ms}," in logged


def test_test_input_prints_the_whole_result(tmp_path):
    """A short job's logged result is complete: its audio decodes to the length asked for."""
    job = {"input": {"text": "Hello", "max_audio_length_ms": 240, "output_format": "mulaw", "seed": 7}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(CSM_MODEL="tiny-random", CSM_MAX_BATCH="1", PYTHONPATH=str(ROOT))
    proc = _run_handler([str(ROOT / "runpod" / "handler.py"), "--test_input", json.dumps(job)], env)
    (result_line,) = [ln for ln in proc.stdout.splitlines() if "| Job result: " in ln]
    (result,) = ast.literal_eval(result_line.split("| Job result: ", 1)[1])["output"]
    assert result["format"] == "mulaw_8khz" and result["seed"] == 7 and result["duration_ms"] == 240
    assert len(base64.b64decode(result["audio_base64"])) == 240 * 8
