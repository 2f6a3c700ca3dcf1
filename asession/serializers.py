"""JSON encoding of session data, the only format asession writes (no pickle anywhere).

:func:`dumps` refuses data that JSON cannot carry with a ``TypeError`` naming the offending key, before
anything is written. :func:`loads` turns stored text back into a dict and raises ``ValueError`` for
anything else, which the backends log as tampering and load as an empty session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "loads"]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


def dumps(data: Mapping[str, Any]) -> str:
    """Serialize session ``data`` to compact JSON text.

    Raises ``TypeError`` naming the first key whose value (or the key itself) JSON cannot represent,
    such as a ``datetime``, a ``set``, a non-string key or ``float('nan')``.
    """
    try:
        return _encoder.encode(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(_describe_failure(data, exc)) from exc


def _describe_failure(data: Mapping[str, Any], exc: Exception) -> str:
    for key, value in data.items():
        if not isinstance(key, str):
            return f"Session keys must be strings to survive JSON; got the key {key!r} of type {type(key).__name__}."
        try:
            _encoder.encode(value)
        except (TypeError, ValueError) as inner:
            return (
                f"The session value under key {key!r} cannot be stored: {inner}. Session data must survive a "
                "JSON round trip (str, int, float, bool, None, list and dict with string keys)."
            )
    return f"The session data cannot be stored as JSON: {exc}."


def loads(text: str | bytes) -> dict[str, Any]:
    """Decode stored JSON text into a session dict.

    Raises ``ValueError`` when the text is not JSON or does not hold an object.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    data = _decoder.decode(text)
    if not isinstance(data, dict):
        raise ValueError(f"stored session data is a JSON {type(data).__name__}, not an object")
    return data
