"""One OpenMP pool per process: the engine thread's (csm_service/engine/threads.py).

libgomp keeps a pool of worker threads for every thread that ever ran a parallel region, and once
the process has more of them than CPUs every pool hands its regions over through futex wake-ups:
a tiny-random frame of 8 rows took ~100 ms instead of ~35 on the engine thread when the thread
that loaded the model had a pool of its own. The check runs in a fresh process, as a worker is
started: the main thread builds an engine, one request is served, and a prompt is encoded on a
thread that stays alive (an executor's, as the servers encode). Then the threads the process has
beyond Python's own are counted: every OpenMP worker is one. Before the fix there were three (the
loading thread's, the engine thread's, the encoding thread's); there must be one, the engine's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from csm_service.engine.threads import engine_cpu_threads, run_on_fresh_thread

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent(
    """
    import json, os, threading
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import torch  # imported, but this (main) thread runs no torch operation of its own

    def native_threads():
        return {int(t) for t in os.listdir("/proc/self/task")} - {t.native_id for t in threading.enumerate()}

    before = native_threads()
    from csm_service.config import EngineConfig
    from csm_service.core.events import Finished
    from csm_service.core.request import SpeechRequest
    from csm_service.engine.build import build_engine

    cfg = EngineConfig(model="tiny-random", device="cpu", compile_cpu=False, max_batch=2, cpu_threads=2)
    engine = build_engine(cfg)
    done = threading.Event()
    engine.submit(SpeechRequest("Hello there.", max_audio_length_ms=240), lambda e: isinstance(e, Finished) and done.set())
    assert done.wait(300), "the request never finished"
    helper = ThreadPoolExecutor(1)
    helper.submit(engine.encode_prompt, np.zeros(24000, np.float32), 24000).result()
    print(json.dumps({"openmp_workers": len(native_threads() - before), "torch_threads_main": torch.get_num_threads()}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc (Linux only)")
def test_one_openmp_pool_in_a_serving_process():
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # cpu_threads=2: the engine thread plus one worker of its pool; no other thread holds a pool.
    assert report["openmp_workers"] == 1, report


def test_fresh_thread_returns_and_reraises():
    assert run_on_fresh_thread(lambda: 41 + 1, name="t") == 42

    def fail() -> None:
        raise KeyError("from the thread")

    with pytest.raises(KeyError, match="from the thread"):
        run_on_fresh_thread(fail, name="t")


def test_cpu_threads_setting():
    assert engine_cpu_threads(3) == 3
    assert engine_cpu_threads(0) >= 1  # torch's default for the machine
    with pytest.raises(ValueError, match="cpu_threads"):
        engine_cpu_threads(-1)
