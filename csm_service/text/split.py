"""Long text -> pieces a model can say one after another: cut at sentence ends where possible, then
at clause ends, then at spaces, never mid-word unless a single word is longer than a piece. The
edge decides when to split (``max_piece_chars``); this module only says where.
"""

from __future__ import annotations

import re

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
