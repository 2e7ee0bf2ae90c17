"""Engine.start(): the engine thread warms up and serves; a failed warm-up and a stop() during the
warm-up both end the start, on the caller's thread, and leave no loop running."""

from __future__ import annotations

import threading

import pytest

from csm_service.config import EngineConfig
from csm_service.core.errors import EngineUnavailable
from csm_service.engine.build import build_engine

CFG = EngineConfig(model="tiny-random", compile_cpu=False, max_batch=1, prefix_cache_mb=0)


def test_warm_up_runs_on_the_engine_thread_and_a_failure_reaches_start(monkeypatch):
    engine = build_engine(CFG, start=False)
    seen: list[str] = []

    def failing_warm_up() -> None:
        seen.append(threading.current_thread().name)
        raise RuntimeError("no memory for the warm-up")

    monkeypatch.setattr(engine, "_warm_up", failing_warm_up)
    with pytest.raises(RuntimeError, match="no memory"):
        engine.start()
    assert seen == ["csm-engine"] and engine.state == "stopped"
    assert not engine._thread.is_alive()


def test_stop_during_the_warm_up_wins(monkeypatch):
    engine = build_engine(CFG, start=False)
    warming, stopped = threading.Event(), threading.Event()
    warm_up = engine._warm_up

    def slow_warm_up() -> None:
        warming.set()
        assert stopped.wait(60)
        warm_up()

    monkeypatch.setattr(engine, "_warm_up", slow_warm_up)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            engine.start()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    assert warming.wait(60)
    engine.stop(timeout=0)  # the warm-up is still running
    stopped.set()
    starter.join(60)
    assert isinstance(outcome[0], EngineUnavailable), outcome
    engine._thread.join(60)
    assert engine.state == "stopped" and not engine._thread.is_alive()  # the loop never served
