"""Prompt rows: context segments then ``[speaker]text``, as [S, 33] tokens and mask.

Text rows set only column 32 (the text token); audio rows set columns 0..31 (one Mimi frame). Each
context segment is its text rows, then its frames, then one all-zero frame (audio end).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csm_service.core.errors import InvalidRequest
from csm_service.core.request import Segment
from csm_service.model.tokenizer import TextTokenizer


def text_rows(tokenizer: TextTokenizer, speaker: int, text: str, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    ids = tokenizer.encode(f"[{speaker}]{text}")
    tokens = np.zeros((len(ids), num_codebooks + 1), dtype=np.int64)
    mask = np.zeros_like(tokens, dtype=bool)
    tokens[:, -1] = ids
    mask[:, -1] = True
    return tokens, mask


def audio_rows(codes: np.ndarray, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    """codes [32, F] -> rows for F frames plus the all-zero end frame."""
    frames = codes.shape[1] + 1
    tokens = np.zeros((frames, num_codebooks + 1), dtype=np.int64)
    tokens[:-1, :num_codebooks] = codes.T
    mask = np.zeros_like(tokens, dtype=bool)
    mask[:, :num_codebooks] = True
    return tokens, mask


@dataclass(frozen=True)
class Prompt:
    tokens: np.ndarray  # [S, 33] int64
    mask: np.ndarray  # [S, 33] bool
    prefix_len: int = 0  # leading rows that are the stable prefix (a voice prompt): cacheable
    context_segments: int = 0  # context segments kept (prefix included)


def segment_rows(tokenizer: TextTokenizer, seg: Segment, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    """One context segment: its text rows, then its frames and the end frame (if it has audio)."""
    parts = [text_rows(tokenizer, seg.speaker, seg.text, num_codebooks)]
    if seg.codes is not None and seg.codes.shape[1] > 0:
        parts.append(audio_rows(np.asarray(seg.codes, dtype=np.int64), num_codebooks))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def assemble_prompt(
    tokenizer: TextTokenizer,
    context: tuple[Segment, ...] | list[Segment],
    text: str,
    speaker: int,
    num_codebooks: int,
    prefix_segments: int = 0,
    max_context_positions: int = 0,
) -> Prompt:
    """Prefix segments, then the other context segments (the newest that fit in
    ``max_context_positions`` when it is set, in their order), then ``[speaker]text``."""
    prefix = [segment_rows(tokenizer, seg, num_codebooks) for seg in context[:prefix_segments]]
    rest = [segment_rows(tokenizer, seg, num_codebooks) for seg in context[prefix_segments:]]
    if max_context_positions:
        kept, used = [], 0
        for rows in reversed(rest):  # newest first, stop at the first that does not fit
            if used + rows[0].shape[0] > max_context_positions:
                break
            kept.append(rows)
            used += rows[0].shape[0]
        rest = kept[::-1]
    parts = [*prefix, *rest, text_rows(tokenizer, speaker, text, num_codebooks)]
    return Prompt(
        tokens=np.concatenate([p[0] for p in parts]),
        mask=np.concatenate([p[1] for p in parts]),
        prefix_len=sum(p[0].shape[0] for p in prefix),
        context_segments=len(prefix) + len(rest),
    )


def build_prompt(
    tokenizer: TextTokenizer,
    context: tuple[Segment, ...] | list[Segment],
    text: str,
    speaker: int,
    num_codebooks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every context segment, then the text -> tokens [S, 33] int64, mask [S, 33] bool."""
    prompt = assemble_prompt(tokenizer, context, text, speaker, num_codebooks)
    return prompt.tokens, prompt.mask


def check_room(prompt_len: int, max_seq_len: int) -> int:
    """Frames of room left after the prompt; raises if there is none."""
    room = max_seq_len - prompt_len
    if room < 1:
        raise InvalidRequest(
            "text",
            f"prompt is {prompt_len} positions (context + text); the model holds {max_seq_len}, "
            "leaving no room for audio: shorten the text or the context",
        )
    return room
