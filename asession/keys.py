"""Session keys: generation from ``secrets`` and validation before any key reaches storage."""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = [
    "KEY_LENGTH",
    "MAX_KEY_LENGTH",
    "MIN_KEY_LENGTH",
    "VALID_KEY_CHARS",
    "ValidKey",
    "checked",
    "is_valid_key",
    "new_key",
    "storage_key",
]

VALID_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_LENGTH = 32
MIN_KEY_LENGTH = 8
MAX_KEY_LENGTH = 64

_VALID_KEY = re.compile(f"[a-z0-9]{{{MIN_KEY_LENGTH},{MAX_KEY_LENGTH}}}")
_KEY_SPACE = len(VALID_KEY_CHARS) ** KEY_LENGTH


def new_key() -> str:
    """Return a fresh random key: 32 characters of ``[a-z0-9]``, about 165 bits from ``secrets``."""
    # One uniform draw over the whole key space, written in base 36: as random as 32 calls of
    # secrets.choice() and several times cheaper on the request path.
    number = secrets.randbelow(_KEY_SPACE)
    chars = []
    for _ in range(KEY_LENGTH):
        number, digit = divmod(number, 36)
        chars.append(VALID_KEY_CHARS[digit])
    return "".join(chars)


def is_valid_key(key: object) -> bool:
    """Tell whether ``key`` is a well-formed server-side session key.

    A valid key is a ``str`` of 8 to 64 characters, each one of ``[a-z0-9]``. Anything else (``../x``,
    NUL, unicode, whitespace) is refused before it can reach a file path or a query.
    """
    return isinstance(key, str) and _VALID_KEY.fullmatch(key) is not None


def storage_key(key: str) -> str:
    """Return the SHA-256 hex digest under which a server-side store keeps the session ``key``.

    Stores never see the raw key, so a dump of the database, directory or cache holds no usable cookie.
    """
    return hashlib.sha256(key.encode("ascii")).hexdigest()


class ValidKey:
    """A session key checked once, at the edge, with the storage key its backend keeps it under.

    Built by :meth:`SessionBackend.valid_key <asession.backends.base.SessionBackend.valid_key>` when a
    request's cookie is read; the session and the backend then trust it instead of validating and hashing
    the key again on every call. ``raw`` is the cookie's value, ``skey`` the storage key, ``hashed``
    whether ``skey`` is the SHA-256 of ``raw`` (server-side stores) or ``raw`` itself (signed cookies).
    """

    __slots__ = ("raw", "skey", "hashed")

    def __init__(self, raw: str, skey: str, hashed: bool) -> None:
        self.raw = raw
        self.skey = skey
        self.hashed = hashed

    def __repr__(self) -> str:
        return f"ValidKey({self.raw!r})"


#: The ValidKeys of the keys seen last. A visitor's requests all carry the same key; remembering its
#: ValidKey turns the check and the SHA-256 (1.5 µs per request, measured with timeit) into one dict
#: lookup (0.05 µs). Emptied when full: a forgotten key is simply checked again. Only keys that passed
#: the check are remembered.
_RECENT_SIZE = 4096
_recent: dict[str, ValidKey] = {}


def checked(key: object) -> ValidKey | None:
    """The :class:`ValidKey` of a server-side session key (hashed for storage), or ``None`` when malformed."""
    if type(key) is str:
        found = _recent.get(key)
        if found is not None:
            return found
    if not is_valid_key(key):
        return None
    raw: str = key  # type: ignore[assignment]  # is_valid_key() admits only str
    valid = ValidKey(raw, storage_key(raw), True)
    if type(key) is str:  # exactly str: its hash and equality are str's own
        if len(_recent) >= _RECENT_SIZE:
            _recent.clear()
        _recent[raw] = valid
    return valid
