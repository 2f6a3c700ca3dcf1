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
    "is_valid_key",
    "new_key",
    "storage_key",
]

VALID_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_LENGTH = 32
MIN_KEY_LENGTH = 8
MAX_KEY_LENGTH = 64

_VALID_KEY = re.compile(f"[a-z0-9]{{{MIN_KEY_LENGTH},{MAX_KEY_LENGTH}}}")
#: How many of the keys seen last are remembered as valid, with their storage key once computed, so that
#: one request validates and hashes its key once although the middleware, the session and the backend
#: each check it. Emptied whenever it is full: a forgotten key is simply checked again.
_RECENT_SIZE = 1024
_recent: dict[str, str | None] = {}


def _remember(key: str, skey: str | None) -> None:
    if len(_recent) >= _RECENT_SIZE:
        _recent.clear()
    _recent[key] = skey


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
    if type(key) is str:  # exactly str: its hash and equality are str's own, so the memo can be trusted
        if key in _recent:
            return True
        if _VALID_KEY.fullmatch(key) is None:
            return False
        _remember(key, None)
        return True
    return isinstance(key, str) and _VALID_KEY.fullmatch(key) is not None


def storage_key(key: str) -> str:
    """Return the SHA-256 hex digest under which a server-side store keeps the session ``key``.

    Stores never see the raw key, so a dump of the database, directory or cache holds no usable cookie.
    The digests of the keys seen last are remembered (in this process only), so the load and the save
    of one request hash the key once.
    """
    skey = _recent.get(key) if type(key) is str else None
    if skey is None:
        skey = hashlib.sha256(key.encode("ascii")).hexdigest()
        # Only valid keys are remembered, since the memo also answers is_valid_key(); that call has
        # just made room for this key, so the digest is stored beside it directly.
        if is_valid_key(key) and type(key) is str:
            _recent[key] = skey
    return skey
