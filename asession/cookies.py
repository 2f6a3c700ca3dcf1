"""Cookie headers: reading the session cookie from ASGI headers and building ``Set-Cookie`` values.

Pure functions over bytes and strings, no I/O. The attribute suffix depends only on the
:class:`SessionConfig`, so the middleware computes it once with :func:`attributes`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from email.utils import format_datetime

from asession.config import SessionConfig

__all__ = ["attributes", "expired_cookie", "read_cookie", "session_cookie"]

_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
#: Anything longer than a browser stores (RFC 6265 asks for at least 4096 bytes) is not ours.
_MAX_COOKIE_VALUE = 8192


def attributes(config: SessionConfig) -> str:
    """The ``; Path=...; Domain=...; Secure; HttpOnly; SameSite=...; Partitioned`` suffix for ``config``."""
    parts = [f"; Path={config.cookie_path}"]
    if config.cookie_domain is not None:
        parts.append(f"; Domain={config.cookie_domain}")
    if config.cookie_secure:
        parts.append("; Secure")
    if config.cookie_httponly:
        parts.append("; HttpOnly")
    if config.cookie_samesite is not None:
        parts.append(f"; SameSite={_SAMESITE[config.cookie_samesite]}")
    if config.cookie_partitioned:
        parts.append("; Partitioned")
    return "".join(parts)


@functools.lru_cache(maxsize=128)
def _http_date(second: int) -> str:
    # Formatting dominates the cost of Set-Cookie; cookies expiring in the same second share the text.
    return format_datetime(datetime.fromtimestamp(second, timezone.utc), usegmt=True)


def session_cookie(name: str, value: str, attrs: str, max_age: int | None, expires: int | None) -> bytes:
    """A ``Set-Cookie`` value carrying ``value``; without ``max_age`` it is a browser-session cookie.

    ``value`` is a session key or a signed payload, both made of cookie-safe characters only;
    ``expires`` is the Unix second the cookie expires.
    """
    if max_age is None or expires is None:
        return f"{name}={value}{attrs}".encode("latin-1")
    return f"{name}={value}; Max-Age={max_age}; Expires={_http_date(expires)}{attrs}".encode("latin-1")


def expired_cookie(name: str, attrs: str) -> bytes:
    """A ``Set-Cookie`` value that makes the browser drop the cookie set with the same ``attrs``."""
    return f'{name}=""; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT{attrs}'.encode("latin-1")


@functools.lru_cache(maxsize=16)
def _cookie_pattern(prefix: bytes) -> re.Pattern[bytes]:
    # The cookie's name=, at the start of the header or after a ';' and optional whitespace.
    return re.compile(rb"(?:^|;)\s*" + re.escape(prefix) + rb"([^;]*)")


def read_cookie(headers: Iterable[tuple[bytes, bytes]], prefix: bytes) -> str | None:
    """Return the value of the first cookie whose ``name=`` is ``prefix``, or ``None``.

    Reads every ``Cookie`` header; a value that is empty, too long or not ASCII counts as absent, so a
    hostile header can never raise here.
    """
    for header, value in headers:
        if header != b"cookie":
            continue
        if value.startswith(prefix):  # the usual case, the session cookie first: no regex needed
            end = value.find(b";", len(prefix))
            raw = (value[len(prefix) :] if end < 0 else value[len(prefix) : end]).rstrip()
        else:
            match = _cookie_pattern(prefix).search(value)
            if match is None:
                continue
            raw = match.group(1).rstrip()
        if raw[:1] == b'"' and raw[-1:] == b'"' and len(raw) >= 2:
            raw = raw[1:-1]
        if not raw or len(raw) > _MAX_COOKIE_VALUE or not raw.isascii():
            return None
        return raw.decode("ascii")
    return None
