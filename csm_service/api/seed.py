"""The ``seed`` field: an integer from 0 to 2**63 - 1, or the same integer as a decimal string.

JavaScript's numbers hold integers exactly only up to 2**53, so a browser (the playground) or any
JS client reading ``"seed": 9223372036854775807`` with ``JSON.parse`` gets another number, and
sending it back replays other audio. Requests therefore also take the seed as a decimal string
(``"9223372036854775807"``), and replies that carry a seed also carry ``seed_str``, the same
number as a string (the convention of Twitter's ``id_str``). The string's pattern admits exactly
the integers in range (no sign, no leading zeros), so /openapi.json says precisely what is accepted.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from csm_service.api.base import Integer, Says
from csm_service.core.constants import MAX_SEED


def at_most_pattern(limit: int) -> str:
    """A regular expression matching the decimal numerals of 0..``limit`` (no sign, no leading
    zeros): every shorter numeral, then those as long as ``limit`` that are not above it, branch
    by branch (same first digits, then a smaller one, then anything)."""
    digits = str(limit)
    branches = ["0", f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, d in enumerate(digits):
        low = "1" if i == 0 and len(digits) > 1 else "0"  # no leading zero
        if int(d) > int(low):
            rest = len(digits) - i - 1
            branches.append(f"{digits[:i]}[{low}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return "^(" + "|".join(branches) + ")$"


SEED_PATTERN = at_most_pattern(MAX_SEED)
_SEED_RE = re.compile(SEED_PATTERN)


def _from_decimal(value: object) -> object:
    """A decimal string in range is its integer; anything else is left for the integer check."""
    if isinstance(value, str) and _SEED_RE.fullmatch(value):
        return int(value)
    return value


SEED_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        {"type": "string", "pattern": SEED_PATTERN, "description": "the same integer as a decimal string"},
    ],
}


@dataclass(frozen=True)
class _SeedSchema:
    """/openapi.json's seed: the integer or its decimal string (a dict in WithJsonSchema could not
    be hashed inside ``Seed | None``)."""

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> JsonSchemaValue:
        return copy.deepcopy(SEED_SCHEMA)


Seed: Any = Annotated[Integer(0, MAX_SEED), BeforeValidator(_from_decimal), _SeedSchema()]
SEED_SAYS = Says(
    {"*": f"must be an integer from 0 to {MAX_SEED}, or one as a decimal string, got {{short!r}}"}, limit=120
)


def seed_fields(seed: int) -> dict[str, object]:
    """A reply's seed: the integer, and ``seed_str`` for JavaScript (module doc)."""
    return {"seed": seed, "seed_str": str(seed)}
