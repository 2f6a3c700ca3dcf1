"""JSON encoding of session data."""

from __future__ import annotations

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
