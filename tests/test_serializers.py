"""JSON encoding of session data."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from asession import serializers


def test_round_trip_keeps_json_values() -> None:
    """JSON-compatible data comes back equal."""
    data = {"s": "x", "i": 1, "f": 0.5, "b": False, "n": None, "l": [1, [2]], "d": {"k": "ü"}}
    assert serializers.loads(serializers.dumps(data)) == data


@pytest.mark.parametrize("value", [date(2024, 1, 1), {1, 2}, Decimal("1.5"), object(), float("nan"), b"bytes"])
def test_dumps_names_the_offending_key(value: object) -> None:
    """A value JSON cannot carry raises TypeError naming its key."""
    with pytest.raises(TypeError, match="'bad'"):
        serializers.dumps({"good": 1, "bad": value})


def test_dumps_names_a_non_string_key() -> None:
    """A key JSON cannot carry is named too."""
    with pytest.raises(TypeError, match=r"\(1, 2\)"):
        serializers.dumps({(1, 2): "tuple key"})  # type: ignore[dict-item]


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"string"', "", b"\xff\xfe"])
def test_loads_rejects_non_objects(text: str | bytes) -> None:
    """Anything but a JSON object raises ValueError."""
    with pytest.raises(ValueError):
        serializers.loads(text)


def test_loads_accepts_bytes() -> None:
    """UTF-8 bytes decode like text."""
    assert serializers.loads('{"k":"ü"}'.encode()) == {"k": "ü"}


def test_dumps_is_compact_and_keeps_unicode() -> None:
    """The prebuilt encoder writes what json.dumps with the same options writes."""
    data = {"k": "ü", "l": [1, 2.5, None, True], "d": {"x": ""}, "7": "key"}
    expected = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert serializers.dumps(data) == expected


def test_dumps_names_the_key_of_a_circular_value() -> None:
    """A value that contains itself is refused with its key named, not a RecursionError."""
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="'loop'.*[Cc]ircular"):
        serializers.dumps({"fine": 1, "loop": loop})


@pytest.mark.parametrize("text", [' {"k": 1}', '{"k": 1}\n', '\t{ "k" : 1 }  '])
def test_loads_accepts_surrounding_whitespace(text: str) -> None:
    """JSON written by other tools (with whitespace) decodes through the full decoder."""
    assert serializers.loads(text) == {"k": 1}


@pytest.mark.parametrize("text", ['{"k": 1} trailing', '{"k": 1}{"k": 2}', '{"k": ', "   "])
def test_loads_rejects_trailing_or_truncated_text(text: str) -> None:
    """An object followed by anything but whitespace, or cut short, is not session data."""
    with pytest.raises(ValueError):
        serializers.loads(text)
