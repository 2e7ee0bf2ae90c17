"""The edge's view of its engine workers: readiness, info, and synthesis calls with error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from csm_service.edge.errors import from_rpc_error
from csm_service.rpc.client import EngineClient
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 1.0
RETRIES_ON_UNAVAILABLE = 1  # a request no worker has answered yet is worth one more try elsewhere


class Backend:
    def __init__(self, client: EngineClient, request_timeout_s: float, device_hint: str = "unknown") -> None:
        self.client = client
        self.request_timeout_s = request_timeout_s
        self.device_hint = device_hint  # what /health says before any worker has answered
        self.has_been_ready = False
        self.last_info: pb.EngineInfo | None = None

    async def info(self) -> pb.EngineInfo | None:
        """One serving worker's info, or None when no worker serves (loading, draining, down)."""
        try:
            info = await self.client.stub.GetInfo(
                pb.GetInfoRequest(), timeout=INFO_TIMEOUT_S, metadata=self.client.metadata
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("GetInfo failed: %s", exc.code())
            return None
        self.last_info = info
        if info.ready:
            self.has_been_ready = True
        return info if info.ready else None

    @property
    def device(self) -> str:
        return self.last_info.device if self.last_info is not None and self.last_info.device else self.device_hint

    async def encode_prompt(self, request: pb.EncodePromptRequest, timeout_s: float) -> pb.EncodePromptResponse:
        """Audio -> Mimi codes on a worker; raises ApiError."""
        try:
            return await self.client.encode_prompt(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def stream(self, request: pb.SynthesizeRequest) -> AsyncIterator[pb.AudioChunk]:
        """The utterance's chunks; raises ApiError. Cancelling the consumer cancels the engine call
        (frees the slot at once). A worker lost before the first chunk: one retry on another; lost
        after it: WORKER_LOST (audio already sent cannot be taken back)."""
        for attempt in range(1 + RETRIES_ON_UNAVAILABLE):
            call = self.client.synthesize_stream(request, timeout=self.request_timeout_s)
            started = False
            try:
                async for chunk in call:
                    started = True
                    yield chunk
                return
            except grpc.aio.AioRpcError as exc:
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and not started
                if not retry or attempt == RETRIES_ON_UNAVAILABLE:
                    raise from_rpc_error(exc, started) from None
                log.warning("engine stream failed (%s: %s); retrying on another worker", exc.code().name, exc.details())
            finally:
                call.cancel()
