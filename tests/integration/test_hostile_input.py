"""Hostile input costs little and hurts no one else (issue 16), on real servers:

- finding 3: random paths, WebSocket types and Twilio events leave the metric series bounded;
- finding 6: a voice upload has a bounded number of parts, refused at once past it;
- finding 7: nested JSON, lone surrogates, NaN and bad gzip/deflate bodies are 400-class errors
  (never a 500 or a traceback), WebSocket sessions and live Twilio calls go on;
- finding 10: with keys on, /health, /metrics and /openapi.json tell an anonymous caller only
  what a load balancer needs, and the OpenAPI security is what the server enforces.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import secrets
import urllib.error
import urllib.request
import uuid
import wave
import zlib

import aiohttp
import numpy as np
import pytest

from csm_service.tools.twilio_sim import TwilioSimulator
from tests.integration.servers import async_wait_until, http_status, start_serve, wait_until

KEY = "hostile-input-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
DEPTH = 32  # ServiceConfig.max_json_depth's default
PARTS = 16  # ServiceConfig.max_form_parts's default
SEED_HEALTH = {"status", "model_loaded", "device"}  # the seed contract's /health fields


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    proc, port = start_serve(tmp_path_factory.mktemp("hostile"), env={"CSM_API_KEYS": KEY})
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "keyed serve healthy")
        yield proc, port
    finally:
        print(proc.log()[-3000:])
        proc.stop()


def nested(depth: int, inner: object = 1) -> object:
    """``depth`` levels of arrays around ``inner``."""
    for _ in range(depth):
        inner = [inner]
    return inner


def metric_lines(port: int) -> list[str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=BEARER)
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


class LogWatch:
    """What a server logged from now on: no traceback may appear in it."""

    def __init__(self, proc) -> None:
        self.proc, self.start = proc, len(proc.log())

    def assert_clean(self) -> None:
        new = self.proc.log()[self.start :]
        assert "Traceback" not in new and "ERROR csm_service" not in new, new[-3000:]


# -- finding 3: metric labels take bounded values only ----------------------------------------------


async def test_random_paths_types_and_events_leave_metric_series_bounded(keyed):
    _, port = keyed
    before = {line.rsplit(" ", 1)[0] for line in await asyncio.to_thread(metric_lines, port)}
    sent: list[str] = []  # every client-chosen string: none may become a label
    async with aiohttp.ClientSession() as http:

        async def probe(i: int) -> None:  # unauthenticated: each answered 401, and counted
            sent.append(uuid.uuid4().hex)
            method = http.get if i % 2 else http.post
            async with method(f"http://127.0.0.1:{port}/{sent[-1]}/x") as resp:
                assert resp.status == 401

        for start in range(0, 2000, 50):
            await asyncio.gather(*(probe(i) for i in range(start, start + 50)))
        async with http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/labels", headers=BEARER) as ws:
            for _ in range(300):
                sent.append(secrets.token_hex(8))
                await ws.send_json({"type": sent[-1]})
                assert (await ws.receive_json(timeout=30))["error"] == "Unknown message type"
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=30) == {"type": "pong"}
    url = f"ws://127.0.0.1:{port}/v1/twilio/media-stream"
    async with TwilioSimulator(url, "MZ" + "a" * 32, {"api_key": KEY}) as twilio:
        await async_wait_until(lambda: _call_status(port, twilio.stream_sid) == 200, 30, "call registered")
        for _ in range(300):
            sent.append(secrets.token_hex(8))
            await twilio.send_raw(json.dumps({"event": sent[-1], "streamSid": twilio.stream_sid}))
        await async_wait_until(lambda: _protocol_errors(port, twilio.stream_sid) >= 300, 30, "events handled")
    after = await asyncio.to_thread(metric_lines, port)
    new_series = sorted({line.rsplit(" ", 1)[0] for line in after} - before)
    # 2000 paths + 300 types + 300 events: a handful of new series (one label value per route or kind).
    assert len(new_series) < 40, new_series[:50]
    text = "\n".join(after)
    assert not [s for s in sent if s in text], new_series[:20]


def _call(port: int, sid: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/calls/{sid}", headers=BEARER)
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def _call_status(port: int, sid: str) -> int:
    try:
        _call(port, sid)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def _protocol_errors(port: int, sid: str) -> int:
    return _call(port, sid)["protocol_errors"]


# -- finding 6: multipart parts are bounded -----------------------------------------------------------


def wav_recording(seconds: float = 1.5, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * 180 * t)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def voice_form(extra_fields: int, duplicate_file: bool = False) -> aiohttp.FormData:
    form = aiohttp.FormData()
    audio = wav_recording()
    form.add_field("file", audio, filename="v.wav", content_type="audio/wav")
    if duplicate_file:
        form.add_field("audio", audio, filename="v.wav", content_type="audio/wav")
    form.add_field("transcript", "Hello there.")
    form.add_field("name", "Parts")
    for i in range(extra_fields):
        form.add_field(f"extra{i}", "x" * 100)
    return form


async def test_voice_upload_parts_are_bounded(served):
    watch = LogWatch(served.proc)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/voices", data=voice_form(PARTS - 3)) as resp:
            body = await resp.json()
            assert resp.status == 201, body  # exactly at the bound: accepted
        await http.delete(f"{served.url}/v1/voices/{body['voice_id']}")
        async with http.post(f"{served.url}/v1/voices", data=voice_form(PARTS - 2)) as resp:
            body = await resp.json()
            assert resp.status == 413 and f"at most {PARTS} parts" in body["detail"], body
        async with http.post(f"{served.url}/v1/voices", data=voice_form(0, duplicate_file=True)) as resp:
            body = await resp.json()
            assert resp.status == 422 and body["field"] == "file" and "more than once" in body["detail"], body
    watch.assert_clean()


async def test_voice_upload_refused_as_soon_as_a_part_too_many_arrives(served):
    """The client declares 200 MB and sends 2000 small parts (each within the field size), then
    waits: the 413 comes at part PARTS + 1, without waiting for the rest. The old edge read every
    part and waited for the rest of the declared body."""
    boundary = "hostileboundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{"x" * 64}\r\n'.encode()
        for i in range(2000)
    )
    head = (
        f"POST /v1/voices HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {200 << 20}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(head + parts)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(4096), 30)
        assert response.startswith(b"HTTP/1.1 413") and f"at most {PARTS} parts".encode() in response, response
    finally:
        writer.close()


# -- finding 7: crash paths are 400-class errors ------------------------------------------------------

HTTP_BAD_BODIES = [
    # (body bytes, what the detail must mention)
    (b"[" * 60_000, "nested"),
    (json.dumps({"text": "hi", "x": nested(DEPTH)}).encode(), "nested 33 deep"),
    (b'{"text": "\\ud800 lone"}', "surrogate"),
    (b'{"text": "hi", "\\udfff": 1}', "surrogate"),
    (b'{"text": "\xed\xa0\x80 raw"}', "UTF-8"),
    (b'{"text": "hi", "temperature": NaN}', "NaN"),
    (b'{"text": "hi", "temperature": 1e999}', "out of range"),
]


@pytest.mark.parametrize(("body", "mention"), HTTP_BAD_BODIES, ids=lambda v: repr(v)[:30])
async def test_hostile_json_bodies_are_400(served, body, mention):
    watch = LogWatch(served.proc)
    async with aiohttp.ClientSession() as http:
        for path, shape in (("/synthesize", "native"), ("/v1/audio/speech", "openai")):
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{served.url}{path}", data=body, headers=headers) as resp:
                reply = await resp.json()
                assert resp.status == 400, (path, reply)
                detail = reply["detail"] if shape == "native" else reply["error"]["message"]
                assert mention in detail, (path, reply)
    watch.assert_clean()


async def test_json_at_the_depth_bound_is_accepted(served):
    body = {"text": "deep but fine", "max_audio_length_ms": 80, "x": nested(DEPTH - 1)}  # 32 levels in all
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_bodies_with_a_broken_content_encoding_are_400(served, encoding):
    watch = LogWatch(served.proc)
    good = zlib.compress(b'{"text": "hi"}')
    broken = b"\x1f\x8b\x08\x00garbage-not-gzip" if encoding == "gzip" else good[:2] + b"\xff" * 20
    async with aiohttp.ClientSession() as http:
        for path, content_type in (
            ("/synthesize", "application/json"),
            ("/v1/audio/speech", "application/json"),
            ("/v1/voices", "multipart/form-data; boundary=x"),
        ):
            headers = {"Content-Encoding": encoding, "Content-Type": content_type}
            async with http.post(f"{served.url}{path}", data=broken, headers=headers) as resp:
                assert 400 <= resp.status < 500, (path, resp.status, await resp.text())
    watch.assert_clean()


MALFORMED_HTTP = [
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # a header line with no colon
    b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",  # a control character in the path
    b"POST /synthesize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
    b"POST /synthesize HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET / HTTP/9.9\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED_HTTP, ids=lambda raw: repr(raw)[2:30])
async def test_malformed_http_is_a_json_400_and_logs_no_traceback(served, raw):
    """aiohttp's parser answers malformed HTTP 400 itself; the edge used to log each one as an ERROR
    with a traceback, although the client's mistake was already answered."""
    watch = LogWatch(served.proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(raw)
        await writer.drain()
        head, _, body = (await asyncio.wait_for(reader.read(), 30)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0], head
    watch.assert_clean()  # logged before the answer was sent
    assert "malformed HTTP request" in served.proc.log()[watch.start :]  # one line, at INFO
    reply = json.loads(body)
    assert reply["error"] == "Bad Request" and reply["detail"].startswith("malformed HTTP request: "), reply
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/health") as resp:
        assert resp.status == 200  # and went on


WS_BAD_FRAMES = [
    "[" * 4000,  # under the served fixture's 4096-byte message bound
    json.dumps({"type": "ping", "x": nested(DEPTH)}),
    '{"type": "synthesize", "text": "\\ud800"}',
    '{"type": "\\udc00"}',
    '{"type": "synthesize", "text": "hi", "temperature": NaN}',
]


async def test_hostile_websocket_frames_get_an_error_and_the_session_lives(served):
    watch = LogWatch(served.proc)
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("hostile")) as ws:
        for frame in WS_BAD_FRAMES:
            await ws.send_str(frame)
            reply = await ws.receive_json(timeout=30)
            assert reply["type"] == "error" and reply["error"] == "Invalid message format", (frame[:60], reply)
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=30) == {"type": "pong"}, frame[:60]
        await ws.send_json({"type": "ping", "x": nested(DEPTH - 1)})  # at the bound: fine
        assert await ws.receive_json(timeout=30) == {"type": "pong"}
    watch.assert_clean()


