"""The engine warms up (and encodes a prompt) with no C compiler anywhere, as in the runtime image.

moshi compiles its small functions (rope, ...) with ``torch.compile`` on CUDA, which needs a
compiler at run time; on CPU it skips that itself (its transformer layer enters ``no_compile()``
for non-CUDA inputs). The child process below takes that CPU exemption away, so this CPU run
compiles exactly where a GPU run would, and runs with a PATH holding only a python (no cc, gcc,
g++; CC and CXX unset) and an empty Inductor cache. A control compile must fail there; the engine
must still reach SERVING. A second child, with the codec's compile switch disabled, must fail:
the test would catch the runtime image's missing compiler.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import contextlib, sys
import numpy as np
import torch
import moshi.modules.transformer as moshi_transformer
import csm_service.codec.mimi as mimi

moshi_transformer.no_compile = contextlib.nullcontext  # compile on CPU where CUDA would
if sys.argv[1] == "without-switch":
    mimi.disable_moshi_compile = lambda: None
try:
    torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
except Exception as exc:
    print("control: no compiler:", type(exc).__name__)
else:
    sys.exit("control failed: a compiler was found, this run proves nothing")

from csm_service.config import EngineConfig
from csm_service.engine.build import build_engine

engine = build_engine(EngineConfig(model="tiny-random", device="cpu", max_batch=2), start=True)
assert engine.is_serving, engine.state
codes = engine.encode_prompt(np.zeros(1920 * 2, np.float32), 24000)
assert codes.shape == (32, 2), codes.shape
engine.stop()
print("warm-up ok")
"""


def _run_child(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(Path(sys.executable).resolve())
    keep = ("HOME", "LANG", "TMPDIR", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        PATH=str(bin_dir),
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / f"inductor-{mode}"),  # nothing compiled earlier is reused
        TORCHINDUCTOR_FX_GRAPH_CACHE="0",
    )
    # The interpreter by its venv path (a symlink elsewhere would lose the venv); PATH has only python.
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )


def test_warm_up_without_a_compiler(tmp_path):
    proc = _run_child(tmp_path, "with-switch")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "control: no compiler" in proc.stdout and "warm-up ok" in proc.stdout


def test_without_the_switch_the_same_run_needs_a_compiler(tmp_path):
    proc = _run_child(tmp_path, "without-switch")
    assert proc.returncode != 0 and "control: no compiler" in proc.stdout
    assert "InvalidCxxCompiler" in proc.stderr or "C++ compiler" in proc.stderr, proc.stderr[-4000:]


def test_runtime_image_turns_moshi_compile_off():
    runtime = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    assert "NO_TORCH_COMPILE=1" in runtime
