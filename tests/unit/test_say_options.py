"""``say`` builds its engine as its flags and CSM_* variables ask: every engine option reaches it.

Before, ``say`` passed only model, device, dtype, Mimi weights and seed on, so ``--no-compile``,
``--quantize``, ``--mimi-dtype``, ``--cpu-threads`` and the rest were accepted and ignored (a test
process's ``CSM_COMPILE_CPU=0`` too: every ``say`` in the suite compiled its frame step).
"""

from __future__ import annotations

import pytest

from csm_service import synthesizer
from csm_service.cli import ENGINE_OPTS, _config, build_parser
from csm_service.say import load_synthesizer


class Built(Exception):
    """Raised by the stand-in build_engine with the config it was given."""


def _built_config(monkeypatch: pytest.MonkeyPatch, argv: list[str]):
    def build_engine(cfg):
        raise Built(cfg)

    monkeypatch.setattr(synthesizer, "build_engine", build_engine)
    args = build_parser().parse_args(argv)
    with pytest.raises(Built) as built:
        load_synthesizer(_config(args, ENGINE_OPTS).engine)
    return built.value.args[0]


def test_every_engine_flag_reaches_the_engine(monkeypatch):
    monkeypatch.setenv("CSM_MIMI_DTYPE", "bfloat16")
    cfg = _built_config(
        monkeypatch,
        [
            "say",
            "hi",
            "--model",
            "tiny-random",
            "--no-compile",
            "--no-cpu-kernels",
            "--quantize",
            "int8",
            "--cpu-threads",
            "1",
            "--prefix-cache-mb",
            "0",
            "--max-batch",
            "32",
        ],
    )
    assert cfg.model == "tiny-random"
    assert (cfg.compile_cpu, cfg.quantize, cfg.cpu_threads, cfg.prefix_cache_mb) == (False, "int8", 1, 0)
    assert cfg.cpu_kernels is False
    assert cfg.mimi_dtype == "bfloat16"  # from the environment
    assert (cfg.max_batch, cfg.max_queue) == (1, 4)  # say's own: one utterance at a time


def test_compile_switch_from_the_environment(monkeypatch):
    monkeypatch.setenv("CSM_COMPILE_CPU", "0")
    assert _built_config(monkeypatch, ["say", "hi", "--model", "tiny-random"]).compile_cpu is False


def test_cpu_kernel_switch_from_the_environment(monkeypatch):
    assert _built_config(monkeypatch, ["say", "hi", "--model", "tiny-random"]).cpu_kernels is True
    monkeypatch.setenv("CSM_CPU_KERNELS", "0")
    assert _built_config(monkeypatch, ["say", "hi", "--model", "tiny-random"]).cpu_kernels is False
