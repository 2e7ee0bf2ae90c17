"""A clock the test moves by hand, for code that takes ``clock=`` (rate limiter, frame pacer)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
