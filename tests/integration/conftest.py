"""One `csm-service serve --model tiny-random` process shared by the edge tests (HTTP + WebSocket)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.integration.servers import Process, free_port, http_status, metric, start_serve, wait_until

# Small bounds so every limit can be hit cheaply; the seed's fields and defaults are unchanged.
LIMITS = {
    "max_inflight_per_session": 3,
    "max_ws_message_bytes": 4096,
    "max_body_bytes": 65536,
    "max_text_chars": 500,
    "max_sessions": 12,
    "session_context_positions": 120,
    "max_piece_chars": 60,
    # All the tests' clients share one address (keys off: one client for the in-flight cap); the
    # load test alone has 18 utterances in flight. The cap's own tests: tests/integration/test_tenants.py.
    "max_inflight_per_key": 64,
}


@dataclass
class Served:
    proc: Process
    port: int
    health_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/native/ws/{session_id}"

    @property
    def data_dir(self) -> str:
        return str(self.proc.log_path.parent / f"data-{self.port}")

    def metric(self, name: str) -> float:
        return metric(self.port, name)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    health_port = free_port()
    flags = [a for k, v in LIMITS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    proc, port = start_serve(tmp_path_factory.mktemp("serve"), *flags, "--health-port", str(health_port))
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "serve /health 200")
        yield Served(proc, port, health_port)
    finally:
        print(proc.log()[-3000:])
        proc.stop()
