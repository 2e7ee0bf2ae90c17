"""RunPod queue-based serverless worker: ``python runpod/handler.py``.

The engine is built once per worker from ``CSM_*`` variables (``CSM_MODEL``, ``CSM_DEVICE``...).
The handler is a generator, so ``/stream`` returns audio chunks as they are decoded; with
``return_aggregate_stream`` ``/run`` and ``/runsync`` return the list of what it yielded (one
``/synthesize``-shaped result unless the input asks for ``"stream": true``). Local test without
RunPod: ``python runpod/handler.py --test_input '{"input": {"text": "Hello"}}'``.
"""

from __future__ import annotations

from csm_service.serverless import get_engine, handler

if __name__ == "__main__":
    import runpod

    get_engine()  # load and warm up before taking jobs
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
