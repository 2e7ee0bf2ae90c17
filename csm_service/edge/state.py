"""What every edge handler shares: config, backend, metrics, open sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from csm_service.auth import KeyChecker
from csm_service.config import ServiceConfig
from csm_service.edge.backend import Backend
from csm_service.metrics import EdgeMetrics


@dataclass
class EdgeState:
    cfg: ServiceConfig
    backend: Backend
    registry: CollectorRegistry
    metrics: EdgeMetrics
    checker: KeyChecker = field(default_factory=lambda: KeyChecker(()))
    sessions: set = field(default_factory=set)  # open WsSession objects


STATE = web.AppKey("state", EdgeState)
