"""The frame step compiled for the CPU with TorchInductor: its pieces (engine/frame.py) as graphs
with symbolic batch size, cache length and codebook. Inductor compiles a dimension of size 1 as a
shape of its own, so there are two sets, one row and many rows (the runner compiles both before
SERVING); no other shape recompiles.

On CPU a frame is bound by operator dispatch as much as by weight reads: ~3,700 small operators,
~150 ms of each full-size frame and nearly all of a test-size one. Compiled, each piece is one call
into generated C++ that fuses the elementwise work (the counter-based noise, sampling, norms,
RoPE, masks) around the matrix products.

Compiled code is cached on disk (``compile_cache_dir``; Inductor's FX graph cache): a restart
skips Inductor's code generation (dynamo still traces). ``--no-compile`` runs the same pieces
eagerly, and so does a machine with no C++ compiler.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable

import torch
import torch._inductor.config

from csm_service.engine.frame import EAGER, FramePieces

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
DYNAMO_CACHE_LIMIT = 64  # graphs per piece before dynamo gives up and runs it eagerly (a few are used)
CXX_CANDIDATES = ("g++", "c++", "clang++")  # what Inductor's C++ builder looks for when CXX is unset


def find_cxx() -> str | None:
    """The C++ compiler Inductor would use, or None (the runtime image has none: run eagerly)."""
    names = (os.environ["CXX"],) if os.environ.get("CXX") else CXX_CANDIDATES
    return next((path for name in names if (path := shutil.which(name))), None)


def can_compile() -> bool:
    """Whether Inductor can build the CPU step here; says why not in the log."""
    if find_cxx() is None:
        log.warning("no C++ compiler on PATH (g++, c++, clang++ or $CXX): the CPU frame step runs eagerly")
        return False
    return True


def use_cache_dir(path: str) -> None:
    """Point Inductor's on-disk cache at ``path`` (before the first compile); "" keeps its default."""
    if path:
        os.makedirs(path, exist_ok=True)
        os.environ[CACHE_ENV] = path


def compile_pieces(cache_dir: str = "") -> FramePieces:
    """The frame's pieces wrapped by ``torch.compile``; each compiles on its first call."""
    use_cache_dir(cache_dir)
    # The fused kernels are small (a frame's elementwise work on [B, V] or [B, D] tensors): run them
    # on one thread. Parallel regions there cost a barrier per kernel, and a barrier waits out any
    # core that is busy elsewhere (Mimi, gRPC, another process): measured 20x slower frames under
    # load. The matrix products are oneDNN calls and keep every intra-op thread.
    torch._inductor.config.cpp.threads = 1
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, DYNAMO_CACHE_LIMIT)

    def compiled(fn: Callable) -> Callable:
        return functools.wraps(fn)(torch.compile(fn, dynamic=True, fullgraph=True))

    return FramePieces(**{f.name: compiled(getattr(EAGER, f.name)) for f in dataclasses.fields(FramePieces)})


def timed_compile(warm: Callable[[], None]) -> float:
    """Run ``warm`` (the first steps, which compile) -> seconds taken."""
    started = time.perf_counter()
    warm()
    elapsed = time.perf_counter() - started
    log.info("compiled the CPU frame step in %.1f s (cache: %s)", elapsed, os.environ.get(CACHE_ENV, "default"))
    return elapsed
