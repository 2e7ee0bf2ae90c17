"""Start real csm-service processes on loopback for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """``python -m csm_service.cli ARGS`` (or ``python SCRIPT ARGS``) with its output in a log file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        script: str | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *([script] if script else ["-m", "csm_service.cli"]), *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def start_engine(tmp: Path, *extra: str, grpc_port: int = 0) -> tuple[Process, int, int]:
    """``csm-service engine --model tiny-random``; returns the process, its gRPC and metrics ports."""
    grpc_port, metrics_port = grpc_port or free_port(), free_port()
    proc = Process(
        [
            "engine",
            "--model",
            "tiny-random",
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--data-dir",
            str(tmp / "engine-data"),
            *extra,
        ],
        tmp / f"engine-{grpc_port}-{metrics_port}.log",
    )
    return proc, grpc_port, metrics_port


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} ({last_exc!r})")


def start_serve(tmp: Path, *extra: str, env: dict[str, str] | None = None, grpc_port: int = 0) -> tuple[Process, int]:
    """``csm-service serve --model tiny-random`` on loopback; returns the process and its HTTP port."""
    port = free_port()
    args = ["serve", "--model", "tiny-random", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--data-dir", str(tmp / f"data-{port}"), *extra]
    return Process(args, tmp / f"serve-{port}.log", env=env), port


def start_edge(tmp: Path, engines: str, *extra: str) -> tuple[Process, int]:
    """``csm-service edge --engine ...`` on loopback; returns the process and its HTTP port."""
    port = free_port()
    proc = Process(
        [
            "edge",
            "--engine",
            engines,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "edge-data"),
            *extra,
        ],
        tmp / f"edge-{port}.log",
    )
    return proc, port


def http_status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


async def async_wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """wait_until that keeps the event loop running (blocking calls in ``predicate`` run in a thread)."""
    import asyncio

    end = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < end:
        try:
            value = await asyncio.to_thread(predicate)
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last failure
            last_exc = exc
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what} ({last_exc!r})")
