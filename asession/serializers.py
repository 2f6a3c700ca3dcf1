"""JSON encoding of session data, the only format asession writes (no pickle anywhere).

:func:`dumps` refuses data that JSON cannot carry with a ``TypeError`` naming the offending key, before
anything is written. :func:`loads` turns stored text back into a dict and raises ``ValueError`` for
anything else, which the backends log as tampering and load as an empty session.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["dumps", "dumps_value", "loads"]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


def _refuse(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _build_fast_encoder() -> Callable[[Any, int], Iterable[str]] | None:
    """The C encoder that ``_encoder.encode`` builds anew on every call, built once (CPython only).

    Same options as ``_encoder``, except that it skips the circular-reference check: a circular
    structure overflows the C stack guard with a ``RecursionError`` instead, and :func:`dumps` then
    re-encodes with ``_encoder`` to get the usual error.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:  # pragma: no cover - interpreters without the _json accelerator
        return None
    encoder: Callable[[Any, int], Iterable[str]] = make_encoder(
        None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    return encoder


_fast_encoder = _build_fast_encoder()
#: The C scanner decode() calls after skipping whitespace; not in typeshed, hence getattr.
_scan_once: Callable[[str, int], tuple[Any, int]] = getattr(_decoder, "scan_once")  # noqa: B009


def dumps(data: Mapping[str, Any]) -> str:
    """Serialize session ``data`` to compact JSON text.

    Raises ``TypeError`` naming the first key whose value (or the key itself) JSON cannot represent,
    such as a ``datetime``, a ``set``, a non-string key or ``float('nan')``.
    """
    if _fast_encoder is not None:
        try:
            return "".join(_fast_encoder(data, 0))
        except (TypeError, ValueError, RecursionError):
            pass  # encode again below, for the error message that names the key
    try:
        return _encoder.encode(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(_describe_failure(data, exc)) from exc


def dumps_value(value: Any) -> str:
    """Serialize one session value (a nested list or dict) to compact JSON text; ``TypeError`` if it cannot be."""
    if _fast_encoder is not None:
        try:
            return "".join(_fast_encoder(value, 0))
        except (TypeError, ValueError, RecursionError):
            pass
    try:
        return _encoder.encode(value)
    except ValueError as exc:
        raise TypeError(str(exc)) from exc


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
    try:
        # The scanner alone, without decode()'s whitespace handling: what asession writes has none.
        data, end = _scan_once(text, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end != len(text):
        data = _decoder.decode(text)  # leading or trailing text: the full decoder accepts or explains it
    if not isinstance(data, dict):
        raise ValueError(f"stored session data is a JSON {type(data).__name__}, not an object")
    return data
