"""OpenAI speech as OpenAI's clients use it, on the edge with the default limits, driven by the
official ``openai`` client: MP3 (the default ``response_format``) and Opus stream as they are
generated, and ``input`` takes OpenAI's 4096 characters.

The edge runs in process with its engine replaced by :class:`GatedEngine`, which sends a tone
chunk by chunk and holds the utterance's final chunk until the test lets it go. So "the first
bytes arrived before the utterance was done" is a condition, not a timing: the test lets the
final chunk go only once it has decoded audio from the body.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
import openai
import pytest
import soundfile

from csm_service.core.constants import FRAME_MS, MAX_TEXT_CHARS, SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_service.core.events import SpeechChunk
from csm_service.core.request import SpeechRequest
from csm_service.edge.state import STATE

HELD_FRAMES = 25  # 2 s sent before the final chunk is held back
TONE_HZ = 440.0
HANG_S = 60  # only turns a hang (the old edge held MP3 until the final chunk) into a failure


class GatedEngine:
    """The engine's ``stream`` for the edge: a 440 Hz tone, one 80 ms frame per chunk, as many
    frames as the request's budget allows (at most ``frames``); the final chunk waits for
    :attr:`release`. Every request it was given is kept."""

    def __init__(self, frames: int = HELD_FRAMES) -> None:
        self.frames = frames
        self.release = asyncio.Event()
        self.requests: list[SpeechRequest] = []

    async def stream(self, request: SpeechRequest) -> AsyncIterator[SpeechChunk]:
        self.requests.append(request)
        frames = min(self.frames, request.max_audio_length_ms // FRAME_MS)
        for i in range(frames):
            t = (np.arange(SAMPLES_PER_FRAME) + i * SAMPLES_PER_FRAME) / SAMPLE_RATE
            pcm = (0.3 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype("<i2").tobytes()
            yield SpeechChunk(pcm, i, float(FRAME_MS), request.encoding, SAMPLE_RATE)
        await self.release.wait()
        yield SpeechChunk(
            b"", frames, 0.0, request.encoding, SAMPLE_RATE, final=True, finish_reason="max_length", num_frames=frames
        )


@pytest.fixture
async def edge(tmp_path):
    """The edge with the default ServiceConfig (keys off), its engine a :class:`GatedEngine`."""
    from prometheus_client import CollectorRegistry

    from csm_service.config import ServiceConfig
    from csm_service.edge.app import EdgeServer, build_app
    from csm_service.rpc.client import EngineClient

    client = EngineClient("127.0.0.1:1")
    app = build_app(ServiceConfig(data_dir=str(tmp_path)), client, CollectorRegistry())
    engine = GatedEngine()
    app[STATE].backend.stream = engine.stream
    server = EdgeServer(app, "127.0.0.1", 0)
    await server.start()
    openai_client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.runner.addresses[0][1]}/v1", api_key="unused", max_retries=0
    )
    try:
        yield openai_client, engine
    finally:
        engine.release.set()
        await openai_client.close()
        await server.stop()
        await client.close()


def decoded_samples(data: bytes) -> int:
    """How many samples of audio ``data`` (maybe a file cut short) decodes to; 0 if none yet."""
    try:
        return len(soundfile.read(io.BytesIO(data), dtype="float32")[0])
    except soundfile.LibsndfileError:
        return 0


@pytest.mark.parametrize(("response_format", "content_type"), [("mp3", "audio/mpeg"), ("opus", "audio/ogg")])
async def test_mp3_and_opus_stream_before_the_utterance_is_done(edge, response_format, content_type):
    client, engine = edge
    head = b""
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format=response_format
    ) as response:
        assert response.headers["content-type"] == content_type
        pieces = response.iter_bytes()

        async def audio_before_the_end() -> None:
            nonlocal head
            while decoded_samples(head) < SAMPLE_RATE:  # a second of audio, not just a header
                head += await anext(pieces)

        await asyncio.wait_for(audio_before_the_end(), HANG_S)
        assert not engine.release.is_set()  # the final chunk was still held: the utterance not done
        engine.release.set()
        body = head + b"".join([piece async for piece in pieces])
    samples, rate = soundfile.read(io.BytesIO(body), dtype="float32")
    assert rate == SAMPLE_RATE
    sent = HELD_FRAMES * SAMPLES_PER_FRAME
    assert sent <= len(samples) <= sent + 2400, len(samples)  # MP3: a silent first frame and the codec's delay
    spectrum = np.abs(np.fft.rfft(samples[-sent // 2 :]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / (sent // 2) - TONE_HZ) < 4.0  # the tone, decoded


async def test_input_takes_openais_4096_characters(edge):
    client, engine = edge
    engine.release.set()
    sentences = " ".join(f"This is sentence number {i}, said plainly." for i in range(200))
    text = sentences[: MAX_TEXT_CHARS - 1] + "."
    assert len(text) == MAX_TEXT_CHARS == 4096
    result = await client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm", extra_body={"raw_text": True}
    )
    assert len(result.content) > 0
    spoken = " ".join(request.text for request in engine.requests)
    assert spoken.split() == text.split()  # every character reached the engine, piece by piece
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.speech.create(model="tts-1", voice="alloy", input=text + "x", response_format="pcm")
    assert caught.value.body["param"] == "input" and "4096" in caught.value.body["message"]
