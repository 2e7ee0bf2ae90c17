"""Fuzzing against a real server: hypothesis drives the WebSocket message handler and the HTTP
bodies; schemathesis checks every HTTP operation against /openapi.json. Nothing may answer 5xx,
no session may die, the server must stay healthy.

``make fuzz`` runs the same tests with many more examples and random seeds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from csm_service.core import errors
from tests.integration.servers import http_status, start_serve, wait_until

EXAMPLES = int(os.environ.get("CSM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="CSM_FUZZ_EXAMPLES" not in os.environ,  # CI: a fixed sequence; make fuzz: random
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SERVER_ERRORS = {errors.SYNTHESIS_FAILED}  # the WebSocket's 5xx
REPLY_TYPES = {"audio", "done", "error", "pong", "cancelled", "authenticated", "context_added"}
KNOWN_ERRORS = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """A server whose valid requests are short (400 ms of audio at most), so fuzzing stays fast."""
    flags = ["--max-audio-length-ms", "400", "--max-text-chars", "200", "--max-inflight-per-session", "4"]
    proc, port = start_serve(tmp_path_factory.mktemp("fuzz"), *flags)
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        yield port
        assert http_status(port, "/health") == 200, "the server is no longer healthy after fuzzing"
        assert "Traceback" not in _handler_errors(proc.log()), proc.log()[-3000:]
    finally:
        print(proc.log()[-2000:])
        proc.stop()


def _handler_errors(log: str) -> str:
    """Our own tracebacks; aiohttp's parser logs malformed HTTP (already answered 400) as well."""
    return "\n".join(block for block in log.split("ERROR") if "csm_service" in block.split("\n", 1)[0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "text",
    "speaker",
    "max_audio_length_ms",
    "output_format",
    "voice_profile_id",
    "temperature",
    "top_k",
    "seed",
    "request_id",
    "stream",
    "api_key",
    "context",
    "raw_text",
    "audio_base64",
    "format",
]
field_values = (
    json_values
    | st.text(max_size=60)
    | st.integers(-(2**65), 2**65)
    | st.sampled_from(["mulaw", "wav", "session", "mulaw_8khz", "AAAA"])
)
messages = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(["synthesize", "synthesize", "context", "ping", "cancel", "auth", "dance", ""])
    | st.text(max_size=10),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=6),
)
# Issue 16: input that once crashed a handler (RecursionError, a lone surrogate reaching protobuf).
deep_json = st.integers(1, 3000).map(lambda n: '{"type": "synthesize", "text": "hi", "x": ' + "[" * n)
lone_surrogates = st.builds(
    lambda i, key: json.dumps({"type": "synthesize", key: chr(0xD800 + i)}),
    st.integers(0, 0x7FF),
    st.sampled_from(FIELDS),
)
hostile_json = deep_json | lone_surrogates
frames = (
    messages.map(lambda m: json.dumps(m))  # NaN and Infinity included: refused as not JSON
    | hostile_json
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
)


class Session:
    def __init__(self, port: int, stack: contextlib.ExitStack) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/native/ws/fuzz"
        self.stack = stack
        self.ws = stack.enter_context(connect(self.url, max_size=None))

    def exchange(self, frame: str | bytes) -> list[dict]:
        """Send the frame, then cancel + ping; every reply up to the pong."""
        try:
            self.ws.send(frame)
            self.ws.send(json.dumps({"type": "cancel"}))
            self.ws.send(json.dumps({"type": "ping"}))
            replies = []
            while True:
                reply = json.loads(self.ws.recv(timeout=30))
                replies.append(reply)
                if reply.get("type") == "pong":
                    return replies
        except ConnectionClosed:
            closed_by_request = isinstance(frame, str) and '"close"' in frame
            assert closed_by_request, f"the session died after {frame[:200]!r}"
            self.ws = self.stack.enter_context(connect(self.url, max_size=None))
            return []


def test_websocket_messages_never_break_a_session(capped):
    with contextlib.ExitStack() as stack:
        _fuzz_session(Session(capped, stack))


def _fuzz_session(session: Session) -> None:
    @FUZZ
    @given(frame=frames)
    def check(frame):
        for reply in session.exchange(frame):
            assert reply.get("type") in REPLY_TYPES, reply
            if reply["type"] == "error":
                assert reply["error"] in KNOWN_ERRORS and reply["error"] not in SERVER_ERRORS, (frame, reply)

    check()


