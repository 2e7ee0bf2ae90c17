"""The edge's connection cap without a server: who gets a place, who is pushed out, who is refused,
and how the cap fits the file-descriptor limit."""

from __future__ import annotations

import resource

import pytest

from csm_service.edge import connections
from csm_service.edge.connections import ConnectionGuard, ConnectionLimits, fit_to_fd_limit


class FakeConn:
    """What the guard sees of a connection: whether it is idle, and how it is closed."""

    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.health_only = False
        self.closed = self.refused = False

    def force_close(self) -> None:
        self.closed = True

    def refuse(self) -> None:
        self.refused = self.closed = True


def guard(cap: int, reserve: int) -> tuple[ConnectionGuard, list[str]]:
    outcomes: list[str] = []
    return ConnectionGuard(ConnectionLimits(max_connections=cap, health_reserve=reserve), outcomes.append), outcomes


def test_at_the_cap_the_oldest_idle_connection_makes_room():
    g, outcomes = guard(cap=3, reserve=1)
    busy, idle_old, idle_new = FakeConn(idle=False), FakeConn(), FakeConn()
    for conn in (busy, idle_old, idle_new):
        assert g.admit(conn)
    newcomer = FakeConn()
    assert g.admit(newcomer) and not newcomer.health_only
    assert idle_old.closed and not idle_new.closed and not busy.closed  # oldest idle, never a busy one
    assert outcomes == ["pushed_out"] and len(g) == 3


def test_with_every_place_busy_the_reserve_is_for_health_then_refusal():
    g, outcomes = guard(cap=2, reserve=2)
    for _ in range(2):
        assert g.admit(FakeConn(idle=False))
    first, second = FakeConn(idle=False), FakeConn()
    assert g.admit(first) and first.health_only  # the reserve: /health and /ping only
    assert g.admit(second) and second.health_only
    third = FakeConn()
    assert g.admit(third) and second.closed  # an idle reserve place is given up to a newcomer
    third.idle = False
    refused = FakeConn()
    assert not g.admit(refused) and refused.refused  # cap and reserve busy: 503 at once
    assert outcomes == ["pushed_out", "refused"] and len(g) == 4
    g.release(first)
    assert g.admit(FakeConn()) and len(g) == 4  # a closed connection gives its place back


def test_no_cap_admits_everything():
    g, outcomes = guard(cap=0, reserve=0)
    conns = [FakeConn(idle=False) for _ in range(1000)]
    assert all(g.admit(c) for c in conns) and not outcomes


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "raised_to"),
    [
        (1024, 1024, 1024 - 16 - connections.FD_HEADROOM, None),  # cannot raise: the cap is lowered
        (1024, 1 << 20, 4096, 4096 + 16 + connections.FD_HEADROOM),  # raised as far as needed
        (1 << 20, 1 << 20, 4096, None),  # room already
    ],
)
def test_the_cap_fits_the_descriptor_limit(monkeypatch, soft, hard, cap, raised_to):
    raised: list[int] = []

    def setrlimit(kind: int, limits: tuple[int, int]) -> None:
        if limits[0] > hard:
            raise ValueError("over the hard limit")
        raised.append(limits[0])

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    limits = fit_to_fd_limit(ConnectionLimits(max_connections=4096, health_reserve=16))
    assert limits.max_connections == cap
    assert raised == ([raised_to] if raised_to else [])
