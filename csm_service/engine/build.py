"""Build a ready engine from an EngineConfig: build -> load -> warm up -> size slots -> capture -> SERVING."""

from __future__ import annotations

import logging
from pathlib import Path

from csm_service.codec.mimi import MimiCodec, resolve_mimi_weights
from csm_service.config import TINY_RANDOM, EngineConfig
from csm_service.engine.engine import Engine
from csm_service.engine.runner import WARM_UP_SLOTS, ModelRunner, pick_device, pick_dtype
from csm_service.model.loader import load_model

log = logging.getLogger(__name__)


def build_engine(cfg: EngineConfig, start: bool = True) -> Engine:
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    log.info("loading model %s on %s (%s)", cfg.model, device, dtype)
    model, tokenizer = load_model(cfg.model, seed=cfg.seed, dtype=dtype)  # each tensor cast as it is read
    if cfg.model == TINY_RANDOM:
        mimi_weights = None
    else:
        local = Path(cfg.model).expanduser()
        mimi_weights = resolve_mimi_weights(cfg.mimi_weights, local if local.is_dir() else None)
    codec = MimiCodec(mimi_weights, device, seed=cfg.seed, tiny=cfg.model == TINY_RANDOM)
    # A one-slot cache for the warm-up; Engine.start() sizes the slots from free memory (max_batch at most).
    runner = ModelRunner(model, WARM_UP_SLOTS, device, dtype, use_cuda_graphs=cfg.use_cuda_graphs)
    engine = Engine(runner, codec, tokenizer, cfg)
    if start:
        engine.start()
    return engine