bodies = (
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=7).map(
        lambda d: json.dumps({"text": "fuzz", **d}).encode()
    )
    | json_values.map(lambda v: json.dumps(v).encode())
    | hostile_json.map(str.encode)
    | st.binary(max_size=300)
)


def test_http_bodies_never_get_a_server_error(capped):
    @FUZZ
    @given(body=bodies, content_type=st.sampled_from(["application/json", "text/plain", ""]))
    def check(body, content_type):
        request = urllib.request.Request(f"http://127.0.0.1:{capped}/synthesize", data=body, method="POST")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                status, payload = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read())
        assert status < 500, (body[:200], status, payload)
        assert "audio_base64" in payload if status == 200 else "error" in payload and "detail" in payload

    check()


def _schemathesis(port: int, *selection: str) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    examples = os.environ.get("CSM_FUZZ_EXAMPLES", "25")
    cmd = [cli, "run", f"http://127.0.0.1:{port}/openapi.json", *selection, "--max-examples", examples]
    cmd += [
        "--exclude-path-regex",
        "^/v1/(native/ws/|twilio/media-stream)",
        "--workers",  # one: hypothesis' lambda descriptions run ast.parse, which races in threads on
        "1",  # CPython 3.11 ("SystemError: AST constructor recursion depth mismatch")
        "--request-timeout",
        "30",
    ]
    cmd += ["--no-color", "--generation-database", "none"]
    if "CSM_FUZZ_EXAMPLES" not in os.environ:
        cmd += ["--seed", "20261121"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "NO_COLOR": "1"})
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_schemathesis_finds_nothing(capped):
    """Every HTTP operation in /openapi.json, positive and negative cases, all of schemathesis' checks.
    The WebSocket route is left out: an HTTP fuzzer cannot speak WebSocket (the test above does)."""
    _schemathesis(capped, "--checks", "all", "--exclude-name", "POST /v1/voices")


def test_schemathesis_on_voice_uploads(capped):
    """POST /v1/voices with every check but "schema-valid data is accepted": a schema-valid upload
    carries arbitrary bytes as its file, which the server rightly refuses (422 "Invalid audio")."""
    _schemathesis(
        capped, "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--include-name", "POST /v1/voices"
    )


twilio_sections = {
    "media": st.fixed_dictionaries(
        {"payload": st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()) | json_values}
    ),
    "dtmf": st.fixed_dictionaries({"digit": json_values | st.sampled_from(list("0123456789*#"))}),
    "mark": st.fixed_dictionaries({"name": json_values}),
    "start": st.fixed_dictionaries({"streamSid": json_values, "customParameters": json_values}),
    "connected": json_values,
}
twilio_frames = (
    st.sampled_from(list(twilio_sections))
    .flatmap(
        lambda event: st.fixed_dictionaries({"event": st.just(event), event: twilio_sections[event] | json_values})
    )
    .map(json.dumps)
    | json_values.map(json.dumps)
    | hostile_json.map(lambda frame: frame.replace('"type": "synthesize"', '"event": "media"'))
    | st.text(max_size=100)
    | st.binary(max_size=100)
)


def test_twilio_stream_survives_any_frame(capped):
    """Whatever arrives on a media stream (Twilio-shaped or not, text or binary), the call goes on
    and still speaks; only Twilio's ``stop`` ends it."""
    sid = "MZ" + "f" * 32
    start = {"event": "start", "start": {"streamSid": sid, "customParameters": {"barge_in": "dtmf,speech"}}}
    calls = f"http://127.0.0.1:{capped}/v1/calls/{sid}"
    with connect(f"ws://127.0.0.1:{capped}/v1/twilio/media-stream", max_size=None) as ws:
        ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send(json.dumps(start))
        wait_until(lambda: http_status(capped, f"/v1/calls/{sid}") == 200, 10, "call registered")

        @FUZZ
        @given(frame=twilio_frames)
        def check(frame):
            ws.send(frame)
            assert http_status(capped, f"/v1/calls/{sid}") == 200, frame  # handled, call alive

        check()
        say = urllib.request.Request(
            f"{calls}/say", data=json.dumps({"text": "still here", "max_audio_length_ms": 160}).encode(), method="POST"
        )
        assert urllib.request.urlopen(say, timeout=10).status == 202
        while json.loads(ws.recv(timeout=60))["event"] != "mark":  # media frames, then the mark
            pass