async def test_a_nested_frame_does_not_end_a_live_twilio_call(served):
    url = f"ws://127.0.0.1:{served.port}/v1/twilio/media-stream"
    sid = "MZ" + "b" * 32
    async with TwilioSimulator(url, sid) as twilio:
        await async_wait_until(lambda: http_status(served.port, f"/v1/calls/{sid}") == 200, 30, "call registered")
        say = {"text": "A long answer that keeps playing.", "max_audio_length_ms": 4000, "raw_text": True}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{served.url}/v1/calls/{sid}/say", json=say) as resp:
                assert resp.status == 202, await resp.text()
        await async_wait_until(lambda: twilio.events().count("media") >= 10, 60, "audio playing")
        heard = twilio.events().count("media")
        await twilio.send_raw('{"event": "media", "media": ' + "[" * 4000)  # under max_ws_message_bytes
        await twilio.send_raw('{"event": "dtmf", "dtmf": {"digit": "\\ud800"}}')
        await twilio.send_raw('{"event": "mark", "mark": {"name": NaN}}')
        await async_wait_until(lambda: "utt_1" in twilio.echoed, 60, "the utterance played to its mark")
        assert twilio.events().count("media") > heard + 10  # audio kept coming after the frames
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/v1/calls/{sid}") as resp:
            state = await resp.json()
            assert resp.status == 200 and state["protocol_errors"] == 3, state
            assert state["utterances"][0]["status"] == "played", state


