"""Prometheus metrics: one ``csm_`` prefix, base units, ``_total`` counters, no per-call labels.

Engine-side metrics are observed by the gRPC servicer and read from the engine's own counters;
edge metrics by the HTTP edge. Both live in one registry per process, so ``csm-service serve``
exposes everything on one ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_BUCKETS = (0.02, 0.05, 0.0625, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 50.0)

# name -> (help, reader of the engine's stats object)
ENGINE_COUNTERS: dict[str, tuple[str, Callable[[object], float]]] = {
    "csm_engine_frames_generated": ("80 ms frames generated", lambda s: s.frames_generated),
    "csm_engine_steps": ("Batched frame steps run", lambda s: s.steps),
    "csm_engine_cancelled_running": ("Running utterances freed by a cancel", lambda s: s.cancelled_running),
    "csm_engine_frames_after_cancel": (
        "Frames generated after a cancel reached the engine (at most one per cancel)",
        lambda s: s.frames_after_cancel,
    ),
    "csm_engine_failed_prefills": ("Requests ended by an exception in their prefill", lambda s: s.failed_prefills),
    "csm_engine_failed_steps": ("Frame steps that raised (their requests ended)", lambda s: s.failed_steps),
    "csm_engine_prefix_cache_hits": ("Voice-prompt prefixes whose KV came from the cache", lambda s: s.prefix_hits),
    "csm_engine_prefix_cache_misses": ("Voice-prompt prefixes prefilled (then cached)", lambda s: s.prefix_misses),
}


class _EngineStatsCollector(Collector):
    """Counters read live from the engine thread's stats (frames count as they are generated)."""

    def __init__(self) -> None:
        self.stats: object | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (doc, read) in ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(read(self.stats)) if self.stats is not None else 0.0)
            yield family


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "csm_engine_requests_total", "Engine requests by outcome", ["outcome"], registry=registry
        )
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
        self._stats = _EngineStatsCollector()
        registry.register(self._stats)

    def bind(
        self,
        queue_depth: Callable[[], float],
        active: Callable[[], float],
        ready: Callable[[], float],
        stats: object | None = None,
    ) -> None:
        self.queue_depth.set_function(queue_depth)
        self.active.set_function(active)
        self.ready.set_function(ready)
        self._stats.stats = stats


class EdgeMetrics:
    """The HTTP/WebSocket edge: requests by endpoint and outcome, latency as clients see it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "csm_edge_requests_total",
            "Edge requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.ttfa = Histogram(
            "csm_edge_time_to_first_audio_seconds",
            "Request received -> first audio sent to the client",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rtf = Histogram(
            "csm_edge_real_time_factor",
            "Generation time / audio duration, as the edge saw it",
            ["endpoint"],
            buckets=RTF_BUCKETS,
            registry=registry,
        )
        self.sessions = Gauge("csm_edge_websocket_sessions_active", "Open WebSocket sessions", registry=registry)
        self.engine_replays = Counter(
            "csm_edge_engine_replays_total",
            "Utterances replayed on another engine worker after theirs was lost or stopped",
            registry=registry,
        )
        self.ws_messages = Counter(
            "csm_edge_websocket_messages_total", "WebSocket messages received by type", ["type"], registry=registry
        )
        self.twilio_calls = Gauge("csm_twilio_calls_active", "Twilio media streams connected", registry=registry)
        self.twilio_events = Counter(
            "csm_twilio_events_total", "Twilio media stream messages received by event", ["event"], registry=registry
        )
        self.twilio_frames = Counter(
            "csm_twilio_frames_sent_total", "20 ms mu-law frames sent to Twilio", registry=registry
        )
        self.barge_in = Histogram(
            "csm_twilio_barge_in_seconds",
            "Barge-in trigger (say with interrupt, clear, DTMF, caller speech) -> clear sent to Twilio",
            ["trigger"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=registry,
        )
