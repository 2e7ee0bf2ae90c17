"""The RunPod SDK's own local API (`runpod/handler.py --rp_serve_api`) serving our handler."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest

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
