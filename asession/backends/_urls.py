"""URL helpers shared by the backends: option values, and hiding passwords in messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["hide_password", "to_positive_int", "to_timeout"]


def hide_password(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for errors and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def to_timeout(value: str) -> float | None:
    """A timeout option's seconds: a positive number, or ``None`` for ``none`` (no limit)."""
    if value.lower() in ("none", ""):
        return None
    seconds = float(value)
    if not seconds > 0:  # NaN too
        raise ValueError("must be a positive number of seconds")
    return seconds


def to_positive_int(value: str) -> int:
    """A count option (connections, sizes): a whole number of at least 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number
