"""RunPod queue-based serverless worker: ``python runpod/handler.py``.

The engine is built once per worker from ``CSM_*`` variables (``CSM_MODEL``, ``CSM_DEVICE``...).
The handler is an async generator, so ``/stream`` returns audio chunks as they are decoded; with
``return_aggregate_stream`` ``/run`` and ``/runsync`` return the list of what it yielded (one
``/synthesize``-shaped result unless the input asks for ``"stream": true``). A worker takes as many
jobs at once as the engine has batch slots (``CSM_MAX_BATCH``; ``CSM_RUNPOD_CONCURRENCY`` overrides).

One local job, no RunPod needed (it logs the job's result and exits 0; 1 if the job failed):

CSM_MODEL=tiny-random python runpod/handler.py --test_input '{"input": {"text": "Hello", "max_audio_length_ms": 2000}}'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from csm_service.serverless import get_engine, handler, sdk_awaits_one_result, worker_config

__all__ = ["handler", "start_config"]


def start_config(argv: list[str], environ: Mapping[str, str]) -> dict[str, object]:
    """``runpod.serverless.start``'s config for these arguments (the SDK's) and environment."""
    from runpod.serverless import parser

    args, _ = parser.parse_known_args(argv)
    one_result = sdk_awaits_one_result(bool(args.rp_serve_api), bool(args.test_input), environ)
    return worker_config(get_engine(), one_result=one_result)  # loads and warms up before taking jobs


if __name__ == "__main__":
    import runpod

    runpod.serverless.start(start_config(sys.argv[1:], os.environ))
