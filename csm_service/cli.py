"""``csm-service`` command line: serve, edge, engine, say, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from csm_service.config import ServiceConfig, build_config
from csm_service.tenants import KeyFileError


def _engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", help="hub id, local directory or file, or tiny-random (CSM_MODEL)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (CSM_DEVICE)")
    g.add_argument("--dtype", help="auto | float32 | bfloat16 (CSM_DTYPE)")
    g.add_argument("--max-batch", type=int, help="concurrent utterances (CSM_MAX_BATCH)")
    g.add_argument("--max-queue", type=int, help="waiting requests before 'overloaded' (CSM_MAX_QUEUE)")
    g.add_argument("--first-chunk-frames", type=int, help="80 ms frames in the first chunk")
    g.add_argument("--chunk-frames", type=int, help="80 ms frames in later chunks")
    g.add_argument("--mimi-weights", help="local Mimi weights file (CSM_MIMI_WEIGHTS)")
    g.add_argument(
        "--no-cuda-graphs", dest="use_cuda_graphs", action="store_false", default=None, help="eager mode (debugging)"
    )
    g.add_argument("--seed", type=int, help="seed of the tiny-random weights")
    g.add_argument("--prefix-cache-mb", type=int, help="voice-prompt KV cache, 0 = off (CSM_PREFIX_CACHE_MB, 1024)")
    g.add_argument(
        "--prefill-chunk-positions",
        type=int,
        help="prompt positions prefilled between two frame steps, 0 = whole prompt (CSM_PREFILL_CHUNK_POSITIONS, 512)",
    )
    g.add_argument(
        "--memory-utilization",
        type=float,
        help="share of device memory (CPU: RAM) the engine may fill; sizes the batch slots (CSM_MEMORY_UTILIZATION, 0.9)",
    )
    g.add_argument(
        "--memory-budget-mb",
        type=int,
        help="memory for the model instead, weights included (CSM_MEMORY_BUDGET_MB, 0 = off)",
    )


def _config(args: argparse.Namespace, names: tuple[str, ...]) -> ServiceConfig:
    return build_config({n: getattr(args, n, None) for n in names})


ENGINE_OPTS = (
    "model",
    "device",
    "dtype",
    "max_batch",
    "max_queue",
    "first_chunk_frames",
    "chunk_frames",
    "mimi_weights",
    "use_cuda_graphs",
    "seed",
    "prefix_cache_mb",
    "prefill_chunk_positions",
    "memory_utilization",
    "memory_budget_mb",
)


def cmd_say(args: argparse.Namespace) -> int:
    from csm_service.say import SayError, run_say

    try:
        return run_say(args, _config(args, ENGINE_OPTS).engine)
    except SayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# gRPC connection policy (docs/deploy.md, "gRPC keepalive and connection age"): the pings every
# client of an engine sends, and what the engine's server allows and enforces.
GRPC_CLIENT_OPTS = ("grpc_keepalive_time_s", "grpc_keepalive_timeout_s")
GRPC_SERVER_OPTS = (
    *GRPC_CLIENT_OPTS,  # the engine pings its clients too
    "grpc_min_ping_interval_s",
    "grpc_max_ping_strikes",
    "grpc_max_connection_age_s",
    "grpc_max_connection_age_grace_s",
    "grpc_max_inflight_per_key",
)


def _grpc_flags(p: argparse.ArgumentParser, server: bool) -> None:
    g = p.add_argument_group("gRPC connections (edge <-> engine)")
    g.add_argument(
        "--grpc-keepalive-time-s", type=float, help="ping each connection this often (CSM_GRPC_KEEPALIVE_TIME_S, 10)"
    )
    g.add_argument(
        "--grpc-keepalive-timeout-s",
        type=float,
        help="drop a connection whose ping is unanswered this long (CSM_GRPC_KEEPALIVE_TIMEOUT_S, 10)",
    )
    if not server:
        return
    g.add_argument(
        "--grpc-min-ping-interval-s",
        type=float,
        help="clients may ping this often; keep it <= their keepalive time (CSM_GRPC_MIN_PING_INTERVAL_S, 5)",
    )
    g.add_argument(
        "--grpc-max-ping-strikes",
        type=int,
        help="too-early pings before GOAWAY too_many_pings, 0 = never (CSM_GRPC_MAX_PING_STRIKES, 0)",
    )
    g.add_argument(
        "--grpc-max-connection-age-s",
        type=float,
        help="GOAWAY after this, so clients reconnect and re-resolve DNS; 0 = never (CSM_GRPC_MAX_CONNECTION_AGE_S, 300)",
    )
    g.add_argument(
        "--grpc-max-connection-age-grace-s",
        type=float,
        help="then calls in flight get this long to finish (CSM_GRPC_MAX_CONNECTION_AGE_GRACE_S, 600)",
    )
    g.add_argument(
        "--grpc-max-inflight-per-key",
        type=int,
        help="calls in flight per tenant (keys off: per peer); admin keys exempt; -1 = max_batch + max_queue/2, "
        "0 = no cap (CSM_GRPC_MAX_INFLIGHT_PER_KEY, -1)",
    )


def cmd_engine(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.rpc.worker import run_engine_worker

    cfg = _config(
        args,
        (
            *ENGINE_OPTS,
            *GRPC_SERVER_OPTS,
            "grpc_host",
            "grpc_port",
            "metrics_port",
            "drain_timeout_s",
            "data_dir",
            "rate_limit_per_s",
            "rate_limit_burst",
        ),
    )
    return asyncio.run(run_engine_worker(cfg))


EDGE_OPTS = (
    "host",
    "port",
    "health_port",
    "max_text_chars",
    "max_body_bytes",
    "max_json_depth",
    "max_ws_message_bytes",
    "max_sessions",
    "max_unauthenticated_sessions",
    "max_connections",
    "health_reserve_connections",
    "http_header_timeout_s",
    "http_body_timeout_s",
    "max_inflight_per_session",
    "max_inflight_per_key",
    "max_inflight_per_peer",
    "max_voices_per_tenant",
    "request_timeout_s",
    "max_audio_length_ms",
    "rate_limit_per_s",
    "rate_limit_burst",
    "ws_idle_timeout_s",
    "ws_auth_timeout_s",
    "data_dir",
    "max_upload_bytes",
    "max_form_parts",
    "max_voice_seconds",
    "max_audio_channels",
    "max_audio_rate_hz",
    "session_context_positions",
    "max_piece_chars",
    "twilio_lead_ms",
    "twilio_prestart_bytes",
    "call_drain_s",
    "ready_wait_s",
    "public_health_detail",
    "public_metrics",
)


def _edge_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP/WebSocket edge")
    g.add_argument("--host", help="bind address (CSM_HOST, default 0.0.0.0)")
    g.add_argument("--port", type=int, help="HTTP port (CSM_PORT, default 8000)")
    g.add_argument("--health-port", type=int, help="also serve /ping and /health here (CSM_HEALTH_PORT)")
    g.add_argument("--max-text-chars", type=int, help="per request (CSM_MAX_TEXT_CHARS, default 4000)")
    g.add_argument("--max-body-bytes", type=int, help="HTTP body (CSM_MAX_BODY_BYTES, default 1 MiB)")
    g.add_argument("--max-ws-message-bytes", type=int, help="WebSocket message (CSM_MAX_WS_MESSAGE_BYTES, 64 KiB)")
    g.add_argument(
        "--max-json-depth", type=int, help="nesting of arrays/objects in client JSON (CSM_MAX_JSON_DEPTH, 32)"
    )
    g.add_argument("--max-sessions", type=int, help="open WebSocket sessions (CSM_MAX_SESSIONS, default 1000)")
    g.add_argument(
        "--max-unauthenticated-sessions",
        type=int,
        help="WebSockets still waiting to authenticate, outside --max-sessions (CSM_MAX_UNAUTHENTICATED_SESSIONS, 64)",
    )
    g.add_argument(
        "--max-connections", type=int, help="open TCP connections, 0 = no cap (CSM_MAX_CONNECTIONS, default 4096)"
    )
    g.add_argument(
        "--health-reserve-connections",
        type=int,
        help="connections past --max-connections for /health and /ping only (CSM_HEALTH_RESERVE_CONNECTIONS, 16)",
    )
    g.add_argument(
        "--http-header-timeout-s",
        type=float,
        help="a request's line and headers must arrive within this, 0 = never (CSM_HTTP_HEADER_TIMEOUT_S, 10)",
    )
    g.add_argument(
        "--http-body-timeout-s",
        type=float,
        help="a request's body must arrive within this of its headers (408), 0 = never (CSM_HTTP_BODY_TIMEOUT_S, 60)",
    )
    g.add_argument(
        "--max-inflight-per-session", type=int, help="requests per session (CSM_MAX_INFLIGHT_PER_SESSION, default 8)"
    )
    g.add_argument(
        "--max-inflight-per-key",
        type=int,
        help="utterances in flight per tenant, 0 = no cap (CSM_MAX_INFLIGHT_PER_KEY, 16)",
    )
    g.add_argument(
        "--max-inflight-per-peer",
        type=int,
        help="keys off: utterances in flight per client address, 0 = no cap (CSM_MAX_INFLIGHT_PER_PEER, 0)",
    )
    g.add_argument(
        "--max-voices-per-tenant",
        type=int,
        help="stored voice profiles per tenant, 0 = no limit (CSM_MAX_VOICES_PER_TENANT, 100)",
    )
    g.add_argument("--request-timeout-s", type=float, help="one synthesis (CSM_REQUEST_TIMEOUT_S, default 300)")
    g.add_argument(
        "--max-audio-length-ms", type=int, help="largest max_audio_length_ms allowed (CSM_MAX_AUDIO_LENGTH_MS)"
    )
    g.add_argument(
        "--rate-limit-per-s",
        type=float,
        help="synthesis requests/s per API key or peer, 0 = off (CSM_RATE_LIMIT_PER_S)",
    )
    g.add_argument("--rate-limit-burst", type=int, help="requests allowed at once per client (CSM_RATE_LIMIT_BURST)")
    g.add_argument(
        "--session-context-positions", type=int, help="WebSocket session context budget (CSM_SESSION_CONTEXT_POSITIONS)"
    )
    g.add_argument("--max-piece-chars", type=int, help="long text is split into pieces of this (CSM_MAX_PIECE_CHARS)")
    g.add_argument("--data-dir", help="voice profiles (SQLite) live here (CSM_DATA_DIR, default ./data)")
    g.add_argument("--max-upload-bytes", type=int, help="a voice upload (CSM_MAX_UPLOAD_BYTES, default 20 MiB)")
    g.add_argument("--max-form-parts", type=int, help="parts of a voice upload (CSM_MAX_FORM_PARTS, 16)")
    g.add_argument("--max-voice-seconds", type=float, help="a voice prompt's audio (CSM_MAX_VOICE_SECONDS, 30)")
    g.add_argument("--max-audio-channels", type=int, help="channels of an audio file (CSM_MAX_AUDIO_CHANNELS, 2)")
    g.add_argument("--max-audio-rate-hz", type=int, help="sample rate of an audio file (CSM_MAX_AUDIO_RATE_HZ, 192000)")
    g.add_argument(
        "--ws-auth-timeout-s", type=float, help="keys on: time for the first auth message (CSM_WS_AUTH_TIMEOUT_S)"
    )
    g.add_argument(
        "--ws-idle-timeout-s", type=float, help="close idle WebSocket sessions, 0 = never (CSM_WS_IDLE_TIMEOUT_S)"
    )
    g.add_argument(
        "--twilio-lead-ms", type=int, help="Twilio streams: audio sent ahead of the playhead (CSM_TWILIO_LEAD_MS, 60)"
    )
    g.add_argument(
        "--twilio-prestart-bytes",
        type=int,
        help="Twilio streams: bytes accepted before the start event (CSM_TWILIO_PRESTART_BYTES, 65536)",
    )
    g.add_argument(
        "--call-drain-s",
        type=float,
        help="SIGTERM: live sessions and calls may go on this long before they are closed (CSM_CALL_DRAIN_S, 300)",
    )
    g.add_argument(
        "--ready-wait-s",
        type=float,
        help="a Twilio call arriving while the model loads is held this long (CSM_READY_WAIT_S, 120)",
    )
    g.add_argument(
        "--public-health-detail",
        action="store_true",
        default=None,
        help="keys on: /health shows model, memory, sessions, queue to callers without a key (CSM_PUBLIC_HEALTH_DETAIL)",
    )
    g.add_argument(
        "--public-metrics",
        action="store_true",
        default=None,
        help="keys on: /metrics needs no key (CSM_PUBLIC_METRICS; default: the bearer key)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.serve import run_serve

    cfg = _config(args, (*ENGINE_OPTS, *EDGE_OPTS, *GRPC_SERVER_OPTS, "grpc_host", "grpc_port", "drain_timeout_s"))
    return asyncio.run(run_serve(cfg))


def cmd_edge(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.edge.app import run_edge  # no torch in this process

    cfg = _config(args, (*EDGE_OPTS, *GRPC_CLIENT_OPTS, "engine_addresses"))
    return asyncio.run(run_edge(cfg))


def cmd_fetch(args: argparse.Namespace) -> int:
    """Put the model, its tokenizer and Mimi into the Hugging Face cache (or check a local dir)."""
    from csm_service.codec.mimi import resolve_mimi_weights
    from csm_service.model.loader import ModelNotAvailable, load_tokenizer, resolve_model_files

    cfg = _config(args, ("model", "mimi_weights")).engine
    try:
        files = resolve_model_files(cfg.model)
        load_tokenizer(files)
        local = Path(cfg.model).expanduser()
        mimi = resolve_mimi_weights(cfg.mimi_weights, local if local.is_dir() else files.weights[0].parent)
    except (ModelNotAvailable, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in (*files.weights, files.config_json, files.tokenizer_json, mimi):
        if path is not None:
            print(path)
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from csm_service.loadtest import main as loadtest_main

    return loadtest_main(args.rest)


def cmd_bench(args: argparse.Namespace) -> int:
    from csm_service.bench import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csm-service", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="engine + gRPC + HTTP/WebSocket edge in one process (the default)")
    serve.add_argument("--grpc-host", help="gRPC bind address (CSM_GRPC_HOST, default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port, 0 = any free port (CSM_GRPC_PORT, default 50051)")
    serve.add_argument("--drain-timeout-s", type=float, help="SIGTERM drain deadline (CSM_DRAIN_TIMEOUT_S)")
    _edge_flags(serve)
    _engine_flags(serve)
    _grpc_flags(serve, server=True)
    serve.set_defaults(func=cmd_serve)

    edge = sub.add_parser("edge", help="the HTTP/WebSocket edge alone, in front of gRPC engine workers")
    edge.add_argument(
        "--engine", dest="engine_addresses", help="host:port[,host:port...] of the engine workers (CSM_ENGINE)"
    )
    _edge_flags(edge)
    _grpc_flags(edge, server=False)
    edge.set_defaults(func=cmd_edge)

    say = sub.add_parser("say", help="synthesise text to an audio file, or stream it (--stream)")
    say.add_argument("text")
    say.add_argument("-o", "--output", default="out.wav", help="the file (its extension picks the format)")
    say.add_argument("--format", help="wav | flac | mp3 | opus | pcm | mulaw | alaw (default: from -o)")
    say.add_argument("--stream", action="store_true", help="raw audio as generated: to stdout if piped, else played")
    say.add_argument("--voice", help="a voice profile id (from --data-dir) or an audio file (with --voice-text)")
    say.add_argument("--voice-text", help="what the --voice recording says")
    say.add_argument("--data-dir", help="where voice profiles live (CSM_DATA_DIR, default ./data)")
    say.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    say.add_argument("--speaker", type=int, default=None, help="speaker id (default: the voice's, or 0)")
    say.add_argument("--max-audio-length-ms", type=int, default=10_000)
    say.add_argument("--temperature", type=float, default=0.9)
    say.add_argument("--top-k", type=int, default=50)
    say.add_argument("--sample-seed", type=int, default=None, help="makes the output reproducible")
    _engine_flags(say)
    say.set_defaults(func=cmd_say)

    engine = sub.add_parser("engine", help="run a gRPC engine worker (owns the GPU)")
    engine.add_argument("--grpc-host", help="bind address (CSM_GRPC_HOST, default 0.0.0.0)")
    engine.add_argument("--grpc-port", type=int, help="gRPC port (CSM_GRPC_PORT, default 50051)")
    engine.add_argument("--metrics-port", type=int, help="Prometheus port, 0 = off (CSM_METRICS_PORT)")
    engine.add_argument("--drain-timeout-s", type=float, help="SIGTERM drain deadline (CSM_DRAIN_TIMEOUT_S)")
    engine.add_argument("--data-dir", help="voice profiles for voice_profile_id (CSM_DATA_DIR, default ./data)")
    engine.add_argument("--rate-limit-per-s", type=float, help="gRPC calls/s per tenant or peer (CSM_RATE_LIMIT_PER_S)")
    engine.add_argument(
        "--rate-limit-burst", type=int, help="gRPC calls at once before the rate (CSM_RATE_LIMIT_BURST)"
    )
    _engine_flags(engine)
    _grpc_flags(engine, server=True)
    engine.set_defaults(func=cmd_engine)

    fetch = sub.add_parser("fetch", help="download the model, tokenizer and Mimi into the HF cache (HF_TOKEN)")
    fetch.add_argument("--model", help="hub id or local directory (CSM_MODEL, default sesame/csm-1b)")
    fetch.add_argument("--mimi-weights", help="local Mimi weights file (CSM_MIMI_WEIGHTS)")
    fetch.set_defaults(func=cmd_fetch)

    bench = sub.add_parser("bench", help="benchmarks (JSON + table); see csm-service bench -h")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    loadtest = sub.add_parser("loadtest", help="concurrent WebSocket + HTTP load; see csm-service loadtest -h")
    loadtest.add_argument("rest", nargs=argparse.REMAINDER)
    loadtest.set_defaults(func=cmd_loadtest)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command in ("loadtest", "bench"):  # their flags belong to their own parsers
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyFileError as exc:  # a bad API key file: say which line, not a traceback (and never the key)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
