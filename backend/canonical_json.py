"""RFC 8785 (JSON Canonicalization Scheme) bytes, from the standard library's C encoder
wherever it prints exactly those bytes, and from ``rfc8785`` everywhere else.

The server canonicalises on every signature, regulator record and audit event, and
``rfc8785`` is pure Python (a tenth of a millisecond or more per document). The standard
library prints RFC 8785's bytes when

- every number is an integer within ±(2**53 - 1) (RFC 8785 prints numbers as ECMAScript
  does: the same digits for those, and something else for floats and larger integers);
- every character of every key and string is in the Basic Multilingual Plane (RFC 8785
  sorts keys by UTF-16 code unit, Python by code point: the orders differ only for
  characters beyond it), and no string holds a lone surrogate;
- everything is a ``dict`` with ``str`` keys, a ``list``, a ``str``, an ``int``, a
  ``bool`` or ``None`` (what ``json.dumps`` would otherwise convert, such as tuples or
  integer keys, ``rfc8785`` refuses or prints differently).

Both escape the same characters in strings (``"``, ``\\``, and U+0000 to U+001F, with
``\\b \\f \\n \\r \\t`` and otherwise ``\\u00xx`` in lowercase hex) and leave every other
character as it is. The checks are done on the printed text, in C: it is read back with
floats and unsafe integers refused and compared with the input, and its UTF-16 length
tells whether any character lies beyond the plane. Anything that fails a check is
printed by ``rfc8785``, so the result is always what ``rfc8785.dumps`` returns (and
what it refuses is refused). ``tests/test_canonical_json.py`` holds the two to that.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

#: Integers an IEEE double carries exactly, which RFC 8785 prints as plain digits.
_SAFE_INTEGER = 2**53 - 1


class _NotPlain(Exception):
    """A number the standard library would not print as RFC 8785 does."""


def _int(text: str) -> int:
    value = int(text)
    if not -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
        raise _NotPlain
    return value


def _float(text: str) -> float:
    raise _NotPlain


def _constant(text: str) -> Any:
    raise _NotPlain


_ENCODE = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode
_DECODE = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant).decode


def dumps(value: Any) -> bytes:
    """``value`` as RFC 8785 canonical JSON (UTF-8)."""
    try:
        text = _ENCODE(value)
        if len(text.encode("utf-16-le")) == 2 * len(text) and _DECODE(text) == value:
            return text.encode()
    except (TypeError, ValueError, _NotPlain):  # UnicodeEncodeError is a ValueError
        pass
    return rfc8785.dumps(value)
