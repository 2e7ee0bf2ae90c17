"""Continuous batching bookkeeping: a bounded waiting queue and the free batch slots.

Requests are admitted between frames, lowest free slot first, so live slots stay packed at the low
rows and each step runs on the smallest batch that covers them.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

from csm_service.core.errors import Overloaded

T = TypeVar("T")


class Scheduler(Generic[T]):
    def __init__(self, max_batch: int, max_queue: int) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.waiting: deque[T] = deque()
        self._free: list[int] = list(range(max_batch))
        heapq.heapify(self._free)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_running(self) -> int:
        return self.max_batch - len(self._free)

    def enqueue(self, item: T) -> None:
        """Queue ``item``; refuses with Overloaded when slots and queue are both full."""
        if len(self.waiting) >= self.max_queue + len(self._free):  # free slots take waiters next frame
            raise Overloaded(
                f"overloaded: {self.num_running} utterances running and {len(self.waiting)} waiting; retry later"
            )
        self.waiting.append(item)

    def remove_waiting(self, item: T) -> bool:
        try:
            self.waiting.remove(item)
            return True
        except ValueError:
            return False

    def admit(self) -> list[tuple[int, T]]:
        """Pair waiting items with free slots, oldest first."""
        admitted = []
        while self._free and self.waiting:
            admitted.append((heapq.heappop(self._free), self.waiting.popleft()))
        return admitted

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)
