"""Prometheus metrics: one ``csm_`` prefix, base units, ``_total`` counters, no per-call labels.

Engine-side metrics are observed by the gRPC servicer; edge metrics by the HTTP edge. Both live
in one registry per process so ``csm-service serve`` exposes everything on one ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_BUCKETS = (0.02, 0.05, 0.0625, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 50.0)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "csm_engine_requests_total", "Engine requests by outcome", ["outcome"], registry=registry
        )
        self.frames = Counter("csm_engine_frames_generated_total", "80 ms frames generated", registry=registry)
        self.audio_seconds = Counter("csm_engine_audio_seconds_total", "Seconds of audio generated", registry=registry)
        self.ttfa = Histogram(
            "csm_engine_time_to_first_audio_seconds",
            "Request received -> first chunk",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rtf = Histogram(
            "csm_engine_real_time_factor", "Generation time / audio duration", buckets=RTF_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge("csm_engine_queue_depth", "Requests waiting for a slot", registry=registry)
        self.active = Gauge("csm_engine_active_streams", "Utterances being generated", registry=registry)
        self.ready = Gauge("csm_engine_ready", "1 when the engine serves", registry=registry)

    def bind(self, queue_depth: Callable[[], float], active: Callable[[], float], ready: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.active.set_function(active)
        self.ready.set_function(ready)
