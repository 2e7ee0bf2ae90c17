"""``--spawn`` for the load tools (``loadtest``, ``bench twilio``): a ``csm-service serve --model
tiny-random`` on loopback, on a free port, and a wait until its ``/health`` says 200.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

import aiohttp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``url``/health until it answers 200; RuntimeError if ``proc`` exits first, TimeoutError after."""
    end = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} while starting")
            try:
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("the server did not become healthy")


def spawn_serve(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """Start the server (``args.serve_args`` appended, its log to ``args.server_log``) -> (process, base URL)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "csm_service.cli", "serve", "--model", "tiny-random", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--grpc-host", "127.0.0.1", "--grpc-port", "0", *args.serve_args.split()]
    log = open(args.server_log, "wb") if args.server_log else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"
