"""A process that ends without stopping its engine still exits cleanly.

The engine loop runs on a daemon thread. If the interpreter finalizes while that thread is inside
torch, the thread is unwound through C++ frames that cannot be unwound and the process aborts after
its work is done ("terminate called without an active exception", exit status -6): seen once in CI,
after a RunPod local test job had succeeded. The engine therefore stops and joins its loop from an
atexit callback, which runs before finalization. The check is deterministic: a callback registered
before the engine runs after the engine's (atexit is last in, first out) and reports whether the
loop's thread is still alive at that point. Without the engine's callback it always is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent(
    """
    import atexit, json, threading

    def report():  # registered first, so it runs after every callback registered later
        alive = [t.name for t in threading.enumerate() if t.name == "csm-engine" and t.is_alive()]
        print(json.dumps({"engine_threads_alive": alive, "state": engine.state}), flush=True)

    atexit.register(report)
    from csm_service.config import EngineConfig
    from csm_service.core.events import Finished
    from csm_service.core.request import SpeechRequest
    from csm_service.engine.build import build_engine

    engine = build_engine(EngineConfig(model="tiny-random", device="cpu", compile_cpu=False, max_batch=2))
    done = threading.Event()
    engine.submit(SpeechRequest("Hello.", max_audio_length_ms=160), lambda e: isinstance(e, Finished) and done.set())
    assert done.wait(300), "the request never finished"
    # The script ends here without engine.stop(), as the RunPod SDK's local test run ends.
    """
)


def test_engine_loop_is_stopped_and_joined_before_the_interpreter_finalizes():
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"engine_threads_alive": [], "state": "stopped"}, report
