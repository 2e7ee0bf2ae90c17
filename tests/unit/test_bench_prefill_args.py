"""``csm-service bench prefill`` refuses arguments it cannot measure with before it builds an engine
(a full-size start-up takes minutes), instead of failing after it."""

from __future__ import annotations

import argparse

import pytest

from csm_service.tools import bench_prefill


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_prefill.add_parser(parser.add_subparsers())
    return parser.parse_args(["prefill", *argv])


def test_too_few_warm_frames_is_refused_before_the_engine_is_built(monkeypatch):
    def no_engine(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an engine was built for arguments that cannot be measured")

    monkeypatch.setattr(bench_prefill, "make_engine", no_engine)
    with pytest.raises(SystemExit, match="--warm-frames must be at least 3"):
        bench_prefill.bench_prefill(_args("--warm-frames", "2"))
