"""Developer tools: benchmarks (``csm-service bench``), the load test (``csm-service loadtest``), the
Twilio simulator and transformers as a comparison peer.

Runtime code never imports this package: the ``bench`` and ``loadtest`` commands reach it through
one lazy import in :mod:`csm_service.cli` (``_tool``), made only when such a command runs.
"""
