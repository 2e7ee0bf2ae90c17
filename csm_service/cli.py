"""``csm-service`` command line: serve, edge, engine, say, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from types import ModuleType

from csm_service.cli_flags import (
    EDGE_FLAGS,
    EDGE_OPTS,
    ENGINE_OPTS,
    ENGINE_WORKER_FLAGS,
    FETCH_FLAGS,
    GRPC_CLIENT_OPTS,
    GRPC_SERVER_OPTS,
    SAY_FLAGS,
    SERVE_FLAGS,
    add_flag_groups,
    config_fields,
)
from csm_service.config import ServiceConfig, build_config
from csm_service.tenants import KeyFileError

# The option sets stay importable from here (tests build configs with them); the flags are in cli_flags.
__all__ = ["EDGE_OPTS", "ENGINE_OPTS", "GRPC_CLIENT_OPTS", "GRPC_SERVER_OPTS", "build_parser", "main"]


def _config(args: argparse.Namespace, names: tuple[str, ...]) -> ServiceConfig:
    return build_config({n: getattr(args, n, None) for n in names})


def cmd_say(args: argparse.Namespace) -> int:
    from csm_service.say import SayError, run_say

    try:
        return run_say(args, _config(args, ENGINE_OPTS).engine)
    except SayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_engine(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.rpc.worker import run_engine_worker

    cfg = _config(args, config_fields(ENGINE_WORKER_FLAGS))
    return asyncio.run(run_engine_worker(cfg))


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.serve import run_serve

    cfg = _config(args, config_fields(SERVE_FLAGS))
    return asyncio.run(run_serve(cfg))


def cmd_edge(args: argparse.Namespace) -> int:
    import asyncio

    from csm_service.edge.app import run_edge  # no torch in this process

    cfg = _config(args, config_fields(EDGE_FLAGS))
    return asyncio.run(run_edge(cfg))


def cmd_fetch(args: argparse.Namespace) -> int:
    """Put the model, its tokenizer and Mimi into the Hugging Face cache (or check a local dir)."""
    from csm_service.codec.mimi import resolve_mimi_weights
    from csm_service.model.loader import ModelNotAvailable, load_tokenizer, resolve_model_files

    cfg = _config(args, config_fields(FETCH_FLAGS)).engine
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


def _tool(name: str) -> ModuleType:
    """The dev tool ``csm_service.tools.<name>``, imported only when its command runs.

    The one place runtime code imports csm_service.tools (import-linter's "runtime never imports
    tools" contract ignores these two imports).
    """
    if name == "bench":
        from csm_service.tools import bench as tool
    elif name == "loadtest":
        from csm_service.tools import loadtest as tool
    else:
        raise ValueError(f"no dev tool {name!r}")
    return tool


def cmd_loadtest(args: argparse.Namespace) -> int:
    return _tool("loadtest").main(args.rest)


def cmd_bench(args: argparse.Namespace) -> int:
    return _tool("bench").main(args.rest)


def _add_say(sub: argparse._SubParsersAction) -> None:
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
    add_flag_groups(say, SAY_FLAGS)
    say.set_defaults(func=cmd_say)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csm-service", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="engine + gRPC + HTTP/WebSocket edge in one process (the default)")
    add_flag_groups(serve, SERVE_FLAGS)
    serve.set_defaults(func=cmd_serve)

    edge = sub.add_parser("edge", help="the HTTP/WebSocket edge alone, in front of gRPC engine workers")
    add_flag_groups(edge, EDGE_FLAGS)
    edge.set_defaults(func=cmd_edge)

    _add_say(sub)

    engine = sub.add_parser("engine", help="run a gRPC engine worker (owns the GPU)")
    add_flag_groups(engine, ENGINE_WORKER_FLAGS)
    engine.set_defaults(func=cmd_engine)

    fetch = sub.add_parser("fetch", help="download the model, tokenizer and Mimi into the HF cache (HF_TOKEN)")
    add_flag_groups(fetch, FETCH_FLAGS)
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
