"""One utterance as the edge asks for it: voice prefix, session context, and long text in pieces.

Text longer than ``max_piece_chars`` is split at sentence boundaries (then at clause boundaries,
then at spaces) into pieces generated one after another, each with the previous piece (its text
and generated codes) as context so the prosody carries over. Their chunks come out as one stream:
``sequence`` keeps counting and only the last piece's final chunk is final. The request's
``max_audio_length_ms`` bounds the whole; each piece may use its share of what is left (by text
length), so a piece that never reaches its end frame cannot starve the ones after it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from csm_service.config import FRAME_MS
from csm_service.edge.backend import Backend
from csm_service.edge.params import DEFAULT_MAX_AUDIO_MS
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")


def _pack(units: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive units into pieces of at most max_chars."""
    pieces: list[str] = []
    for unit in units:
        if pieces and len(pieces[-1]) + 1 + len(unit) <= max_chars:
            pieces[-1] = f"{pieces[-1]} {unit}"
        else:
            pieces.append(unit)
    return pieces


def split_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars``, cut at sentence ends where possible, never mid-word
    (a single word longer than ``max_chars`` is cut)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return [text]
    units: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= max_chars:
            units.append(sentence)
            continue
        for clause in _CLAUSE_END.split(sentence):
            if len(clause) <= max_chars:
                units.append(clause)
                continue
            for word in clause.split(" "):
                units.extend(word[i : i + max_chars] for i in range(0, len(word), max_chars))
    return _pack([u for u in units if u], max_chars)


@dataclass
class Spoken:
    """What the utterance produced, filled in as it streams."""

    pieces: int = 0
    seed: int = 0  # the first piece's; piece i uses seed + i
    num_frames: int = 0
    codes: list[int] = field(default_factory=list)  # every piece's codes, frame-major
    piece_frames: list[int] = field(default_factory=list)
    piece_prompt_positions: list[int] = field(default_factory=list)  # context + text rows per piece
    final: pb.AudioChunk | None = None  # the last piece's final chunk (timings, reason, seed)
    first_timings: pb.Timings | None = None  # the first piece's (time to first audio, prefill)


async def speak(
    backend: Backend,
    request: pb.SynthesizeRequest,
    max_piece_chars: int,
    spoken: Spoken,
) -> AsyncIterator[pb.AudioChunk]:
    """Stream ``request`` (its context already set), splitting long text; raises ApiError."""
    pieces = split_text(request.text, max_piece_chars)
    if not request.HasField("seed"):  # drawn here so every piece's seed follows from the one reported
        request.seed = secrets.randbits(63)
    spoken.seed = request.seed
    budget_ms = request.max_audio_length_ms if request.HasField("max_audio_length_ms") else DEFAULT_MAX_AUDIO_MS
    sequence = 0
    previous: pb.ContextSegment | None = None
    for index, text in enumerate(pieces):
        piece = pb.SynthesizeRequest()
        piece.CopyFrom(request)
        piece.text = text
        # Each piece gets its share of what is left, by text length, so no piece can starve the rest.
        left_ms = budget_ms - spoken.num_frames * FRAME_MS
        share = len(text) / sum(len(p) for p in pieces[index:])
        piece.max_audio_length_ms = max(FRAME_MS, int(left_ms * share) // FRAME_MS * FRAME_MS)
        if request.HasField("seed"):
            piece.seed = (request.seed + index) % 2**63
        if previous is not None:
            piece.context.append(previous)  # after the voice prefix and the session context
        last_piece = index == len(pieces) - 1
        async for chunk in backend.stream(piece):
            if not chunk.final:
                chunk.sequence = sequence
                sequence += 1
                yield chunk
                continue
            spoken.pieces += 1
            spoken.num_frames += chunk.num_frames
            spoken.codes.extend(chunk.codes)
            spoken.piece_frames.append(chunk.num_frames)
            spoken.piece_prompt_positions.append(chunk.timings.prompt_positions)
            if spoken.first_timings is None:
                spoken.first_timings = chunk.timings
            out_of_budget = budget_ms - spoken.num_frames * FRAME_MS < FRAME_MS
            chunk.sequence = sequence
            sequence += 1
            if last_piece or out_of_budget:
                spoken.final = chunk
                yield chunk
                return
            chunk.final = False  # the utterance goes on with the next piece
            yield chunk
            previous = pb.ContextSegment(speaker=request.speaker, text=text, codes=chunk.codes)
