"""What ``csm-service loadtest`` measures and prints: one request's result, a round's report,
percentiles and the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    sent_at: float
    first_audio_s: float | None = None
    done_s: float | None = None
    audio_ms: int = 0
    chunks: int = 0
    error: str | None = None


@dataclass
class Report:
    sessions: int
    requests_per_session: int
    http_clients: int
    wall_s: float = 0.0
    ws_requests: int = 0
    ws_completed: int = 0
    http_requests: int = 0
    http_completed: int = 0
    audio_seconds: float = 0.0
    lost: int = 0  # requests never answered (no done and no error)
    misordered: int = 0  # replies out of request order, or chunk indexes not contiguous
    errors: dict[str, int] = field(default_factory=dict)
    connect_failures: int = 0
    ttfa_ms: dict[str, float] = field(default_factory=dict)
    complete_ms: dict[str, float] = field(default_factory=dict)
    http_ms: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    server_exit_code: int | None = None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": round(ordered[-1], 1)}


def render(report: Report) -> str:
    rows = [
        ("sessions x requests", f"{report.sessions} x {report.requests_per_session} (+{report.http_clients} HTTP)"),
        ("wall", f"{report.wall_s} s"),
        ("WebSocket completed", f"{report.ws_completed}/{report.ws_requests}"),
        ("HTTP completed", f"{report.http_completed}/{report.http_requests}"),
        (
            "throughput",
            f"{(report.ws_completed + report.http_completed) / max(report.wall_s, 1e-9):.1f} req/s, "
            f"{report.audio_seconds / max(report.wall_s, 1e-9):.2f} audio s/s",
        ),
        ("lost / misordered", f"{report.lost} / {report.misordered}"),
        ("errors", json.dumps(report.errors) if report.errors else "0"),
        ("WS time to first audio ms", json.dumps(report.ttfa_ms)),
        ("WS completion ms", json.dumps(report.complete_ms)),
        ("HTTP latency ms", json.dumps(report.http_ms)),
        ("server RSS MB", json.dumps(report.rss_mb) if report.rss_mb else "not sampled"),
        (
            "server exit code after SIGTERM",
            str(report.server_exit_code) if report.server_exit_code is not None else "-",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)
