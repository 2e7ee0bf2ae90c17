"""Client JSON (HTTP bodies, WebSocket messages, Twilio frames), parsed so that no input raises
anything but :class:`JsonError`, a ``ValueError`` each caller answers as a 400-class error.

Python's ``json`` accepts three things that hurt later, and this parser refuses them:

- Deep nesting: ``json.loads`` recurses per level and raises ``RecursionError`` (not a
  ``ValueError``) past ~1000, and what it returns would make later recursive code fail too. The
  bracket depth is counted on the raw text first, outside strings, in linear time with no
  recursion (a 1 MB ``[[[[...`` is refused in milliseconds).
- Lone surrogates: ``"\\ud800"`` (and, from bytes, UTF-8-encoded surrogates) parse into a ``str``
  that raises ``UnicodeEncodeError`` wherever it is encoded (protobuf, logs, SQLite). Refused.
- ``NaN``, ``Infinity`` and ``-Infinity`` (and ``1e999``, which overflows to infinity): not JSON
  numbers (RFC 8259), and NaN passes every range check.
"""

from __future__ import annotations

import json
import re

import numpy as np

DEFAULT_MAX_DEPTH = 32  # ServiceConfig.max_json_depth: our messages nest 3 deep at most
# A JSON string literal. Possessive quantifiers: one pass, no backtracking on any input.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \uD800 to \uDFFF, maybe one of a valid pair
_STEP = np.zeros(256, dtype=np.int32)  # per byte: +1 opens an array or object, -1 closes one
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


class JsonError(ValueError):
    """Client JSON that is refused; the message says why (it goes into the 400 reply)."""


def loads(data: str | bytes | bytearray, max_depth: int = DEFAULT_MAX_DEPTH) -> object:
    """``data`` as JSON, or :class:`JsonError`: not UTF-8 (bytes), not JSON, nested deeper than
    ``max_depth``, ``NaN``/``Infinity``, or a lone surrogate in any string."""
    text = _text(data)
    depth = nesting_depth(text, max_depth)
    if depth > max_depth:
        raise JsonError(f"JSON nested {depth} deep; at most {max_depth} levels of arrays and objects")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonError:
        raise
    except RecursionError:  # not reachable past the depth check; kept so nothing else can escape
        raise JsonError("JSON nested too deeply") from None
    except ValueError as exc:
        raise JsonError(f"invalid JSON: {exc}") from None
    if (_SURROGATE_ESCAPE.search(text) or _SURROGATE.search(text)) and _has_lone_surrogate(value):
        raise JsonError("invalid JSON: a string holds a lone UTF-16 surrogate (\\ud800 to \\udfff unpaired)")
    return value


def _text(data: str | bytes | bytearray) -> str:
    if isinstance(data, str):
        return data
    try:
        # Strict UTF-8: json.loads(bytes) would decode with "surrogatepass" and let surrogates in.
        return bytes(data).decode(json.detect_encoding(data))
    except (UnicodeDecodeError, LookupError) as exc:
        raise JsonError(f"invalid JSON: the body is not UTF-8 text ({exc.__class__.__name__})") from None


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of ``[``/``{`` outside string literals, or 0 when the text has too few
    brackets to exceed ``limit``. Linear time, no recursion."""
    if text.count("[") + text.count("{") <= limit:  # the common case: too few brackets to matter
        return 0
    outside = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    return int(np.cumsum(_STEP[np.frombuffer(outside, dtype=np.uint8)]).max(initial=0))


def _refuse_constant(name: str) -> object:
    raise JsonError(f"invalid JSON: {name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise JsonError(f"invalid JSON: {literal[:40]} is out of range for a number")
    return value


def _has_lone_surrogate(value: object) -> bool:
    """Any str (key or value) with a surrogate left after decoding; the depth is already bounded,
    and this walks with its own stack anyway."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