# -- finding 10: open routes say little; the OpenAPI security is enforced security --------------------


async def test_open_routes_tell_an_anonymous_caller_only_what_a_load_balancer_needs(keyed):
    _, port = keyed
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def healthy(headers: dict[str, str]) -> dict:
            """/health's body once it answers 200 (a busy machine may miss the engine's 1 s deadline);
            an anonymous caller sees the seed's three fields whatever the status."""
            end = asyncio.get_running_loop().time() + 60
            while True:
                async with http.get(f"{base}/health", headers=headers) as resp:
                    body = await resp.json()
                if headers is not BEARER:
                    assert set(body) == SEED_HEALTH, body
                if resp.status == 200 or asyncio.get_running_loop().time() > end:
                    assert resp.status == 200, body
                    return body
                await asyncio.sleep(0.2)

        for headers in ({}, {"Authorization": "Bearer wrong"}):
            body = await healthy(headers)
            assert body["status"] == "healthy" and body["model_loaded"] is True
        body = await healthy(BEARER)
        assert {"version", "model", "engine", "websocket_sessions", "device_name"} <= set(body), body
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(f"{base}/metrics", headers=BEARER) as resp:
            assert resp.status == 200 and "csm_edge_requests_total" in await resp.text()
        assert http_status(port, "/ping") == 200
        async with http.get(f"{base}/openapi.json") as resp:
            spec = await resp.json()
    open_paths = {"/", "/health", "/ping"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in open_paths:
                assert "security" not in op, (path, method)
                continue
            assert op.get("security"), (path, method)  # required: no anonymous {} alternative
            assert {} not in op["security"] and {"bearer": []} in op["security"], (path, method, op["security"])
            assert "401" in op["responses"], (path, method)
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
    voice_enum = spec["components"]["schemas"]["SynthesizeRequest"]["properties"]["voice_profile_id"]["enum"]
    assert voice_enum == ["default", "", None]  # no tenant's voice ids on an open route


async def _in_process(tmp_path, **options: object):
    """The edge app with ``options`` on a loopback port (no engine behind it: /health is 503)."""
    from prometheus_client import CollectorRegistry

    from csm_service.config import ServiceConfig
    from csm_service.edge.app import EdgeServer, build_app
    from csm_service.rpc.client import EngineClient

    client = EngineClient("127.0.0.1:1")
    cfg = ServiceConfig(data_dir=str(tmp_path), **options)
    server = EdgeServer(build_app(cfg, client, CollectorRegistry()), "127.0.0.1", 0)
    await server.start()
    port = server.runner.addresses[0][1]
    return server, client, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("options", "detail", "metrics_open"),
    [
        ({"api_keys": (KEY,)}, False, False),  # the defaults
        ({"api_keys": (KEY,), "public_health_detail": True, "public_metrics": True}, True, True),
        ({}, True, True),  # keys off: everything as before
    ],
)
async def test_public_detail_options(tmp_path, options, detail, metrics_open):
    server, client, base = await _in_process(tmp_path, **options)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as resp:
                body = await resp.json()
                assert resp.status == 503 and body["status"] == "loading"
                assert ("version" in body and "websocket_sessions" in body) == detail, body
                assert SEED_HEALTH <= set(body), body
            async with http.get(f"{base}/metrics") as resp:
                assert (resp.status == 200) == metrics_open, resp.status
            async with http.get(f"{base}/openapi.json") as resp:
                spec = await resp.json()
        keys_on = "api_keys" in options
        metrics_op, synth_op = spec["paths"]["/metrics"]["get"], spec["paths"]["/synthesize"]["post"]
        assert ("security" in metrics_op) == (keys_on and not metrics_open)
        assert synth_op.get("security") == ([{"bearer": []}] if keys_on else None)
    finally:
        await server.runner.cleanup()
        await client.close()


