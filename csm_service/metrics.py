"""Prometheus metrics: one ``csm_`` prefix, base units, ``_total`` counters, no per-call labels.

Engine-side metrics are observed by the gRPC servicer and read from the engine's own counters;
edge metrics by the HTTP edge. Both live in one registry per process, so ``csm-service serve``
exposes everything on one ``/metrics``. Names follow vLLM's where one fits (queue time, prefill
time, end-to-end latency, inter-token latency, an ``_info`` metric); every label value is a fixed
word or the operator's configuration, never something a client chose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from csm_service import __version__

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_BUCKETS = (0.02, 0.05, 0.0625, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 50.0)
# Generation time per 80 ms frame: fine around the budget, where "keeps up" turns into "falls behind".
FRAME_BUDGET_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.07, 0.075, 0.08, 0.085, 0.09, 0.1, 0.12, 0.16, 0.24, 0.32, 0.5, 1.0)
# A whole utterance: up to max_audio_length_ms (163.84 s) of audio, at real time factors up to ~2.
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
DEVICE_MEMORY = {  # engine.memory_bytes() key -> help
    "allocated": "Device memory in live tensors of this process (CPU: the resident set)",
    "reserved": "Device memory this process holds, cache included: what the device sees (CPU: the resident set)",
    "total": "The device's memory (CPU: the machine's RAM)",
}

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


class EngineView(Protocol):
    """What the metrics read from :class:`~csm_service.engine.engine.Engine` (named here without
    importing it: the edge imports this module and never torch)."""

    stats: object
    num_slots: int
    queue_depth: int
    num_active: int
    is_serving: bool
    observe_frame_interval: Callable[[float], None]

    def memory_bytes(self) -> dict[str, int]: ...

    def build_info(self) -> dict[str, str]: ...


class _EngineStatsCollector(Collector):
    """Counters read live from the engine thread's stats (frames count as they are generated)."""

    def __init__(self) -> None:
        self.stats: object | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (doc, read) in ENGINE_COUNTERS.items():
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(read(self.stats)) if self.stats is not None else 0.0)
            yield family


class _DeviceMemoryCollector(Collector):
    """``csm_engine_device_memory_{allocated,reserved,total}_bytes``, read at each scrape (cheap:
    the CUDA allocator's counters, or /proc on CPU); absent until an engine is bound."""

    def __init__(self) -> None:
        self.read: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.read is None:
            return
        try:
            figures = self.read()
        except (RuntimeError, OSError) as exc:  # a scrape must not fail over one gauge
            log.warning("device memory not readable: %s", exc)
            return
        for kind, doc in DEVICE_MEMORY.items():
            yield GaugeMetricFamily(f"csm_engine_device_memory_{kind}_bytes", doc, value=float(figures[kind]))


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
        self.capacity = Gauge(
            "csm_engine_slot_capacity",
            "Batch slots, sized from free memory at start-up (utilisation: active_streams / slot_capacity)",
            registry=registry,
        )
        self.ready = Gauge("csm_engine_ready", "1 when the engine serves", registry=registry)
        self.build = Info("csm_engine_build", "Version, model and how the engine runs it", registry=registry)
        self.build.info({"version": __version__})
        self._add_timings(registry)
        self._stats = _EngineStatsCollector()
        self._memory = _DeviceMemoryCollector()
        registry.register(self._stats)
        registry.register(self._memory)

    def _add_timings(self, registry: CollectorRegistry) -> None:
        """Where an utterance's time goes (vLLM's request histograms), observed as it ends well."""
        self.queue_time = Histogram(
            "csm_engine_request_queue_time_seconds",
            "Request received -> admitted to a batch slot",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prefill_time = Histogram(
            "csm_engine_request_prefill_time_seconds",
            "Admitted -> prompt prefilled (chunked: other streams' frames run in between)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "csm_engine_e2e_request_latency_seconds",
            "Request received -> last chunk",
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.frame_interval = Histogram(
            "csm_engine_inter_frame_latency_seconds",
            "Interval between an utterance's chunks / the 80 ms frames the later chunk carries: "
            "above 0.08 it is generated slower than real time",
            buckets=FRAME_BUDGET_BUCKETS,
            registry=registry,
        )

    def bind(self, engine: EngineView) -> None:
        """Read the gauges from ``engine`` from now on, and have it report its chunk intervals."""
        self.queue_depth.set_function(lambda: engine.queue_depth)
        self.active.set_function(lambda: engine.num_active)
        self.capacity.set_function(lambda: engine.num_slots)
        self.ready.set_function(lambda: float(engine.is_serving))
        self.build.info({"version": __version__, **engine.build_info()})
        self._stats.stats = engine.stats
        self._memory.read = engine.memory_bytes
        engine.observe_frame_interval = self.frame_interval.observe


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry as the scraper asked (``Accept``): OpenMetrics or Prometheus text, chosen as
    prometheus-client's own HTTP server does -> (body, content type)."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


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
        self.build = Info("csm_edge_build", "Version of the edge", registry=registry)
        self.build.info({"version": __version__})
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
