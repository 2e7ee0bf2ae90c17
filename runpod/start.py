"""RunPod pods and load-balancing endpoints: ``python runpod/start.py``.

Runs ``csm-service serve`` on ``PORT`` with ``/ping`` (200 ready, 204 initializing) also on
``PORT_HEALTH``, RunPod's health port; both default to 80 as RunPod documents.
"""

from __future__ import annotations

import os
import sys


def serve_argv(environ: dict[str, str]) -> list[str]:
    port = environ.get("PORT", "80")
    health_port = environ.get("PORT_HEALTH", port)
    return ["csm-service", "serve", "--port", port, "--health-port", health_port]


if __name__ == "__main__":
    argv = serve_argv(dict(os.environ)) + sys.argv[1:]
    os.execvp(argv[0], argv)
