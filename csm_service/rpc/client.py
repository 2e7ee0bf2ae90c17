"""The thin async client of the engine workers (used by the edge and by tests; no torch).

``EngineClient("10.0.0.5:50051,10.0.0.6:50051")`` opens one channel over all the addresses with
gRPC's own ``round_robin`` policy and client-side health checking, so a worker that is loading,
draining or dead gets no new calls. A single DNS name (a Kubernetes headless Service) resolves to
all its pods the same way.

Keepalive: the client pings every connection every ``keepalive_time_s`` (10 s), with calls or
without and however long no data has flowed (the Health.Watch streams of client-side health
checking sit idle for minutes), and drops a connection whose ping goes unanswered for
``keepalive_timeout_s``. The engine's server permits exactly this (``rpc/server.py``:
``min_ping_interval_s`` 5 s <= 10 s), so it never answers with GOAWAY ``too_many_pings``. A
GOAWAY the engine sends when a connection reaches its maximum age makes the channel reconnect and
re-resolve the DNS name, which is how an edge finds engine pods added after it started.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_service.config import ServiceConfig
from csm_service.rpc.auth import grpc_metadata
from csm_service.rpc.formats import SERVICE_NAME
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.rpc.gen.csm.v1 import tts_pb2_grpc
from csm_service.tenants import ApiKey

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SERVICE_NAME},
}


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"engine address must be host:port, got {address!r}")
    return host.strip("[]"), port


def channel_target(addresses: str | list[str] | tuple[str, ...]) -> str:
    """A gRPC target naming every worker: ``dns:///name:port`` for one name, else a static list."""
    items = [a for a in (addresses.split(",") if isinstance(addresses, str) else addresses) if a.strip()]
    if not items:
        raise ValueError("no engine address given")
    parsed = [_split(a) for a in items]
    if len(parsed) == 1:
        host, port = parsed[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return f"dns:///{host}:{port}"
        return f"ipv6:[{ip}]:{port}" if ip.version == 6 else f"ipv4:{ip}:{port}"
    resolved = []
    for host, port in parsed:  # several names: resolve each once (IPv4) into one static list
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            ip = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        resolved.append(f"{ip}:{port}")
    return "ipv4:" + ",".join(resolved)


# The defaults live in ServiceConfig (one definition); these names are the constructors' defaults.
KEEPALIVE_TIME_S: float = ServiceConfig.grpc_keepalive_time_s
KEEPALIVE_TIMEOUT_S: float = ServiceConfig.grpc_keepalive_timeout_s


def keepalive_options(keepalive_time_s: float, keepalive_timeout_s: float) -> list[tuple[str, int]]:
    """gRPC core arguments for pings every ``keepalive_time_s``, idle or not (client and server)."""
    if keepalive_time_s <= 0 or keepalive_timeout_s <= 0:
        raise ValueError("keepalive time and timeout must be > 0 s")
    return [
        ("grpc.keepalive_time_ms", round(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),  # ping even with no call open
        # gRPC's default (2) stops pinging after two pings without data, then throttles to one a
        # minute: a dead peer behind an idle Health.Watch stream would go unnoticed for minutes.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def client_policy(cfg: ServiceConfig) -> dict[str, float]:
    """EngineClient's keepalive keywords from the service configuration."""
    return {"keepalive_time_s": cfg.grpc_keepalive_time_s, "keepalive_timeout_s": cfg.grpc_keepalive_timeout_s}


class EngineClient:
    def __init__(
        self,
        addresses: str | list[str] | tuple[str, ...],
        metadata: tuple[tuple[str, str], ...] = (),
        keepalive_time_s: float = KEEPALIVE_TIME_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self.target = channel_target(addresses)
        self.channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                ("grpc.enable_retries", 1),
                *keepalive_options(keepalive_time_s, keepalive_timeout_s),
                # A worker that comes back is used again within seconds (gRPC's default backoff grows
                # to 120 s between reconnection attempts).
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.min_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 5_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self.stub = tts_pb2_grpc.TextToSpeechServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = metadata

    async def synthesize(self, request: pb.SynthesizeRequest, timeout: float | None = None) -> pb.SynthesizeResponse:
        return await self.stub.Synthesize(request, timeout=timeout, metadata=self.metadata)

    def synthesize_stream(
        self, request: pb.SynthesizeRequest, timeout: float | None = None, resume_from_sequence: int = 0
    ) -> grpc.aio.UnaryStreamCall:
        """The call: ``async for chunk in call`` reads chunks; ``call.cancel()`` frees the slot.
        ``resume_from_sequence``: a replay, sending only the chunks from that sequence on."""
        message = pb.SynthesizeStreamRequest(request=request, resume_from_sequence=resume_from_sequence)
        return self.stub.SynthesizeStream(message, timeout=timeout, metadata=self.metadata)

    async def stream_chunks(
        self, request: pb.SynthesizeRequest, timeout: float | None = None
    ) -> AsyncIterator[pb.SynthesizeStreamResponse]:
        call = self.synthesize_stream(request, timeout)
        try:
            async for chunk in call:
                yield chunk
        finally:
            call.cancel()

    async def encode_prompt(
        self, request: pb.EncodePromptRequest, timeout: float | None = None
    ) -> pb.EncodePromptResponse:
        return await self.stub.EncodePrompt(request, timeout=timeout, metadata=self.metadata)

    async def health(self, service: str = SERVICE_NAME, timeout: float = 2.0) -> int:
        """HealthCheckResponse status of one worker the channel picks (SERVING = 1)."""
        response = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return response.status

    async def close(self) -> None:
        await self.channel.close()


def edge_client(
    addresses: str | list[str] | tuple[str, ...], cfg: ServiceConfig, keys: Iterable[str | ApiKey]
) -> EngineClient:
    """A client of the workers at ``addresses`` with ``cfg``'s keepalive, sending the first admin key
    of ``keys`` (workers do not hold admins to per-caller limits), else the first."""
    return EngineClient(addresses, metadata=grpc_metadata(keys), **client_policy(cfg))


def is_serving(address: str, timeout_s: float) -> bool:
    """One blocking gRPC health check of ``csm.v1.TextToSpeechService`` at ``address`` (the
    container's health check: no event loop there). False for NOT_SERVING or no answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
