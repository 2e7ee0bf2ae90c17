"""The edge's view of its engine workers: readiness, info, and synthesis calls with error mapping.

A worker lost mid-utterance costs the caller nothing when another worker serves: sampling is
indexed by (seed, frame, codebook, token), so the same request (same seed, context and voice) is
replayed on another worker with ``resume_from_sequence`` set to the chunks already delivered, and
the stream goes on where it stopped, byte for byte (same numerics on both workers; see README).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from csm_service.edge.errors import SHUTTING_DOWN, ApiError, from_rpc_error
from csm_service.rpc.client import EngineClient
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 1.0
MAX_REPLAYS = 2  # replays of one utterance on other workers after UNAVAILABLE (lost or stopping worker)
REPLAY_READY_WAIT_S = 0.75  # mid-utterance: how long to wait for a serving worker before a clear error


class Backend:
    def __init__(
        self,
        client: EngineClient,
        request_timeout_s: float,
        device_hint: str = "unknown",
        on_replay: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.request_timeout_s = request_timeout_s
        self.device_hint = device_hint  # what /health says before any worker has answered
        self.has_been_ready = False
        self.last_info: pb.EngineInfo | None = None
        self.on_replay = on_replay or (lambda: None)
        self.shutdown_detail: str | None = None  # set by abort_all: every stream ends with it
        self._calls: set[grpc.aio.UnaryStreamCall] = set()

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

    def abort_all(self, detail: str) -> None:
        """The call-drain deadline passed: every stream in flight ends with SHUTTING_DOWN(detail)."""
        self.shutdown_detail = detail
        for call in list(self._calls):
            call.cancel()

    async def wait_until_serving(self, wait_s: float) -> bool:
        """Whether some worker serves (the channel is READY), waiting up to ``wait_s`` for one."""
        channel = self.client.channel
        loop = asyncio.get_running_loop()
        end = loop.time() + wait_s
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            left = end - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), left)
            except TimeoutError:
                return False
            state = channel.get_state(try_to_connect=True)
        return True

    async def stream(self, request: pb.SynthesizeRequest) -> AsyncIterator[pb.AudioChunk]:
        """The utterance's chunks; raises ApiError. Cancelling the consumer cancels the engine call
        (frees the slot at once). A worker lost (UNAVAILABLE) before or during the utterance: the
        request is replayed on another serving worker from the first chunk not yet delivered; with
        none serving, a clear error (WORKER_LOST within a second once audio has gone out)."""
        if self.shutdown_detail is not None:
            raise ApiError(503, SHUTTING_DOWN, self.shutdown_detail, retry_after_s=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        delivered = 0  # non-final chunks already yielded
        for replay in range(MAX_REPLAYS + 1):
            attempt = request
            if delivered:
                attempt = pb.SynthesizeRequest()
                attempt.CopyFrom(request)
                attempt.resume_from_sequence = delivered
            call = self.client.synthesize_stream(attempt, timeout=max(0.001, deadline - loop.time()))
            self._calls.add(call)
            try:
                async for chunk in call:
                    if not chunk.final:
                        delivered = chunk.sequence + 1
                    yield chunk
                return
            except grpc.aio.AioRpcError as exc:
                started = delivered > 0
                if (
                    exc.code() != grpc.StatusCode.UNAVAILABLE
                    or replay == MAX_REPLAYS
                    or self.shutdown_detail is not None
                    or not await self.wait_until_serving(REPLAY_READY_WAIT_S if started else 0.0)
                ):
                    raise from_rpc_error(exc, started) from None
                self.on_replay()
                log.warning(
                    "engine stream failed (%s: %s) after %d chunks; replaying on another worker",
                    exc.code().name,
                    exc.details(),
                    delivered,
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.shutdown_detail is not None and task is not None and not task.cancelling():
                    raise ApiError(503, SHUTTING_DOWN, self.shutdown_detail, retry_after_s=1) from None
                raise
            finally:
                self._calls.discard(call)
                call.cancel()
        raise AssertionError("unreachable")  # pragma: no cover
