"""Session context and long text on a real server (``served``: a 120-position context budget and
60-character pieces): earlier turns precede the text, in order, trimmed to the budget; caller turns
join the conversation; long text is spoken piece by piece, every piece, in order, as one stream."""

from __future__ import annotations

import base64

import aiohttp
import numpy as np

from csm_service.audio.g711 import pcm16_to_mulaw
from csm_service.model.tokenizer import ByteTokenizer
from csm_service.text.split import split_text

BUDGET = 120  # conftest LIMITS["session_context_positions"]
PIECE_CHARS = 60  # conftest LIMITS["max_piece_chars"]


def say(text: str, **kw) -> dict:
    return {"type": "synthesize", "text": text, "stream": True, "max_audio_length_ms": 160, "seed": 1, **kw}


async def until_done(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict], dict]:
    chunks = []
    while (reply := await ws.receive_json(timeout=60))["type"] != "done":
        assert reply["type"] == "audio", reply
        chunks.append(reply)
    return chunks, reply


def text_rows(speaker: int, text: str) -> int:
    return len(ByteTokenizer().encode(f"[{speaker}]{text}"))


async def test_session_context_grows_in_order_and_is_trimmed_to_budget(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("conversation")) as ws:
        await ws.send_json(say("Hi.", context="session"))
        _, first = await until_done(ws)
        assert first["context_segments"] == 0 and first["prompt_positions"] == text_rows(0, "Hi.")

        # Three pipelined turns: each waits for the one before and sees it, in order.
        for i in range(3):
            await ws.send_json(say(f"Turn {'abc'[i]}.", context="session", request_id=f"t{i}"))
        dones = [(await until_done(ws))[1] for _ in range(3)]
        assert [d["request_id"] for d in dones] == ["t0", "t1", "t2"]
        assert [d["context_segments"] for d in dones] == [1, 2, 3]
        # Each earlier turn adds its text rows, its frames and the end frame.
        turn_rows = text_rows(0, "Turn a.") + dones[0]["duration_ms"] // 80 + 1
        assert dones[1]["prompt_positions"] - dones[0]["prompt_positions"] == turn_rows

        # A caller turn with audio (mu-law 8 kHz, as from Twilio) joins the conversation.
        tone = (np.sin(np.arange(2000) / 8000 * 2 * np.pi * 300) * 8000).astype(np.int16)  # 0.25 s
        audio = base64.b64encode(pcm16_to_mulaw(tone)).decode()
        await ws.send_json({"type": "context", "speaker": 1, "text": "I need help.", "audio_base64": audio})
        added = await ws.receive_json(timeout=30)
        assert added["type"] == "context_added" and added["speaker"] == 1, added
        assert added["num_frames"] == 4 and added["turns"] == 5, added  # 0.25 s: 3.125 frames, rounded up
        await ws.send_json(say("Sure.", context="session"))
        _, after_caller = await until_done(ws)
        assert after_caller["context_segments"] >= 1
        assert after_caller["prompt_positions"] <= BUDGET + text_rows(0, "Sure.")

        # Many more turns: the context stops growing at the budget, newest kept.
        for i in range(8):
            await ws.send_json(say(f"More {'abcdefgh'[i]}.", context="session"))
            _, done = await until_done(ws)
            assert done["prompt_positions"] - text_rows(0, "More a.") <= BUDGET
        assert 1 <= done["context_segments"] < 5 + 8

        # Without "context": "session" nothing precedes the text.
        await ws.send_json(say("Alone."))
        _, alone = await until_done(ws)
        assert alone["context_segments"] == 0 and alone["prompt_positions"] == text_rows(0, "Alone.")


async def test_bad_context_messages_get_errors(served):
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("bad-context")) as ws:
        for message, field in [
            ({"type": "context"}, "text"),
            ({"type": "context", "text": "hi", "speaker": "one"}, "speaker"),
            ({"type": "context", "text": "hi", "audio_base64": "%%%"}, "audio_base64"),
            ({"type": "context", "text": "hi", "audio_base64": "AAA=", "format": "opus"}, "format"),
            ({"type": "synthesize", "text": "hi", "context": "everything"}, "context"),
        ]:
            await ws.send_json(message)
            reply = await ws.receive_json(timeout=10)
            assert reply["type"] == "error" and reply["field"] == field, reply
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=10))["type"] == "pong"


LONG = (
    "Thanks for calling the clinic. Your appointment is confirmed for Tuesday. "
    "Please arrive ten minutes early, and bring your insurance card. "
    "If you need to reschedule, call us back any time. Goodbye!"
)


async def test_long_text_is_spoken_piece_by_piece_as_one_stream(served):
    pieces = split_text(LONG, PIECE_CHARS)
    assert len(pieces) >= 4 and all(len(p) <= PIECE_CHARS for p in pieces)
    assert " ".join(pieces) == LONG
    async with aiohttp.ClientSession() as http, http.ws_connect(served.ws_url("long-text")) as ws:
        await ws.send_json({"type": "synthesize", "text": LONG, "stream": True, "max_audio_length_ms": 4000, "seed": 2})
        chunks, done = await until_done(ws)
    assert done["pieces"] == len(pieces)
    assert all(frames > 0 for frames in done["piece_frames"])  # every piece was spoken
    assert sum(done["piece_frames"]) * 80 == done["duration_ms"] <= 4000
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert sum(len(base64.b64decode(c["audio_base64"])) for c in chunks) == done["duration_ms"] * 8
    # From the second piece on, the previous piece (its text and frames) precedes the text.
    positions, frames = done["piece_prompt_positions"], done["piece_frames"]
    for i in range(1, len(pieces)):
        assert positions[i] == text_rows(0, pieces[i - 1]) + frames[i - 1] + 1 + text_rows(0, pieces[i])

    # HTTP gets the same pieces in one WAV.
    body = {"text": LONG, "max_audio_length_ms": 4000, "seed": 2, "output_format": "mulaw"}
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        result = await resp.json()
    assert result["pieces"] == len(pieces) and result["piece_frames"] == done["piece_frames"]
    streamed = b"".join(base64.b64decode(c["audio_base64"]) for c in chunks)
    assert base64.b64decode(result["audio_base64"]) == streamed  # same seed, same audio
