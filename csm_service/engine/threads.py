"""CPU threads for torch: the engine thread computes on every core it is given, any other thread
that runs torch on one, so the process keeps a single OpenMP pool.

torch's CPU parallelism on Linux is libgomp (OpenMP). libgomp gives every thread that runs a
parallel region a pool of worker threads of its own, kept until that thread exits. Once the
process holds more of them than it has CPUs, libgomp stops spinning between parallel regions, in
every pool (its "throttled" spin of 100 turns, whatever ``GOMP_SPINCOUNT`` says), and hands each
region over through futex sleeps and wake-ups. Measured on the 2-core CI machine: an 8 x 64 by
64 x 2051 product went from 50 to 170 us and a tiny-random frame step of 8 rows from 34 to ~100
ms on the engine thread, because the thread that had loaded and warmed the model ran parallel
regions before it (docs/benchmarks.md).

So the engine keeps one pool:

- the model is built on a short-lived thread (:func:`run_on_fresh_thread`): its pool dies with it;
- warm-up, capture and the loop run on the engine thread, which claims ``cpu_threads``
  (:func:`use_cpu_threads`, EngineConfig.cpu_threads; 0 = torch's default for the machine);
- prompt encoding beside the loop runs on its caller's thread with one CPU thread
  (:func:`use_cpu_threads` (1)), which makes no pool.

``torch.set_num_threads`` is per thread for OpenMP (it also sets the count a thread that has not
run torch yet will start with), so every thread the engine owns sets its own count first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

# torch's own choice for this machine (one thread per core), read before anything here changes it.
DEFAULT_CPU_THREADS = torch.get_num_threads()


def engine_cpu_threads(configured: int) -> int:
    """The engine thread's CPU threads: ``configured``, or torch's default for the machine when 0."""
    if configured < 0:
        raise ValueError(f"cpu_threads must be >= 0 (0: one per core), not {configured}")
    return configured or DEFAULT_CPU_THREADS


def use_cpu_threads(count: int) -> None:
    """Run this thread's torch CPU work on ``count`` threads (1: in the thread itself, no pool)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def run_on_fresh_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` on a new thread and wait for it -> its result (or its exception, re-raised here).

    Whatever OpenMP pool ``fn``'s torch work makes belongs to that thread and ends with it, so a
    thread that builds a model once and then only waits (the main thread, an executor's thread)
    holds none while the engine runs.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, re-raised there
            failure.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
