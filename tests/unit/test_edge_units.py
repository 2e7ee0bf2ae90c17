"""Edge pieces without a server: request parsing, error mapping, the OpenAPI document."""

from __future__ import annotations

import grpc
import pytest

from csm_service.api.errors import ApiError, from_speech_error
from csm_service.api.openapi import build_spec, render_docs
from csm_service.api.speak import MULAW, WAV, parse_speak
from csm_service.config import ServiceConfig
from csm_service.core.constants import DEFAULT_MAX_AUDIO_MS
from csm_service.core.request import AudioEncoding
from csm_service.rpc.convert_client import request_to_proto, speech_error_from_rpc
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb


def test_seed_defaults():
    params = parse_speak({"text": "Hello, how are you?"}, 4000)
    assert params.speaker is None and params.max_audio_length_ms == DEFAULT_MAX_AUDIO_MS == 30000
    assert params.output_format is WAV and params.voice_profile_id == "default" and params.stream is False
    msg = request_to_proto(params.to_request(AudioEncoding.PCM16_24KHZ))
    assert msg.text == "Hello, how are you?" and msg.max_audio_length_ms == 30000 and msg.speaker == 0
    assert not msg.HasField("seed") and not msg.HasField("temperature") and not msg.HasField("top_k")


def test_extensions_reach_the_proto():
    params = parse_speak(
        {
            "text": "x",
            "output_format": "mulaw",
            "seed": 9,
            "top_k": 1,
            "temperature": 0.5,
            "max_audio_length_ms": 800.0,
        },
        4000,
    )
    assert params.output_format is MULAW and params.output_format.name == "mulaw_8khz"
    msg = request_to_proto(params.to_request(params.output_format.encoding))
    assert (msg.seed, msg.top_k, msg.temperature, msg.max_audio_length_ms) == (9, 1, 0.5, 800)
    assert msg.encoding == pb.AUDIO_ENCODING_MULAW_8KHZ


@pytest.mark.parametrize(
    "body, status, field",
    [
        ([], 400, None),
        ({}, 400, "text"),
        ({"text": 1}, 422, "text"),
        ({"text": "\n"}, 422, "text"),
        ({"text": "abc"}, 422, "text"),  # over the 2-character limit used here
        ({"text": "a", "speaker": 1.5}, 422, "speaker"),
        ({"text": "a", "speaker": 2**31}, 422, "speaker"),  # would not fit the proto's int32
        ({"text": "a", "max_audio_length_ms": 2**32}, 422, "max_audio_length_ms"),
        ({"text": "a", "seed": 2**63}, 422, "seed"),
        ({"text": "a", "temperature": True}, 422, "temperature"),
        ({"text": "a", "output_format": 3}, 422, "output_format"),
        ({"text": "a", "request_id": "r" * 129}, 422, "request_id"),
    ],
)
def test_bad_bodies(body, status, field):
    with pytest.raises(ApiError) as info:
        parse_speak(body, 2)
    assert info.value.status == status and info.value.field == field
    assert info.value.http_body()["detail"]


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    "code, details, status, message",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "text: must be non-empty", 422, "Empty text"),
        (grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be an integer", 422, "Invalid message format"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", 503, "Overloaded"),
        (grpc.StatusCode.UNAVAILABLE, "engine not ready", 503, "Model not loaded"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", 504, "Timed out"),
        (grpc.StatusCode.INTERNAL, "boom", 500, "Synthesis failed"),
    ],
)
def test_rpc_errors_map_to_client_errors(code, details, status, message):
    err = from_speech_error(speech_error_from_rpc(_RpcError(code, details)))
    assert (err.status, err.message) == (status, message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert err.retry_after_s == 1


def _routes(tmp_path) -> list:
    """The edge's routes, built around a client that is never called: no gRPC channel is opened (a
    channel closed inside ``asyncio.run`` leaves gRPC's poller a callback for the closed loop)."""
    from csm_service.edge.app import build_app

    app = build_app(
        ServiceConfig(data_dir=str(tmp_path)), _NeverCalled(), __import__("prometheus_client").CollectorRegistry()
    )
    return [r for r in app.router.routes() if r.method != "HEAD"]


class _NeverCalled:
    """Stands in for the engine client of an app that only lists its routes."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine client was used: {name}")


def test_openapi_covers_every_route(tmp_path):
    routes = _routes(tmp_path)
    spec = build_spec()
    documented = set(spec["paths"]) | {"/openapi.json", "/docs"}
    assert {r.resource.canonical for r in routes} == documented
    methods = {(r.resource.canonical, r.method.lower()) for r in routes}
    assert methods == {(path, m) for path, ops in spec["paths"].items() for m in ops} | {
        ("/openapi.json", "get"),
        ("/docs", "get"),
    }
    page = render_docs(spec)
    assert all(path in page for path in spec["paths"])


def test_edge_options_from_environment_and_flags():
    from csm_service.config import build_config

    env = {"CSM_ENGINE": "10.0.0.5:50051,10.0.0.6:50051", "CSM_PORT": "9000", "CSM_MAX_SESSIONS": "5"}
    cfg = build_config({"max_sessions": 7}, environ=env)
    assert cfg.engine_addresses == ("10.0.0.5:50051", "10.0.0.6:50051")
    assert cfg.port == 9000 and cfg.max_sessions == 7  # the flag wins over the environment
    assert build_config({"engine_addresses": "a:1, b:2"}, environ={}).engine_addresses == ("a:1", "b:2")


def test_inputs_that_used_to_crash_the_parsers_are_422():
    """A temperature too large for a float and a Unicode digit as a form speaker raised
    OverflowError / ValueError (HTTP 500) in the hand-written parsers; the models answer 422."""
    from csm_service.api.validation import validate
    from csm_service.api.voices import VoiceUpload

    with pytest.raises(ApiError) as err:
        parse_speak({"text": "hi", "temperature": 10**400}, 4000)
    assert err.value.status == 422 and err.value.field == "temperature"
    with pytest.raises(ApiError) as err:
        validate(VoiceUpload, {"transcript": "hi", "name": "n", "speaker": "²", "file": b"x"})
    assert err.value.status == 422 and err.value.field == "speaker"


@pytest.mark.parametrize("limit", [0, 1, 9, 10, 19, 20, 100, 101, 250, 1000, 2**63 - 1])
def test_the_seed_pattern_admits_exactly_the_numerals_in_range(limit):
    import random
    import re

    from csm_service.api.seed import at_most_pattern

    pattern = re.compile(at_most_pattern(limit))
    rng = random.Random(limit)
    for n in {*range(0, 1200), limit - 1, limit, limit + 1, *(rng.randrange(2 * limit + 2) for _ in range(3000))}:
        if n >= 0:
            assert bool(pattern.fullmatch(str(n))) == (n <= limit), (limit, n)
    for numeral in (f"0{limit}", "-1", "", " 1", "1 ", "+1", "1e3", "١"):  # the last: an Arabic-Indic 1
        assert not pattern.fullmatch(numeral), numeral


def test_openapi_tells_openai_clients_what_they_get():
    spec = build_spec()
    speech = spec["components"]["schemas"]["SpeechRequest"]["properties"]
    assert "ignored" in speech["instructions"]["description"]
    voices = speech["voice"]["oneOf"][0]["enum"]
    assert {"marin", "cedar", "alloy"} <= set(voices)
    assert {"integer", "string"} <= {alt.get("type") for alt in speech["seed"]["anyOf"]}
    assert "404" in spec["paths"]["/v1/models/{model}"]["get"]["responses"]
