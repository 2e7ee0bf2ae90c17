"""The container's health check (the Dockerfile's ``HEALTHCHECK``): ``python -m csm_service.healthcheck``.

Docker runs it beside the container's command without telling it what that command is, so it
reads PID 1's command line (``csm-service engine --grpc-port 6000``; behind ``docker run --init``
too) and checks that command on the port its configuration names (flags, then ``CSM_*``):

- ``serve`` and ``edge``: ``GET /health`` on the HTTP port, 200 once an engine serves (503 while
  the model loads and while draining);
- ``engine``: the gRPC health of ``csm.v1.TextToSpeechService`` on the gRPC port, SERVING once
  warm (an engine worker has no HTTP edge; its metrics port would answer while it is still loading);
- anything else (RunPod's queue handler, ``fetch``): no server to check, so healthy.

Exit status 0 healthy, 1 not, as Docker reads it; one line on stdout says why (``docker inspect``
shows it).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from csm_service.cli import build_parser
from csm_service.config import EngineConfig, ServiceConfig, build_config

SERVERS = ("serve", "edge", "engine")
TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout (5 s)
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(EngineConfig)} | {
    f.name for f in dataclasses.fields(ServiceConfig)
}


def pid1_argv(path: str = "/proc/1/cmdline") -> list[str]:
    return [arg.decode(errors="replace") for arg in Path(path).read_bytes().split(b"\0") if arg]


def server_argv(argv: list[str]) -> list[str] | None:
    """``argv`` from its csm-service server command on (``engine --grpc-port 6000``), or None."""
    for i, arg in enumerate(argv):
        if arg in SERVERS:
            return argv[i:]
    return None


def _local(host: str) -> str:
    """Where to reach a server bound to ``host`` from inside its container."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def target(command: list[str], environ: Mapping[str, str]) -> tuple[str, str]:
    """-> ("http", the /health URL) or ("grpc", host:port) of the server ``command`` runs."""
    args, _ = build_parser().parse_known_args(command)
    given = {name: value for name, value in vars(args).items() if name in _CONFIG_FIELDS}
    cfg = build_config(given, dict(environ))
    if args.command == "engine":
        return "grpc", f"{_local(cfg.grpc_host)}:{cfg.grpc_port}"
    return "http", f"http://{_local(cfg.host)}:{cfg.port}/health"


def check(command: list[str] | None, environ: Mapping[str, str]) -> tuple[bool, str]:
    """-> (healthy, why) for the server ``command`` runs (None: no server)."""
    if command is None:
        return True, "no csm-service server in this container: nothing to check"
    kind, where = target(command, environ)
    if kind == "grpc":
        from csm_service.rpc.client import is_serving  # grpc: only the engine's check loads it

        ok = is_serving(where, TIMEOUT_S)
        return ok, f"gRPC health at {where}: {'SERVING' if ok else 'not serving'}"
    try:
        with urllib.request.urlopen(where, timeout=TIMEOUT_S) as resp:
            return resp.status == 200, f"{where}: {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{where}: {exc.code}"
    except OSError as exc:
        return False, f"{where}: {exc}"


def main() -> int:
    ok, why = check(server_argv(pid1_argv()), os.environ)
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
