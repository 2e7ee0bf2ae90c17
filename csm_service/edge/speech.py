"""One utterance as the edge asks for it: voice prefix, session context, and long text in pieces.

Text longer than ``max_piece_chars`` is split at sentence boundaries (then at clause boundaries,
then at spaces; :mod:`csm_service.text.split`) into pieces generated one after another, each with
the previous piece (its text and generated codes) as context so the prosody carries over. Their chunks come out as one stream:
``sequence`` keeps counting and only the last piece's final chunk is final. The request's
``max_audio_length_ms`` bounds the whole; each piece may use its share of what is left (by text
length), so a piece that never reaches its end frame cannot starve the ones after it.

:func:`prepare` looks up an utterance's voice and takes its place among the caller's utterances in
flight synchronously, before it is queued, so a WebSocket refusal is answered at once, not in reply
order (a Twilio ``say`` takes the same two steps apart, around its barge-in).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from csm_service.api.errors import ApiError, from_speech_error
from csm_service.api.speak import SpeakParams
from csm_service.audio.decode import to_pcm16
from csm_service.core.constants import DEFAULT_VOICE, FRAME_MS, NUM_CODEBOOKS
from csm_service.core.errors import UNKNOWN_VOICE, SpeechError
from csm_service.core.events import SpeechChunk, Timings
from csm_service.core.request import AudioEncoding, Segment, SpeechRequest
from csm_service.core.service import PromptAudio
from csm_service.edge.access import Caller, hold_utterance
from csm_service.edge.backend import Backend
from csm_service.edge.state import EdgeState
from csm_service.limits import InflightLease
from csm_service.tenants import Principal
from csm_service.text.split import split_text
from csm_service.voices import Voice


def synthesis_request(params: SpeakParams, encoding: AudioEncoding, voice: Voice | None) -> SpeechRequest:
    """The engine request: the voice's prompt first (a cached prefix); session context goes after it."""
    return params.to_request(encoding, voice.context_segment() if voice is not None else None)


def lookup_voice(state: EdgeState, voice_id: str, principal: Principal) -> Voice | None:
    """The stored profile for ``voice_id`` (None for the built-in default) if ``principal`` may use
    it; ApiError 422 if unknown, and the same for another tenant's profile."""
    if voice_id == DEFAULT_VOICE:
        return None
    voice = state.voices.get(voice_id, principal.voice_scope)
    if voice is None:  # in a synthesis request the id is a field value: 422, not 404
        raise ApiError(422, UNKNOWN_VOICE, f"voice_profile_id: no voice profile {voice_id!r}", "voice_profile_id")
    return voice


def prepare(
    state: EdgeState, caller: Caller, params: SpeakParams, encoding: AudioEncoding
) -> tuple[SpeechRequest, InflightLease]:
    """An utterance about to be queued: its voice (ApiError 422), then its place among the caller's
    utterances in flight (ApiError 429), taken now, before any job runs. Release the lease when the
    utterance ends, however it ends."""
    voice = lookup_voice(state, params.voice_profile_id, caller.known())
    lease = hold_utterance(state, caller)
    return synthesis_request(params, encoding, voice), lease


async def encode_prompt(
    backend: Backend, text: str, speaker: int | None, decode: Callable[..., tuple[np.ndarray, int]], *args: object
) -> tuple[Segment, float]:
    """Audio + transcript -> Mimi codes on an engine: ``decode(*args)`` (-> samples, rate; ApiError
    when unusable) runs in a thread first. -> the segment and the audio's length in ms; raises ApiError."""
    samples, rate = await asyncio.to_thread(decode, *args)
    try:
        encoded = await backend.encode_prompt(PromptAudio(to_pcm16(samples), rate, text, speaker))
    except SpeechError as exc:
        raise from_speech_error(exc) from None
    return encoded.segment, len(samples) / rate * 1000


@dataclass
class Spoken:
    """What the utterance produced, filled in as it streams."""

    pieces: int = 0
    seed: int = 0  # the first piece's; piece i uses seed + i
    num_frames: int = 0
    piece_codes: list[np.ndarray] = field(default_factory=list)  # each piece's codes [32, F]
    piece_frames: list[int] = field(default_factory=list)
    piece_prompt_positions: list[int] = field(default_factory=list)  # context + text rows per piece
    final: SpeechChunk | None = None  # the last piece's final chunk (timings, reason, seed)
    first_timings: Timings | None = None  # the first piece's (time to first audio, prefill)

    @property
    def codes(self) -> np.ndarray | None:
        """Every piece's codes [32, num_frames], or None before any piece ended."""
        return np.concatenate(self.piece_codes, axis=1) if self.piece_codes else None

    @property
    def finish_reason(self) -> str:
        return (self.final.finish_reason or "unknown") if self.final is not None else "unknown"


def _piece_request(
    request: SpeechRequest, pieces: list[str], index: int, spent_frames: int, seed: int
) -> SpeechRequest:
    """Piece ``index`` with its share of the audio budget that is left, by text length, so no piece
    can starve the rest; its seed follows from the utterance's."""
    text = pieces[index]
    left_ms = request.max_audio_length_ms - spent_frames * FRAME_MS
    share = len(text) / sum(len(p) for p in pieces[index:])
    max_ms = max(FRAME_MS, int(left_ms * share) // FRAME_MS * FRAME_MS)
    return dataclasses.replace(request, text=text, max_audio_length_ms=max_ms, seed=(seed + index) % 2**63)


async def speak(
    backend: Backend,
    request: SpeechRequest,
    max_piece_chars: int,
    spoken: Spoken,
) -> AsyncIterator[SpeechChunk]:
    """Stream ``request`` (its context already set), splitting long text; raises ApiError."""
    pieces = split_text(request.text, max_piece_chars)
    # Drawn here when not given, so every piece's seed follows from the one reported.
    spoken.seed = secrets.randbits(63) if request.seed is None else request.seed
    budget_ms = request.max_audio_length_ms
    sequence = 0
    previous: Segment | None = None
    for index, text in enumerate(pieces):
        piece = _piece_request(request, pieces, index, spoken.num_frames, spoken.seed)
        if previous is not None:  # after the voice prefix and the session context
            piece = dataclasses.replace(piece, context=(*piece.context, previous))
        last_piece = index == len(pieces) - 1
        started = False
        try:
            async with contextlib.aclosing(backend.stream(piece)) as chunks:
                async for chunk in chunks:
                    if not chunk.final:
                        started = True
                        yield dataclasses.replace(chunk, sequence=sequence)
                        sequence += 1
                        continue
                    _piece_ended(spoken, chunk)
                    out_of_budget = budget_ms - spoken.num_frames * FRAME_MS < FRAME_MS
                    if last_piece or out_of_budget:
                        spoken.final = dataclasses.replace(chunk, sequence=sequence)
                        yield spoken.final
                        return
                    # the utterance goes on with the next piece
                    yield dataclasses.replace(chunk, sequence=sequence, final=False)
                    sequence += 1
                    previous = Segment(request.speaker, text, chunk.codes)
        except SpeechError as exc:
            raise from_speech_error(exc, started) from None


def _piece_ended(spoken: Spoken, final: SpeechChunk) -> None:
    spoken.pieces += 1
    spoken.num_frames += final.num_frames
    spoken.piece_codes.append(final.codes if final.codes is not None else np.zeros((NUM_CODEBOOKS, 0), np.int64))
    spoken.piece_frames.append(final.num_frames)
    spoken.piece_prompt_positions.append(final.timings.prompt_positions if final.timings else 0)
    if spoken.first_timings is None:
        spoken.first_timings = final.timings