def test_lone_surrogate_helpers_are_not_fooled():
    """Escaped backslashes and valid surrogate pairs are ordinary JSON."""
    from csm_service.api import safe_json

    assert safe_json.loads('"\\\\ud800"') == "\\ud800"
    assert safe_json.loads('"\\ud83d\\ude00"') == "\U0001f600"
    assert safe_json.loads(json.dumps({"t": "[" * 100})) == {"t": "[" * 100}  # brackets in strings
    assert math.isclose(safe_json.loads("1.5e3"), 1500.0)


def test_the_options_are_flags_and_environment_variables():
    from csm_service.cli import EDGE_OPTS, _config, build_parser
    from csm_service.config import ServiceConfig, build_config

    defaults = ServiceConfig()
    assert (defaults.max_json_depth, defaults.max_form_parts) == (DEPTH, PARTS)
    assert not defaults.public_health_detail and not defaults.public_metrics
    flags = ["--max-json-depth", "5", "--max-form-parts", "7", "--public-health-detail", "--public-metrics"]
    for command in ("serve", "edge"):
        cfg = _config(build_parser().parse_args([command, *flags]), EDGE_OPTS)
        assert (cfg.max_json_depth, cfg.max_form_parts, cfg.public_health_detail, cfg.public_metrics) == (
            5,
            7,
            True,
            True,
        )
    env = {"CSM_MAX_JSON_DEPTH": "9", "CSM_MAX_FORM_PARTS": "4", "CSM_PUBLIC_METRICS": "true"}
    cfg = build_config({}, environ=env)
    assert (cfg.max_json_depth, cfg.max_form_parts, cfg.public_metrics, cfg.public_health_detail) == (9, 4, True, False)
