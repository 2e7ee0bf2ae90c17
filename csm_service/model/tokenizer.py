"""Text tokenizers: Llama-3's (from a tokenizer.json) and a byte-level one for ``tiny-random``.

Both return a text row with BOS and EOS added, as Sesame's TemplateProcessing does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TextTokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class Llama3Tokenizer:
    BOS = 128_000
    EOS = 128_001

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return [self.BOS, *self._tok.encode(text, add_special_tokens=False).ids, self.EOS]


class ByteTokenizer:
    """UTF-8 bytes 0..255, BOS 256, EOS 257: deterministic, needs no files."""

    BOS = 256
    EOS = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return [self.BOS, *text.encode("utf-8"), self.EOS]
