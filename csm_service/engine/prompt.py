"""Prompt rows: context segments then ``[speaker]text``, as [S, 33] tokens and mask.

Text rows set only column 32 (the text token); audio rows set columns 0..31 (one Mimi frame). Each
context segment is its text rows, then its frames, then one all-zero frame (audio end).
"""

from __future__ import annotations

import numpy as np

from csm_service.engine.request import InvalidRequest, Segment
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


def build_prompt(
    tokenizer: TextTokenizer,
    context: tuple[Segment, ...] | list[Segment],
    text: str,
    speaker: int,
    num_codebooks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """-> tokens [S, 33] int64, mask [S, 33] bool."""
    parts = []
    for seg in context:
        parts.append(text_rows(tokenizer, seg.speaker, seg.text, num_codebooks))
        if seg.codes is not None and seg.codes.shape[1] > 0:
            parts.append(audio_rows(np.asarray(seg.codes, dtype=np.int64), num_codebooks))
    parts.append(text_rows(tokenizer, speaker, text, num_codebooks))
    tokens = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[1] for p in parts])
    return tokens, mask


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
