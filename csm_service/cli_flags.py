"""The ``csm-service`` flags that set configuration, as data: one row per flag, grouped as ``--help``
shows them, and for each command the groups it takes.

A flag sets the :mod:`csm_service.config` field of its name (``--max-batch`` -> ``max_batch``, its
argparse ``dest``) and parses as that field's type (from the dataclass defaults); flags left out are
``None``, so the ``CSM_*`` environment and then the defaults decide (:func:`~csm_service.config.build_config`).
A new option: a field in config.py, a row here (help: what it does, then ``(CSM_NAME, default)``), a
README row.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from csm_service.config import QUANT_MODES, EngineConfig, ServiceConfig

_FIELD_DEFAULTS: dict[str, object] = {
    f.name: getattr(config, f.name) for config in (ServiceConfig(), EngineConfig()) for f in dataclasses.fields(config)
}


@dataclass(frozen=True)
class Flag:
    """One flag: the config field it sets, its help, and where the field name is not enough, its name
    or the switch it is (a boolean field: ``store_true`` / ``store_false``, unset = ``None``)."""

    field: str
    help: str
    name: str = ""  # default: --<field with dashes>
    switch: str = ""
    choices: tuple[str, ...] = ()  # the values argparse accepts (a bad one is a usage error)

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        option = self.name or "--" + self.field.replace("_", "-")
        if self.switch:
            parser.add_argument(option, dest=self.field, action=self.switch, default=None, help=self.help)
        else:
            choices = self.choices or None
            parser.add_argument(option, dest=self.field, type=_field_type(self.field), choices=choices, help=self.help)


def _field_type(field: str) -> type | None:
    """int or float for a numeric config field; None (argparse keeps the string) for the others."""
    default = _FIELD_DEFAULTS[field]
    if isinstance(default, bool):
        raise TypeError(f"{field} is a boolean: its flag must be a switch")
    return type(default) if isinstance(default, int | float) else None


@dataclass(frozen=True)
class FlagGroup:
    """Flags shown together under ``title`` in ``--help`` (no title: among the command's own options)."""

    title: str | None
    flags: tuple[Flag, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(flag.field for flag in self.flags)


def add_flag_groups(parser: argparse.ArgumentParser, groups: tuple[FlagGroup, ...]) -> None:
    """Add each group's flags to ``parser``, in order."""
    for group in groups:
        target = parser.add_argument_group(group.title) if group.title else parser
        for flag in group.flags:
            flag.add_to(target)


def config_fields(groups: tuple[FlagGroup, ...]) -> tuple[str, ...]:
    """The config fields the flags of ``groups`` set (what a command reads from its arguments)."""
    return tuple(name for group in groups for name in group.fields)


ENGINE = FlagGroup(
    "engine",
    (
        Flag("model", "hub id, local directory or file, or tiny-random (CSM_MODEL)"),
        Flag("device", "auto | cpu | cuda | cuda:N (CSM_DEVICE)"),
        Flag("dtype", "auto | float32 | bfloat16 (CSM_DTYPE)"),
        Flag("max_batch", "concurrent utterances (CSM_MAX_BATCH)"),
        Flag("max_queue", "waiting requests before 'overloaded' (CSM_MAX_QUEUE)"),
        Flag("first_chunk_frames", "80 ms frames in the first chunk"),
        Flag("chunk_frames", "80 ms frames in later chunks"),
        Flag("mimi_weights", "local Mimi weights file (CSM_MIMI_WEIGHTS)"),
        Flag("use_cuda_graphs", "eager mode (debugging)", name="--no-cuda-graphs", switch="store_false"),
        Flag(
            "compile_cpu",
            "CPU: run the frame step eagerly instead of compiled (debugging; CSM_COMPILE_CPU=0)",
            name="--no-compile",
            switch="store_false",
        ),
        Flag("compile_cache_dir", "CPU: where compiled code is cached across restarts (CSM_COMPILE_CACHE_DIR)"),
        Flag(
            "cpu_kernels",
            "CPU: use oneDNN's and fbgemm's products instead of our AVX-512 gemv kernels (CSM_CPU_KERNELS=0)",
            name="--no-cpu-kernels",
            switch="store_false",
        ),
        Flag(
            "quantize",
            "int8: int8 weight-only projections; int8_dynamic: int8 weights and activations (CPU only; CSM_QUANTIZE; default none)",
            choices=QUANT_MODES,
        ),
        Flag("cpu_threads", "CPU: threads of the engine's matrix products, 0 = one per core (CSM_CPU_THREADS)"),
        Flag("seed", "seed of the tiny-random weights"),
        Flag("prefix_cache_mb", "voice-prompt KV cache, 0 = off (CSM_PREFIX_CACHE_MB, 1024)"),
        Flag(
            "prefill_chunk_positions",
            "prompt positions prefilled between two frame steps, 0 = whole prompt (CSM_PREFILL_CHUNK_POSITIONS, 512)",
        ),
        Flag(
            "memory_utilization",
            "share of device memory (CPU: RAM) the engine may fill; sizes the batch slots (CSM_MEMORY_UTILIZATION, 0.9)",
        ),
        Flag("memory_budget_mb", "memory for the model instead, weights included (CSM_MEMORY_BUDGET_MB, 0 = off)"),
    ),
)

EDGE = FlagGroup(
    "HTTP/WebSocket edge",
    (
        Flag("host", "bind address (CSM_HOST, default 0.0.0.0)"),
        Flag("port", "HTTP port (CSM_PORT, default 8000)"),
        Flag("health_port", "also serve /ping and /health here (CSM_HEALTH_PORT)"),
        Flag("max_text_chars", "per request (CSM_MAX_TEXT_CHARS, default 4096)"),
        Flag("max_body_bytes", "HTTP body (CSM_MAX_BODY_BYTES, default 1 MiB)"),
        Flag("max_ws_message_bytes", "WebSocket message (CSM_MAX_WS_MESSAGE_BYTES, 64 KiB)"),
        Flag("max_json_depth", "nesting of arrays/objects in client JSON (CSM_MAX_JSON_DEPTH, 32)"),
        Flag("max_sessions", "open WebSocket sessions (CSM_MAX_SESSIONS, default 1000)"),
        Flag(
            "max_unauthenticated_sessions",
            "WebSockets still waiting to authenticate, outside --max-sessions (CSM_MAX_UNAUTHENTICATED_SESSIONS, 64)",
        ),
        Flag("max_connections", "open TCP connections, 0 = no cap (CSM_MAX_CONNECTIONS, default 4096)"),
        Flag(
            "health_reserve_connections",
            "connections past --max-connections for /health and /ping only (CSM_HEALTH_RESERVE_CONNECTIONS, 16)",
        ),
        Flag(
            "http_header_timeout_s",
            "a request's line and headers must arrive within this, 0 = never (CSM_HTTP_HEADER_TIMEOUT_S, 10)",
        ),
        Flag(
            "http_body_timeout_s",
            "a request's body must arrive within this of its headers (408), 0 = never (CSM_HTTP_BODY_TIMEOUT_S, 60)",
        ),
        Flag("max_inflight_per_session", "requests per session (CSM_MAX_INFLIGHT_PER_SESSION, default 8)"),
        Flag("max_inflight_per_key", "utterances in flight per tenant, 0 = no cap (CSM_MAX_INFLIGHT_PER_KEY, 16)"),
        Flag(
            "max_inflight_per_peer",
            "keys off: utterances in flight per client address, 0 = no cap (CSM_MAX_INFLIGHT_PER_PEER, 0)",
        ),
        Flag(
            "max_voices_per_tenant",
            "stored voice profiles per tenant, 0 = no limit (CSM_MAX_VOICES_PER_TENANT, 100)",
        ),
        Flag("request_timeout_s", "one synthesis (CSM_REQUEST_TIMEOUT_S, default 300)"),
        Flag("max_audio_length_ms", "largest max_audio_length_ms allowed (CSM_MAX_AUDIO_LENGTH_MS)"),
        Flag("rate_limit_per_s", "synthesis requests/s per API key or peer, 0 = off (CSM_RATE_LIMIT_PER_S)"),
        Flag("rate_limit_burst", "requests allowed at once per client (CSM_RATE_LIMIT_BURST)"),
        Flag("session_context_positions", "WebSocket session context budget (CSM_SESSION_CONTEXT_POSITIONS)"),
        Flag("max_piece_chars", "long text is split into pieces of this (CSM_MAX_PIECE_CHARS)"),
        Flag("data_dir", "voice profiles (SQLite) live here (CSM_DATA_DIR, default ./data)"),
        Flag("max_upload_bytes", "a voice upload (CSM_MAX_UPLOAD_BYTES, default 20 MiB)"),
        Flag("max_form_parts", "parts of a voice upload (CSM_MAX_FORM_PARTS, 16)"),
        Flag("max_voice_seconds", "a voice prompt's audio (CSM_MAX_VOICE_SECONDS, 30)"),
        Flag("max_audio_channels", "channels of an audio file (CSM_MAX_AUDIO_CHANNELS, 2)"),
        Flag("max_audio_rate_hz", "sample rate of an audio file (CSM_MAX_AUDIO_RATE_HZ, 192000)"),
        Flag("ws_auth_timeout_s", "keys on: time for the first auth message (CSM_WS_AUTH_TIMEOUT_S)"),
        Flag("ws_idle_timeout_s", "close idle WebSocket sessions, 0 = never (CSM_WS_IDLE_TIMEOUT_S)"),
        Flag("twilio_lead_ms", "Twilio streams: the least audio sent ahead of the playhead (CSM_TWILIO_LEAD_MS, 60)"),
        Flag(
            "twilio_lead_max_ms",
            "Twilio streams: the lead grows up to this while generation nears real time (CSM_TWILIO_LEAD_MAX_MS, 400)",
        ),
        Flag(
            "twilio_echo_gate_db",
            "Twilio speech barge-in: caller audio this many dB below the bot's last 1.5 s is echo (CSM_TWILIO_ECHO_GATE_DB, 16)",
        ),
        Flag(
            "twilio_prestart_bytes",
            "Twilio streams: bytes accepted before the start event (CSM_TWILIO_PRESTART_BYTES, 65536)",
        ),
        Flag(
            "call_drain_s",
            "SIGTERM: live sessions and calls may go on this long before they are closed (CSM_CALL_DRAIN_S, 300)",
        ),
        Flag("ready_wait_s", "a Twilio call arriving while the model loads is held this long (CSM_READY_WAIT_S, 120)"),
        Flag(
            "public_health_detail",
            "keys on: /health shows model, memory, sessions, queue to callers without a key (CSM_PUBLIC_HEALTH_DETAIL)",
            switch="store_true",
        ),
        Flag(
            "public_metrics",
            "keys on: /metrics needs no key (CSM_PUBLIC_METRICS; default: the bearer key)",
            switch="store_true",
        ),
    ),
)

# gRPC connection policy (docs/deploy.md, "gRPC keepalive and connection age"): the pings every
# client of an engine sends, and what the engine's server allows and enforces.
_GRPC_TITLE = "gRPC connections (edge <-> engine)"
GRPC_CLIENT = FlagGroup(
    _GRPC_TITLE,
    (
        Flag("grpc_keepalive_time_s", "ping each connection this often (CSM_GRPC_KEEPALIVE_TIME_S, 10)"),
        Flag(
            "grpc_keepalive_timeout_s",
            "drop a connection whose ping is unanswered this long (CSM_GRPC_KEEPALIVE_TIMEOUT_S, 10)",
        ),
    ),
)
GRPC_SERVER = FlagGroup(
    _GRPC_TITLE,
    (
        *GRPC_CLIENT.flags,  # the engine pings its clients too
        Flag(
            "grpc_min_ping_interval_s",
            "clients may ping this often; keep it <= their keepalive time (CSM_GRPC_MIN_PING_INTERVAL_S, 5)",
        ),
        Flag(
            "grpc_max_ping_strikes",
            "too-early pings before GOAWAY too_many_pings, 0 = never (CSM_GRPC_MAX_PING_STRIKES, 0)",
        ),
        Flag(
            "grpc_max_connection_age_s",
            "GOAWAY after this, so clients reconnect and re-resolve DNS; 0 = never (CSM_GRPC_MAX_CONNECTION_AGE_S, 300)",
        ),
        Flag(
            "grpc_max_connection_age_grace_s",
            "then calls in flight get this long to finish (CSM_GRPC_MAX_CONNECTION_AGE_GRACE_S, 600)",
        ),
        Flag(
            "grpc_max_inflight_per_key",
            "calls in flight per tenant (keys off: per peer); admin keys exempt; -1 = max_batch + max_queue/2, "
            "0 = no cap (CSM_GRPC_MAX_INFLIGHT_PER_KEY, -1)",
        ),
    ),
)

# Each command's own options (before the groups in its --help).
_SERVE_OWN = FlagGroup(
    None,
    (
        Flag("grpc_host", "gRPC bind address (CSM_GRPC_HOST, default 0.0.0.0)"),
        Flag("grpc_port", "gRPC port, 0 = any free port (CSM_GRPC_PORT, default 50051)"),
        Flag("drain_timeout_s", "SIGTERM drain deadline (CSM_DRAIN_TIMEOUT_S)"),
        Flag("throttle_rtf", "debug: generation no faster than this real-time factor, 0 = off (CSM_THROTTLE_RTF, 0)"),
    ),
)
_EDGE_OWN = FlagGroup(
    None, (Flag("engine_addresses", "host:port[,host:port...] of the engine workers (CSM_ENGINE)", name="--engine"),)
)
_ENGINE_WORKER_OWN = FlagGroup(
    None,
    (
        Flag("grpc_host", "bind address (CSM_GRPC_HOST, default 0.0.0.0)"),
        Flag("grpc_port", "gRPC port (CSM_GRPC_PORT, default 50051)"),
        Flag("metrics_port", "Prometheus port, 0 = off (CSM_METRICS_PORT)"),
        Flag("drain_timeout_s", "SIGTERM drain deadline (CSM_DRAIN_TIMEOUT_S)"),
        Flag("data_dir", "voice profiles for voice_profile_id (CSM_DATA_DIR, default ./data)"),
        Flag("rate_limit_per_s", "gRPC calls/s per tenant or peer (CSM_RATE_LIMIT_PER_S)"),
        Flag("rate_limit_burst", "gRPC calls at once before the rate (CSM_RATE_LIMIT_BURST)"),
    ),
)
_FETCH_OWN = FlagGroup(
    None,
    (
        Flag("model", "hub id or local directory (CSM_MODEL, default sesame/csm-1b)"),
        Flag("mimi_weights", "local Mimi weights file (CSM_MIMI_WEIGHTS)"),
    ),
)

# The groups of each command, in --help order.
SERVE_FLAGS = (_SERVE_OWN, EDGE, ENGINE, GRPC_SERVER)
EDGE_FLAGS = (_EDGE_OWN, EDGE, GRPC_CLIENT)
SAY_FLAGS = (ENGINE,)  # after say's own options (csm_service/cli.py), which set no config field
ENGINE_WORKER_FLAGS = (_ENGINE_WORKER_OWN, ENGINE, GRPC_SERVER)
FETCH_FLAGS = (_FETCH_OWN,)

ENGINE_OPTS = ENGINE.fields
EDGE_OPTS = EDGE.fields
GRPC_CLIENT_OPTS = GRPC_CLIENT.fields
GRPC_SERVER_OPTS = GRPC_SERVER.fields
