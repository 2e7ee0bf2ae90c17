"""Twilio's side of a bidirectional media stream (``<Connect><Stream>``), for tests and benchmarks.

It behaves as Twilio's docs describe (twilio.com/docs/voice/media-streams/websocket-messages):
sends ``connected`` then ``start`` (with ``customParameters``), then caller audio as 20 ms
``media`` messages; buffers the server's ``media`` and plays it in real time; echoes each
``mark`` once the audio before it has played; on ``clear`` empties its buffer and echoes the
marks in it at once. Everything received is logged with its arrival time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from csm_service.audio.g711 import pcm16_to_mulaw

FRAME_S = 0.020
SILENCE = bytes([0xFF]) * 160
LOUD = pcm16_to_mulaw((8000 * np.sin(2 * np.pi * 300 * np.arange(160) / 8000)).astype("<i2"))


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    event: str
    payload: bytes = b""  # media
    name: str = ""  # mark


@dataclass
class TwilioSimulator:
    url: str
    stream_sid: str
    custom: dict[str, str] = field(default_factory=dict)
    log: list[Received] = field(default_factory=list)
    played: list[bytes] = field(default_factory=list)
    echoed: list[str] = field(default_factory=list)
    caller_speaking: bool = False

    async def __aenter__(self) -> TwilioSimulator:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, autoping=True)
        self._seq = 0
        self._buffer: deque[bytes | str] = deque()  # frames and mark names, in order
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": "AC" + "0" * 32,
                    "callSid": "CA" + self.stream_sid[-32:],
                    "tracks": ["inbound"],
                    "customParameters": self.custom,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
        self._tasks = [asyncio.create_task(self._quietly(t)) for t in (self._receive, self._play, self._caller)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await self.ws.close()
        await self.http.close()

    async def closed(self, timeout_s: float = 30.0) -> int | None:
        """Wait until the server closes the stream -> its close code."""
        await asyncio.wait_for(self._tasks[0], timeout_s)
        return self.ws.close_code

    @staticmethod
    async def _quietly(task: Callable[[], Awaitable[None]]) -> None:
        """The server may close the stream (stop, a refused key): that ends the task, nothing more."""
        try:
            await task()
        except (ConnectionError, aiohttp.ClientError):
            pass

    async def _send(self, message: dict) -> None:
        self._seq += 1
        if self.ws.closed:
            raise ConnectionResetError("the stream is closed")
        await self.ws.send_str(json.dumps({"sequenceNumber": str(self._seq), **message}))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def dtmf(self, digit: str) -> None:
        await self._send(
            {"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}
        )

    async def stop(self) -> None:
        await self._send({"event": "stop", "streamSid": self.stream_sid, "stop": {"accountSid": "AC", "callSid": "CA"}})

    async def _echo(self, name: str) -> None:
        self.echoed.append(name)
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            event, now = message["event"], time.monotonic()
            assert message["streamSid"] == self.stream_sid, message
            if event == "media":
                frame = base64.b64decode(message["media"]["payload"])
                self.log.append(Received(now, event, payload=frame))
                self._buffer.append(frame)
            elif event == "mark":
                self.log.append(Received(now, event, name=message["mark"]["name"]))
                self._buffer.append(message["mark"]["name"])
            elif event == "clear":
                self.log.append(Received(now, event))
                pending = [item for item in self._buffer if isinstance(item, str)]
                self._buffer.clear()
                for name in pending:  # Twilio sends back the marks of the audio it dropped
                    await self._echo(name)
            else:
                raise AssertionError(f"Twilio would not understand {message}")

    async def _play(self) -> None:
        """Play 20 ms per tick on an absolute clock; echo marks as the playhead reaches them."""
        next_tick = time.monotonic()
        while True:
            while self._buffer and isinstance(self._buffer[0], str):
                await self._echo(self._buffer.popleft())  # type: ignore[arg-type]
            if self._buffer:
                self.played.append(self._buffer.popleft())  # type: ignore[arg-type]
            next_tick += FRAME_S
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    async def _caller(self) -> None:
        """The caller's side: silence, or a loud tone while ``caller_speaking``."""
        chunk, next_tick = 0, time.monotonic()
        while True:
            chunk += 1
            payload = LOUD if self.caller_speaking else SILENCE
            media = {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            }
            await self._send({"event": "media", "streamSid": self.stream_sid, "media": media})
            next_tick += FRAME_S
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    # -- reading the log -------------------------------------------------------------------------
    def events(self) -> list[str]:
        return [r.event for r in self.log]

    def segments(self) -> list[tuple[bytes, str]]:
        """The received audio cut at each mark or clear -> [(audio, "mark:NAME" | "clear")]."""
        out, audio = [], bytearray()
        for r in self.log:
            if r.event == "media":
                audio += r.payload
            else:
                out.append((bytes(audio), f"mark:{r.name}" if r.event == "mark" else "clear"))
                audio = bytearray()
        if audio:
            out.append((bytes(audio), "open"))
        return out
