"""The thin async client of the engine workers (used by the edge and by tests; no torch).

``EngineClient("10.0.0.5:50051,10.0.0.6:50051")`` opens one channel over all the addresses with
gRPC's own ``round_robin`` policy and client-side health checking, so a worker that is loading,
draining or dead gets no new calls. A single DNS name (a Kubernetes headless Service) resolves to
all its pods the same way.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csm_service.rpc.formats import SERVICE_NAME
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb
from csm_service.rpc.gen.csm.v1 import tts_pb2_grpc

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


class EngineClient:
    def __init__(
        self, addresses: str | list[str] | tuple[str, ...], metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.target = channel_target(addresses)
        self.channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
                ("grpc.enable_retries", 1),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # A worker that comes back is used again within seconds (gRPC's default backoff grows
                # to 120 s between reconnection attempts).
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.min_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 5_000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self.stub = tts_pb2_grpc.TextToSpeechStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = metadata

    async def synthesize(self, request: pb.SynthesizeRequest, timeout: float | None = None) -> pb.SynthesizeResponse:
        return await self.stub.Synthesize(request, timeout=timeout, metadata=self.metadata)

    def synthesize_stream(
        self, request: pb.SynthesizeRequest, timeout: float | None = None
    ) -> grpc.aio.UnaryStreamCall:
        """The call: ``async for chunk in call`` reads chunks; ``call.cancel()`` frees the slot."""
        return self.stub.SynthesizeStream(request, timeout=timeout, metadata=self.metadata)

    async def stream_chunks(
        self, request: pb.SynthesizeRequest, timeout: float | None = None
    ) -> AsyncIterator[pb.AudioChunk]:
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
