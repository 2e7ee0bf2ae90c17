"""The speech service over gRPC: engine workers behind one :class:`EngineClient` channel.

:class:`RemoteSpeechService` is the edge's :class:`~csm_service.core.service.SpeechService`. It
speaks core types and raises core errors; csm.v1 messages and status codes stay in this package.

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

from csm_service.core.errors import ShuttingDown
from csm_service.core.events import SpeechChunk
from csm_service.core.request import SpeechRequest
from csm_service.core.service import EncodedPrompt, EngineInfo, PromptAudio
from csm_service.rpc.client import EngineClient
from csm_service.rpc.convert_client import (
    chunk_from_proto,
    info_from_proto,
    prompt_from_proto,
    prompt_to_proto,
    request_to_proto,
    speech_error_from_rpc,
)
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

log = logging.getLogger(__name__)

INFO_TIMEOUT_S = 1.0
ENCODE_TIMEOUT_S = 60.0  # a voice prompt of up to a minute, encoded on a worker
MAX_REPLAYS = 2  # replays of one utterance on other workers after UNAVAILABLE (lost or stopping worker)
REPLAY_READY_WAIT_S = 0.75  # mid-utterance: how long to wait for a serving worker before a clear error


class RemoteSpeechService:
    """Utterances, prompts and info from the workers of ``client``; readiness for ``/health`` and
    the Twilio calls held while loading; :meth:`abort_all` for the edge's call-drain deadline."""

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
        self.last_info: EngineInfo | None = None
        self.on_replay = on_replay or (lambda: None)  # the edge counts replays
        self.shutdown_detail: str | None = None  # set by abort_all: every stream ends with it
        self._calls: set[grpc.aio.UnaryStreamCall] = set()

    async def info(self) -> EngineInfo | None:
        """One serving worker's info, or None when no worker serves (loading, draining, down)."""
        try:
            reply = await self.client.stub.GetInfo(
                pb.GetInfoRequest(), timeout=INFO_TIMEOUT_S, metadata=self.client.metadata
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("GetInfo failed: %s", exc.code())
            return None
        info = self.last_info = info_from_proto(reply)
        if info.ready:
            self.has_been_ready = True
        return info if info.ready else None

    @property
    def device(self) -> str:
        """The workers' device as last reported, else the hint."""
        return self.last_info.device if self.last_info is not None and self.last_info.device else self.device_hint

    async def encode_prompt(self, prompt: PromptAudio, timeout_s: float = ENCODE_TIMEOUT_S) -> EncodedPrompt:
        """Audio -> Mimi codes on a worker; raises a SpeechError."""
        try:
            response = await self.client.encode_prompt(prompt_to_proto(prompt), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise speech_error_from_rpc(exc) from None
        return prompt_from_proto(prompt, response)

    def abort_all(self, detail: str) -> None:
        """The call-drain deadline passed: every stream in flight ends with ShuttingDown(detail)."""
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

    async def stream(self, request: SpeechRequest) -> AsyncIterator[SpeechChunk]:
        """The utterance's chunks; raises a SpeechError. Closing the iterator cancels the engine
        call (frees the slot at once). A worker lost (UNAVAILABLE) before or during the utterance:
        the request is replayed on another serving worker from the first chunk not yet delivered;
        with none serving, a clear error (WorkerLost within a second once audio has gone out)."""
        if self.shutdown_detail is not None:
            raise ShuttingDown(self.shutdown_detail)
        message = request_to_proto(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        delivered = 0  # non-final chunks already yielded
        for replay in range(MAX_REPLAYS + 1):
            resume = delivered or request.resume_from_sequence  # a replay: from the first chunk not delivered
            call = self.client.synthesize_stream(
                message, timeout=max(0.001, deadline - loop.time()), resume_from_sequence=resume
            )
            self._calls.add(call)
            try:
                async for chunk in call:
                    if not chunk.final:
                        delivered = chunk.sequence + 1
                    yield chunk_from_proto(chunk)
                return
            except grpc.aio.AioRpcError as exc:
                if not await self._may_replay(exc, replay, delivered > 0):
                    raise speech_error_from_rpc(exc, delivered > 0) from None
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
                    raise ShuttingDown(self.shutdown_detail) from None
                raise
            finally:
                self._calls.discard(call)
                call.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _may_replay(self, exc: grpc.aio.AioRpcError, replay: int, started: bool) -> bool:
        """A lost or stopping worker (UNAVAILABLE), replays left, no shutdown, and a worker serves
        (mid-utterance: within REPLAY_READY_WAIT_S)."""
        return (
            exc.code() == grpc.StatusCode.UNAVAILABLE
            and replay < MAX_REPLAYS
            and self.shutdown_detail is None
            and await self.wait_until_serving(REPLAY_READY_WAIT_S if started else 0.0)
        )
