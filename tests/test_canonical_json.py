"""``backend.canonical_json.dumps`` gives exactly ``rfc8785.dumps``'s bytes (and refuses
what it refuses), whichever of its two printers does the work."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from backend.canonical_json import dumps

#: Characters where the two printers could part: every escape, quotes and backslashes,
#: DEL and the line separators (not escaped by either), characters either side of the
#: surrogate range (U+D7FF, U+E000, U+FFFF sort after a character beyond the plane in
#: UTF-16 but before it by code point), and characters beyond the plane.
TRICKY = (
    [chr(c) for c in range(0x20)]
    + ['"', "\\", "/", "\x7f", "\u2028", "\u2029", "\u00e9", "处方", "\ud7ff", "\ue000", "\uffff"]
    + ["\U0001f600", "\U00010000", "\U0010ffff", "a", "Z", "0", " "]
)


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 6)))


def _number(rng: random.Random) -> Any:
    return rng.choice(
        [
            0,
            -1,
            rng.randint(-1000, 1000),
            2**53 - 1,
            -(2**53 - 1),
            rng.randint(-(2**53 - 1), 2**53 - 1),
            True,
            False,
            None,
        ]
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 5 if depth < 3 else 2)
    if kind == 0:
        return _string(rng)
    if kind in (1, 2):
        return _number(rng)
    if kind == 3:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_string(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_random_documents_print_as_rfc8785_prints_them() -> None:
    rng = random.Random(8785)
    within_plane = 0
    for _ in range(3000):
        value = _value(rng)
        expected = rfc8785.dumps(value)
        assert dumps(value) == expected, value
        text = expected.decode()
        within_plane += len(text.encode("utf-16-le")) == 2 * len(text)
    assert 300 < within_plane < 2700  # both printers did work, not only one


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": 2, "\U0001f600": 3, "\uffff": 4, "\ue000": 5},  # key order by UTF-16
        {"s": "\U0001f600"},
        {"n": 2**53 - 1, "m": -(2**53 - 1)},
        {"control": "".join(chr(c) for c in range(0x20)), "q": '"\\/'},
        {"nested": [{"z": [], "y": {}}, [[]], ""]},
        {"处方": "阿莫西林胶囊 0.25g×24粒", "unicode": "\u2028\u2029\x7f"},
        [],
        {},
        "plain",
        0,
        None,
        True,
    ],
)
def test_chosen_documents_print_as_rfc8785_prints_them(value: Any) -> None:
    assert dumps(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        # Numbers the standard library would print otherwise: rfc8785 prints them.
        {"f": 1.5},
        {"f": 1.0},
        {"f": 1e21},
        {"f": -0.0},
        [0.1, 2**53],
        {"big": 2**53},
        {"big": -(2**60)},
        # What rfc8785 refuses or prints its own way stays its own.
        {"lone": "\ud800"},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {1: "integer key"},
        {"tuple": (1, 2)},
        {"set": {1}},
        {"bytes": b"x"},
    ],
)
def test_what_the_c_encoder_cannot_print_goes_to_rfc8785(value: Any) -> None:
    try:
        expected: bytes | type[Exception] = rfc8785.dumps(value)
    except Exception as exc:
        expected = type(exc)
    if isinstance(expected, bytes):
        assert dumps(value) == expected
    else:
        with pytest.raises(expected):
            dumps(value)
