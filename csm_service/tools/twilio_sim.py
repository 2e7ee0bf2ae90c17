"""Twilio's side of a bidirectional media stream (``<Connect><Stream>``), for tests and benchmarks.

It behaves as Twilio's docs describe (twilio.com/docs/voice/media-streams/websocket-messages):
sends ``connected`` then ``start`` (with ``customParameters``), then caller audio as 20 ms
``media`` messages (silence, or what :meth:`TwilioSimulator.caller_says` queued, plus an echo of what
it plays when ``echo_gain`` is set); buffers the server's ``media`` and plays it in real time; echoes each
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

from csm_service.audio.g711 import mulaw_to_pcm16, pcm16_to_mulaw

FRAME_S = 0.020
FRAME_BYTES = 160
SILENCE = bytes([0xFF]) * FRAME_BYTES
RATE = 8000


def to_mulaw(samples: np.ndarray) -> bytes:
    """Float samples (full scale 1.0) -> mu-law."""
    return pcm16_to_mulaw(np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2"))


def mix(a: bytes, b: bytes, gain_b: float = 1.0) -> bytes:
    """Two mu-law frames summed (``b`` scaled by ``gain_b``)."""
    pa, pb = (mulaw_to_pcm16(x).astype(np.float32) / 32768 for x in (a, b))
    n = max(len(pa), len(pb))
    return to_mulaw(np.pad(pa, (0, n - len(pa))) + gain_b * np.pad(pb, (0, n - len(pb))))


def white_noise(seconds: float, dbfs: float, seed: int = 0) -> bytes:
    """Gaussian white noise whose RMS is ``dbfs`` (re full scale)."""
    return to_mulaw(np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 10 ** (dbfs / 20))


def hum(seconds: float, mains_hz: float, dbfs: float) -> bytes:
    """Mains hum: ``mains_hz`` and its odd harmonics (amplitude 1/k) up to 3.4 kHz, RMS ``dbfs``."""
    t = np.arange(round(seconds * RATE)) / RATE
    ks = [k for k in range(1, 200, 2) if k * mains_hz <= 3400]
    x = sum(np.sin(2 * np.pi * mains_hz * k * t + k) / k for k in ks)
    return to_mulaw(x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20))


def as_loud_as(audio: bytes, reference: list[bytes]) -> bytes:
    """mu-law ``audio``, scaled up if need be so its loudest 20 ms frame is at least as loud as the
    loudest of ``reference`` (a caller talking over the bot, at least at the bot's level)."""

    def loudest(frames: list[bytes]) -> float:
        return max(float(np.sqrt(np.mean((mulaw_to_pcm16(f).astype(np.float32) / 32768) ** 2))) for f in frames)

    pcm = mulaw_to_pcm16(audio).astype(np.float32) / 32768
    return to_mulaw(pcm * max(1.0, loudest(reference) / loudest(frames_of(audio))))


def frames_of(audio: bytes) -> list[bytes]:
    """mu-law cut into whole 20 ms frames."""
    return [audio[i : i + FRAME_BYTES] for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)]


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
    echo_gain: float = 0.0  # > 0: what it plays comes back in the caller's audio, scaled by this
    inbound_sent: int = 0  # caller media frames sent
    said_from: int = 0  # the inbound frame number that began the latest caller_says audio

    async def __aenter__(self) -> TwilioSimulator:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, autoping=True)
        self._seq = 0
        self._buffer: deque[bytes | str] = deque()  # frames and mark names, in order
        self._caller_audio: deque[bytes] = deque()  # frames the caller is still to say
        self._onset_pending = False  # caller_says queued audio whose first frame is not yet sent
        self._echoing: deque[bytes] = deque(maxlen=50)  # played frames not yet echoed
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
                if self.echo_gain:
                    self._echoing.append(self.played[-1])
            next_tick += FRAME_S
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    def caller_says(self, audio: bytes) -> None:
        """Queue mu-law for the caller to say, 20 ms a frame, after what is queued (then silence);
        ``said_from`` will be the number of its first frame among the inbound frames sent."""
        if not self._caller_audio:
            self._onset_pending = True
        self._caller_audio.extend(frames_of(audio))

    @property
    def caller_done(self) -> bool:
        """Everything queued with :meth:`caller_says` has been sent."""
        return not self._caller_audio

    async def _caller(self) -> None:
        """The caller's side, one frame per 20 ms: queued audio or silence, plus the echo."""
        chunk, next_tick = 0, time.monotonic()
        while True:
            chunk += 1
            payload = self._caller_audio.popleft() if self._caller_audio else SILENCE
            if self._onset_pending and payload is not SILENCE:
                self._onset_pending, self.said_from = False, self.inbound_sent + 1
            if self._echoing:
                payload = mix(payload, self._echoing.popleft(), self.echo_gain)
            media = {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            }
            await self._send({"event": "media", "streamSid": self.stream_sid, "media": media})
            self.inbound_sent += 1
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
