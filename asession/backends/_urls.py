"""URL helpers shared by the backends: parsing and hiding passwords in messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["hide_password"]


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
