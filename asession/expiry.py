"""Expiry arithmetic, as Django computes it, and the ``now()`` seam that tests move instead of sleeping.

A session's *custom expiry* is what ``set_expiry`` stored: ``None`` (use the configured age), an ``int``
of seconds counted from the last save (``0`` means "when the browser closes"), or an ISO 8601 string of
a fixed aware UTC datetime (what a ``timedelta`` or ``datetime`` becomes). It travels with the session
data under :data:`EXPIRY_KEY`, so it survives a JSON round trip.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

__all__ = [
    "EXPIRY_KEY",
    "CustomExpiry",
    "ExpiryValue",
    "age",
    "cookie_lifetime",
    "date",
    "expires_at_browser_close",
    "normalize",
    "now",
    "parse_stored",
    "timestamp",
]

#: The key under which a custom expiry is stored beside the session's own data.
EXPIRY_KEY = "_session_expiry"

CustomExpiry = int | str | None
ExpiryValue = int | timedelta | datetime | None


def now() -> datetime:
    """Return the current time as an aware UTC datetime. Tests replace this function to move time."""
    return datetime.now(timezone.utc)


_system_now = now


def timestamp() -> float:
    """Return :func:`now` as seconds since the epoch, for stores that keep numeric expiry times."""
    # time.time() is five times cheaper than building a datetime; take it unless a test moved the clock.
    if now is _system_now:
        return time.time()
    return now().timestamp()


def normalize(value: ExpiryValue) -> CustomExpiry:
    """Turn a ``set_expiry`` argument into what is stored.

    ``int`` stays seconds; a ``timedelta`` becomes the fixed datetime ``now() + value``; a naive
    ``datetime`` is taken as local time, as in Django; ``None`` means the configured default.
    Raises ``TypeError`` for anything else (including ``bool``).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, timedelta, datetime)):
        raise TypeError(
            f"set_expiry() takes an int of seconds, a timedelta, a datetime or None, not {value!r} "
            f"of type {type(value).__name__}."
        )
    if isinstance(value, int):
        return value
    if isinstance(value, timedelta):
        value = now() + value
    if value.tzinfo is None:
        value = value.astimezone()  # naive means local time
    return value.astimezone(timezone.utc).isoformat()


def parse_stored(value: object) -> CustomExpiry:
    """Validate a custom expiry read back from storage; anything malformed counts as no custom expiry."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return value if parsed.tzinfo is not None else None
    return None


def age(custom: CustomExpiry, default_age: int, modification: datetime | None = None) -> int:
    """Seconds until the session expires, counted from ``modification`` (default: now).

    ``None`` and ``0`` give the configured age, as in Django (``0`` expires at browser close instead).
    """
    if not custom:
        return default_age
    if isinstance(custom, int):
        return custom
    delta = datetime.fromisoformat(custom) - (modification or now())
    return delta.days * 86400 + delta.seconds


def date(custom: CustomExpiry, default_age: int, modification: datetime | None = None) -> datetime:
    """The aware UTC datetime at which the session expires."""
    if isinstance(custom, str):
        return datetime.fromisoformat(custom).astimezone(timezone.utc)
    seconds = custom or default_age
    return (modification or now()) + timedelta(seconds=seconds)


def cookie_lifetime(custom: CustomExpiry, default_age: int) -> tuple[int, int]:
    """``(Max-Age, Expires)`` of a cookie set now: seconds (never negative) and whole Unix seconds.

    The same moments as :func:`age` and :func:`date` give, computed from :func:`timestamp` without
    building datetimes for the usual case of an expiry counted in seconds.
    """
    if isinstance(custom, str):
        moment = now()
        return max(age(custom, default_age, moment), 0), int(date(custom, default_age, moment).timestamp())
    seconds = custom or default_age
    return max(seconds, 0), int(timestamp() + seconds)


def expires_at_browser_close(custom: CustomExpiry, default: bool) -> bool:
    """Whether the cookie should be a browser-session cookie: ``set_expiry(0)``, or the default setting."""
    if custom is None:
        return default
    return custom == 0
