"""What the engine benchmarks share: the engine they run (a real build, or random weights of a named
shape), their sentences, and the header fields of their JSON (device name, the command line).

Each ``bench_*`` module imports this one and none of the others; :mod:`csm_service.tools.bench`
alone imports them all (it dispatches ``csm-service bench <which>``).
"""

from __future__ import annotations

import sys

import torch

from csm_service.config import NAMED_CONFIGS, EngineConfig
from csm_service.engine.engine import Engine

SHORT_SENTENCE = "Hello, how can I help you today?"
VOICE_TRANSCRIPT = "Hi, this is Sam from the front desk, and this is how I sound on the phone."


def build_random_engine(config: str, cfg: EngineConfig) -> Engine:
    """An engine on random weights of a named model shape (no checkpoint needed), built as
    build_engine builds one: on a thread of its own, then started."""
    from csm_service.engine.build import start_loaded

    return start_loaded(cfg, lambda: _random_engine(config, cfg))


def _random_engine(config: str, cfg: EngineConfig) -> Engine:
    from csm_service.codec.mimi import MimiCodec
    from csm_service.engine.build import build_runner
    from csm_service.engine.runner import pick_device, pick_dtype
    from csm_service.model.csm import CSM
    from csm_service.model.tokenizer import ByteTokenizer

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = CSM(NAMED_CONFIGS[config])
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    codec = MimiCodec(
        None, device, seed=cfg.seed, tiny=config == "tiny", decode_dtype=pick_dtype(cfg.mimi_dtype, device)
    )
    runner = build_runner(cfg, model, device, dtype)
    return Engine(runner, codec, ByteTokenizer(), cfg)


def make_engine(config: str | None, cfg: EngineConfig) -> tuple[Engine, str]:
    """Random weights of a named shape (``--config``), else a real build of ``cfg.model``."""
    if config:
        return build_random_engine(config, cfg), f"random {config}"
    from csm_service.engine.build import build_engine

    return build_engine(cfg), cfg.model


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with its thread count."""
    from csm_service.engine.device_info import device_info

    name = device_info(device)["device_name"]
    return name if device.type == "cuda" else f"{name} CPU, {torch.get_num_threads()} threads"


def command_line() -> str:
    """This run as a ``csm-service bench ...`` command, for the JSON."""
    return "csm-service bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
