"""What the cookie backends share: secret checks, the cookie size guard, and the absolute expiry they carry.

:class:`~asession.backends.signed_cookies.SignedCookieBackend` and
:class:`~asession.backends.encrypted_cookies.EncryptedCookieBackend` keep the whole session in the cookie,
behind its absolute expiry time (``"<unix seconds>:"``), authenticated with the data; they differ only in
how the cookie is protected (signed, or encrypted).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import ClassVar

from asession import expiry
from asession.backends.base import SessionBackend, security_logger
from asession.changes import Changes
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError

__all__ = [
    "COOKIE_ALLOWANCE",
    "MAX_COOKIE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MIN_SECRET_KEY_LENGTH",
    "CookieBackend",
    "as_bytes",
    "check_secrets",
    "check_size",
    "expires_at",
    "live",
    "split_expiry",
]

#: What browsers keep of one cookie: name, ``=``, value and attributes (RFC 6265 asks for 4096 bytes).
MAX_COOKIE_SIZE = 4096
#: Bytes left for the cookie's name, ``=`` and attributes (Path, Domain, Max-Age, Expires, flags). The
#: backend does not know them, so it assumes they fit in this much.
COOKIE_ALLOWANCE = 200
#: The longest payload (the cookie value) a cookie backend's ``create()`` produces.
MAX_PAYLOAD_SIZE = MAX_COOKIE_SIZE - COOKIE_ALLOWANCE
#: Shorter secrets are refused: ``secrets.token_urlsafe(32)`` makes a good one.
MIN_SECRET_KEY_LENGTH = 32
SEPARATOR = ":"


def as_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def _check_secret(backend: str, key: object, name: str) -> None:
    if not isinstance(key, (str, bytes)):
        raise ImproperlyConfigured(f"{backend}'s {name} must be a str or bytes, not {type(key).__name__}.")
    if not key:
        raise ImproperlyConfigured(f"{backend}'s {name} is empty; it must be a long random secret.")


def check_secrets(backend: str, secret_key: object, fallback_keys: object) -> list[bytes]:
    """The secret and the fallbacks as bytes, newest first; :class:`ImproperlyConfigured` for bad ones.

    The secret must have at least :data:`MIN_SECRET_KEY_LENGTH` characters; old keys are not held to today's
    minimum length, so a weak secret can be rotated out.
    """
    _check_secret(backend, secret_key, "secret_key")
    assert isinstance(secret_key, (str, bytes))
    if len(secret_key) < MIN_SECRET_KEY_LENGTH:
        raise ImproperlyConfigured(
            f"{backend}'s secret_key is {len(secret_key)} characters long; it needs at least "
            f"{MIN_SECRET_KEY_LENGTH} random ones. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    if isinstance(fallback_keys, (str, bytes)) or not isinstance(fallback_keys, Iterable):
        raise ImproperlyConfigured(
            f"{backend}'s fallback_keys must be a list of old secret keys, not a single key: "
            "write fallback_keys=[old_key]."
        )
    fallbacks = list(fallback_keys)
    for index, key in enumerate(fallbacks):
        _check_secret(backend, key, f"fallback_keys[{index}]")
    return [as_bytes(key) for key in (secret_key, *fallbacks)]


def check_size(backend: str, what: str, payload: str) -> None:
    """Raise :class:`SessionError` naming the size when ``payload`` is longer than :data:`MAX_PAYLOAD_SIZE`."""
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise SessionError(
            f"The {what} session cookie would be {len(payload)} bytes, over the {MAX_PAYLOAD_SIZE} bytes "
            f"{backend} allows so that the whole cookie fits in the {MAX_COOKIE_SIZE} bytes "
            "browsers keep. Store less in the session, or use a server-side backend."
        )


def expires_at(expiry_age: int) -> str:
    """The absolute expiry a cookie made now carries, as its text (Unix seconds)."""
    return str(int(expiry.timestamp()) + int(expiry_age))


def live(backend: str, stamp: str | bytes, rest: str | bytes) -> bool:
    """Whether an authenticated ``"<stamp>:<rest>"`` is well-formed and unexpired; logged when it is not."""
    if not rest or not (stamp.isascii() and stamp.isdigit()):
        security_logger.warning("%s: authenticated session payload is malformed; treated as empty.", backend)
        return False
    if int(stamp) <= expiry.timestamp():
        security_logger.debug("%s: session cookie expired; treated as empty.", backend)
        return False
    return True


def split_expiry(backend: str, text: str) -> str | None:
    """What follows the expiry of an authenticated ``"<expiry>:<rest>"``; ``None`` if malformed (logged) or expired."""
    stamp, _, rest = text.partition(SEPARATOR)
    return rest if live(backend, stamp, rest) else None


class CookieBackend(SessionBackend):
    """A backend whose key is the session itself, authenticated: what both cookie backends do alike.

    Nothing is stored on the server: ``create()`` makes a new payload for every save, ``save`` and
    ``delete`` have nothing to do, and ``load`` only checks the payload (:meth:`_verify`).
    """

    #: The payload is the key and travels in the cookie: there is nothing stored to hide it from.
    hashes_keys: ClassVar[bool] = False
    merges: ClassVar[bool] = False
    #: The server keeps nothing, so it can neither list a user's sessions nor end one.
    indexes: ClassVar[bool] = False
    #: Nothing is stored, so nothing waits: ``store_timeout`` has nothing to bound.
    waits = False

    salt: str

    def _describe(self) -> str:
        return f"{self._state.name.lower()}, salt={self.salt!r}"

    @abstractmethod
    def _verify(self, payload: str) -> str | None:
        """Return the session JSON in ``payload``, or ``None`` (logged) when it cannot be trusted or expired."""

    async def _load(self, skey: str) -> str | None:
        return self._verify(skey)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        # Nothing is stored: the data lives in the key the caller holds, and create() makes new keys.
        if must_create and self._verify(skey) is not None:
            raise CreateError("This session payload is valid already; call create() for a new one.")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None:
        raise NotImplementedError(
            f"{type(self).__name__} cannot merge concurrent saves: the data travels in the cookie, so the last "
            "response's cookie wins. Session.save() writes the whole session with create() instead."
        )

    async def _exists(self, skey: str) -> bool:
        return self._verify(skey) is not None

    async def _delete(self, skey: str) -> None:
        """Nothing to forget on the server: the middleware expires the cookie of a flushed session."""

    async def _clear_expired(self) -> int:
        # Expired payloads are refused when read; there is no store to sweep.
        return 0
