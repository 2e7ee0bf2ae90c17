"""Build a ready engine from an EngineConfig: build -> load -> warm up -> size slots -> capture -> SERVING.

What ``cfg.model`` names (a checkpoint or a named entry such as ``tiny-random``) is looked up in
:mod:`csm_service.model.registry`; the entry says how to load the model and which Mimi goes with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from csm_service.codec.mimi import MimiCodec, resolve_mimi_weights
from csm_service.config import EngineConfig
from csm_service.engine.engine import Engine
from csm_service.engine.runner import WARM_UP_SLOTS, ModelRunner, pick_device, pick_dtype
from csm_service.engine.threads import engine_cpu_threads, run_on_fresh_thread, use_cpu_threads
from csm_service.model.csm import CSM
from csm_service.model.registry import ModelEntry, model_entry

log = logging.getLogger(__name__)


def build_codec(cfg: EngineConfig, entry: ModelEntry, device: torch.device) -> MimiCodec:
    """The entry's Mimi: random test-size, or trained weights (``--mimi-weights``, a file beside a
    local checkpoint directory, or moshi's file from the hub cache)."""
    decode_dtype = pick_dtype(cfg.mimi_dtype, device)  # a dtype name, checked by EngineConfig
    if entry.random_mimi:
        return MimiCodec(None, device, seed=cfg.seed, tiny=True, decode_dtype=decode_dtype)
    local = Path(cfg.model).expanduser()
    weights = resolve_mimi_weights(cfg.mimi_weights, local if local.is_dir() else None)
    return MimiCodec(weights, device, seed=cfg.seed, decode_dtype=decode_dtype)


def build_runner(cfg: EngineConfig, model: CSM, device: torch.device, dtype: torch.dtype) -> ModelRunner:
    """The runner as ``cfg`` asks (graphs, compile, quantization), on a one-slot warm-up cache:
    Engine.start() sizes the slots from free memory (max_batch at most)."""
    return ModelRunner(
        model,
        WARM_UP_SLOTS,
        device,
        dtype,
        use_cuda_graphs=cfg.use_cuda_graphs,
        compile_cpu=cfg.compile_cpu,
        compile_cache_dir=cfg.compile_cache_dir,
        quantize=cfg.quantize,
        cpu_kernels=cfg.cpu_kernels,
    )


def build_engine(cfg: EngineConfig, start: bool = True) -> Engine:
    """Load the model (:func:`load_engine`), then start the engine thread, which warms up and serves."""
    return start_loaded(cfg, lambda: load_engine(cfg), start)


def start_loaded(cfg: EngineConfig, load: Callable[[], Engine], start: bool = True) -> Engine:
    """Run ``load`` on a thread of its own with the engine's CPU threads (its OpenMP pool ends with
    it, engine/threads.py), then start the engine it built."""

    def on_load_thread() -> Engine:
        use_cpu_threads(engine_cpu_threads(cfg.cpu_threads))
        return load()

    engine = run_on_fresh_thread(on_load_thread, name="csm-load")
    if start:
        engine.start()
    return engine


def load_engine(cfg: EngineConfig) -> Engine:
    """Build and load (not started): the model, Mimi and the runner."""
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    log.info("loading model %s on %s (%s)", cfg.model, device, dtype)
    entry = model_entry(cfg.model)
    model, tokenizer = entry.load(cfg.model, cfg.seed, dtype)  # on CPU, each tensor cast as it is read
    codec = build_codec(cfg, entry, device)
    return Engine(build_runner(cfg, model, device, dtype), codec, tokenizer, cfg)
