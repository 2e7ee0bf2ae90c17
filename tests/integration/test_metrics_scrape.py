"""``/metrics`` of ``csm-service serve`` as Prometheus scrapes it: the engine's timing histograms,
capacity, device memory and build info after real utterances; OpenMetrics when asked for; and no
label value a client chose."""

from __future__ import annotations

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from csm_service import __version__

MARK = "zz-client-chose-this"  # sent wherever a client can put a string


async def _scrape(served, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics", headers=headers) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


async def _synthesize(served, **extra: object) -> None:
    body = {"text": "Graph me", "max_audio_length_ms": 480, **extra}
    async with aiohttp.ClientSession() as http, http.post(served.url + "/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def test_openmetrics_when_asked_with_every_engine_series(served):
    await _synthesize(served)  # 480 ms: chunks of 1, 1, 2, 2 frames -> three intervals
    content_type, text = await _scrape(served, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0") and text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # the strict OpenMetrics parser

    def count(name: str) -> float:
        return next(s.value for s in families[name].samples if s.name == name + "_count")

    for name in (
        "csm_engine_request_queue_time_seconds",
        "csm_engine_request_prefill_time_seconds",
        "csm_engine_e2e_request_latency_seconds",
    ):
        assert families[name].type == "histogram" and count(name) >= 1, name
    assert count("csm_engine_inter_frame_latency_seconds") >= 3
    assert families["csm_engine_slot_capacity"].samples[0].value >= 1
    memory = {k: families[f"csm_engine_device_memory_{k}_bytes"].samples[0].value for k in ("allocated", "total")}
    assert 0 < memory["allocated"] <= memory["total"]
    (build,) = families["csm_engine_build"].samples
    assert build.labels["model"] == "tiny-random" and build.labels["version"] == __version__
    assert families["csm_edge_build"].samples[0].labels == {"version": __version__}


async def test_prometheus_text_by_default(served):
    content_type, text = await _scrape(served)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "csm_engine_slot_capacity " in text and "# EOF" not in text


async def test_no_label_value_comes_from_a_client(served):
    """A request id, an unknown path, a WebSocket message type and a session id, all chosen by the
    client: none becomes a label value (each would be a new series per request)."""
    await _synthesize(served, request_id=MARK)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/{MARK}") as resp:
            assert resp.status == 404
        async with http.ws_connect(served.ws_url(MARK)) as ws:
            await ws.send_json({"type": MARK})
            assert "error" in await ws.receive_json(timeout=10)
    _, text = await _scrape(served)
    assert MARK not in text
