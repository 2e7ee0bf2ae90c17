"""The gRPC connection policy's options (issue 15): defaults that agree, the gRPC core arguments
they become, and the commands and environment variables that set them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from csm_service import cli
from csm_service.config import ServiceConfig, build_config
from csm_service.rpc import client, server

DEFAULTS = ServiceConfig()


def test_defaults_agree():
    # The engine permits the edge's pings, with margin: they never count as strikes.
    assert DEFAULTS.grpc_min_ping_interval_s * 2 <= DEFAULTS.grpc_keepalive_time_s
    # A connection past its age keeps its calls long enough for the longest one the edge allows.
    assert DEFAULTS.grpc_max_connection_age_grace_s >= DEFAULTS.request_timeout_s
    assert DEFAULTS.grpc_max_connection_age_s > 0 and DEFAULTS.grpc_max_ping_strikes == 0


def test_rpc_defaults_are_the_configs():
    """EngineClient and EngineServer built without a config (tests, tools) behave like the service."""
    client_kw = inspect.signature(client.EngineClient).parameters
    server_kw = inspect.signature(server.server_options).parameters  # EngineServer passes **policy on
    cfg = dataclasses.asdict(DEFAULTS)
    for name, value in client.client_policy(DEFAULTS).items():
        assert client_kw[name].default == value == cfg["grpc_" + name], name
    for name, value in server.server_policy(DEFAULTS).items():
        assert server_kw[name].default == value == cfg["grpc_" + name], name


def test_server_and_client_arguments():
    opts = dict(server.server_options(**server.server_policy(DEFAULTS)))
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert opts["grpc.http2.max_ping_strikes"] == 0
    assert opts["grpc.keepalive_time_ms"] == 10_000 and opts["grpc.keepalive_timeout_ms"] == 10_000
    assert opts["grpc.http2.max_pings_without_data"] == 0
    assert opts["grpc.max_connection_age_ms"] == 300_000 and opts["grpc.max_connection_age_grace_ms"] == 600_000
    no_age = dict(server.server_options(max_connection_age_s=0))
    assert "grpc.max_connection_age_ms" not in no_age and "grpc.max_connection_age_grace_ms" not in no_age
    assert dict(client.keepalive_options(2.5, 1)) == {
        "grpc.keepalive_time_ms": 2_500,
        "grpc.keepalive_timeout_ms": 1_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    with pytest.raises(ValueError):
        client.keepalive_options(0, 10)
    with pytest.raises(ValueError):
        server.server_options(max_ping_strikes=-1)


def _parsed(argv: list[str], names: tuple[str, ...]) -> ServiceConfig:
    return cli._config(cli.build_parser().parse_args(argv), names)


def test_flags_reach_the_commands_that_use_them():
    server_flags = [
        "--grpc-keepalive-time-s", "20",
        "--grpc-keepalive-timeout-s", "4",
        "--grpc-min-ping-interval-s", "8",
        "--grpc-max-ping-strikes", "3",
        "--grpc-max-connection-age-s", "120",
        "--grpc-max-connection-age-grace-s", "900",
    ]  # fmt: skip
    for command in ("engine", "serve"):
        cfg = _parsed([command, *server_flags], cli.GRPC_SERVER_OPTS)
        assert server.server_policy(cfg) == {
            "keepalive_time_s": 20.0,
            "keepalive_timeout_s": 4.0,
            "min_ping_interval_s": 8.0,
            "max_ping_strikes": 3,
            "max_connection_age_s": 120.0,
            "max_connection_age_grace_s": 900.0,
        }
    edge = _parsed(["edge", "--grpc-keepalive-time-s", "20", "--grpc-keepalive-timeout-s", "4"], cli.GRPC_CLIENT_OPTS)
    assert client.client_policy(edge) == {"keepalive_time_s": 20.0, "keepalive_timeout_s": 4.0}
    with pytest.raises(SystemExit):  # a server's policy is no edge flag
        cli.build_parser().parse_args(["edge", "--grpc-max-connection-age-s", "1"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["say", "hi", "--grpc-keepalive-time-s", "1"])


def test_environment_sets_them():
    env = {"CSM_GRPC_MAX_CONNECTION_AGE_S": "60", "CSM_GRPC_MAX_PING_STRIKES": "2", "CSM_GRPC_KEEPALIVE_TIME_S": "30"}
    cfg = build_config({}, env)
    assert (cfg.grpc_max_connection_age_s, cfg.grpc_max_ping_strikes, cfg.grpc_keepalive_time_s) == (60.0, 2, 30.0)
