"""SignedCookieBackend: the session travels in the cookie, signed and timestamped with itsdangerous.

As in Django's ``signed_cookies`` backend the session key *is* the signed payload, so nothing is stored on
the server: :meth:`SignedCookieBackend.create` returns a new payload for every save, and ``save``/``delete``
have nothing to do. Unlike Django, the absolute expiry time is signed into the payload, so a custom
``set_expiry`` is honoured and a stolen cookie stops working when the session would have expired.

The data is signed, not encrypted: the visitor can read it (base64 and maybe zlib), only not change it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from asession import expiry
from asession.backends._extras import require
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend, security_logger
from asession.changes import Changes
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError

__all__ = ["COOKIE_ALLOWANCE", "MAX_COOKIE_SIZE", "MAX_PAYLOAD_SIZE", "MIN_SECRET_KEY_LENGTH", "SignedCookieBackend"]

#: What browsers keep of one cookie: name, ``=``, value and attributes (RFC 6265 asks for 4096 bytes).
MAX_COOKIE_SIZE = 4096
#: Bytes left for the cookie's name, ``=`` and attributes (Path, Domain, Max-Age, Expires, flags). The
#: backend does not know them, so it assumes they fit in this much.
COOKIE_ALLOWANCE = 200
#: The longest signed payload (the cookie value) :meth:`SignedCookieBackend.create` produces.
MAX_PAYLOAD_SIZE = MAX_COOKIE_SIZE - COOKIE_ALLOWANCE
#: Shorter secrets are refused: ``secrets.token_urlsafe(32)`` makes a good one.
MIN_SECRET_KEY_LENGTH = 32

#: The alphabet of itsdangerous' URL-safe payloads: URL-safe base64, plus ``.`` between the parts.
_PAYLOAD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
#: Base64 of an HMAC-SHA256 signature, after the last ``.``; shorter keys cannot be ours.
_SIGNATURE_LENGTH = 43
#: The 43rd character of a 32-byte signature carries 4 bits and 2 unused ones, which decoders ignore: only
#: the characters with those 2 bits clear are the canonical encoding. Others would make several cookies
#: (a "tampered" last character) verify as one, so they are refused before any signature check.
_CANONICAL_LAST = frozenset("AEIMQUYcgkosw048")
_MIN_PAYLOAD_LENGTH = 1 + 1 + _SIGNATURE_LENGTH
_SEPARATOR = ":"


class _Text:
    """The itsdangerous "serializer" for text asession has already serialized, so JSON is written once."""

    dumps = staticmethod(str)
    loads = staticmethod(str)


class SignedCookieBackend(SessionBackend):
    """Keep the whole session in the cookie, signed with ``secret_key`` (HMAC-SHA256 via itsdangerous).

    ``fallback_keys`` are older secrets, newest first, that still verify cookies but never sign: put the
    old secret there when rotating so nobody is logged out. ``salt`` separates these signatures from any
    other use of the same secret. ``max_size`` bounds the session's JSON before compression, as for every
    backend; the signed payload itself may be at most :data:`MAX_PAYLOAD_SIZE` bytes, so that the whole
    ``Set-Cookie`` (name and attributes included) stays within the 4096 bytes browsers keep.

    The payload is the session's JSON behind its absolute expiry time and a random nonce, zlib-compressed
    when that makes it shorter, URL-safe base64-encoded and signed. A payload with a bad signature, signed
    for another salt, malformed or expired loads as ``None``; all but the expired ones are logged as
    warnings on ``asession.security``.

    Raises :class:`ImproperlyConfigured` at construction when itsdangerous is missing (the ``cookies``
    extra) or a key is empty, not text, or (for ``secret_key``) shorter than
    :data:`MIN_SECRET_KEY_LENGTH` characters.
    """

    #: The payload is the key and is public anyway: there is nothing stored to hide it from.
    hashes_keys: ClassVar[bool] = False
    merges: ClassVar[bool] = False
    #: The server keeps nothing, so it can neither list a user's sessions nor end one.
    indexes: ClassVar[bool] = False
    #: Nothing is stored, so nothing waits: ``store_timeout`` has nothing to bound.
    waits = False

    def __init__(
        self,
        secret_key: str | bytes,
        fallback_keys: Iterable[str | bytes] = (),
        *,
        salt: str = "asession.signed_cookies",
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        require("itsdangerous", "SignedCookieBackend", "cookies")
        import itsdangerous

        super().__init__(max_size=max_size)
        _check_secret(secret_key, "secret_key")
        if len(secret_key) < MIN_SECRET_KEY_LENGTH:
            raise ImproperlyConfigured(
                f"SignedCookieBackend's secret_key is {len(secret_key)} characters long; it needs at least "
                f"{MIN_SECRET_KEY_LENGTH} random ones. Generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
            )
        if isinstance(fallback_keys, (str, bytes)):
            raise ImproperlyConfigured(
                "SignedCookieBackend's fallback_keys must be a list of old secret keys, not a single key: "
                "write fallback_keys=[old_key]."
            )
        fallbacks = list(fallback_keys)
        for index, key in enumerate(fallbacks):
            # Old keys are not held to today's minimum length, so a weak secret can be rotated out.
            _check_secret(key, f"fallback_keys[{index}]")
        # itsdangerous signs with the last key and verifies newest first, so the oldest comes first.
        self._serializer: itsdangerous.URLSafeSerializer = itsdangerous.URLSafeSerializer(
            [_as_bytes(key) for key in (*reversed(fallbacks), secret_key)],
            salt=salt,
            serializer=_Text,
            signer_kwargs={"digest_method": hashlib.sha256},
        )
        self._bad_data = itsdangerous.BadData
        self.salt = salt

    def _describe(self) -> str:
        return f"{self._state.name.lower()}, salt={self.salt!r}"

    def accepts_key(self, key: object) -> bool:
        """Tell whether ``key`` looks like one of our payloads: URL-safe base64 and ``.``, 45 to 4096 long.

        The signature's last character must also be its canonical encoding, so one session has one cookie.
        """
        return (
            isinstance(key, str)
            and _MIN_PAYLOAD_LENGTH <= len(key) <= MAX_COOKIE_SIZE
            and _PAYLOAD_CHARS.issuperset(key)
            and key[-1] in _CANONICAL_LAST
        )

    async def create(self, data: Mapping[str, Any], expiry_age: int) -> str:
        """Return the signed payload holding ``data`` for ``expiry_age`` seconds: the session's new key.

        Every save of a session makes a new payload (the previous one is simply replaced in the cookie), so
        ``cycle_key`` gets a fresh key here too. Raises ``TypeError`` naming the offending key when
        the data does not survive JSON, and :class:`SessionError` naming the size when the payload would
        be longer than :data:`MAX_PAYLOAD_SIZE` bytes, a cookie browsers would silently drop.
        """
        self._check_open()
        payload = self._encode(data)
        expires_at = int(expiry.timestamp()) + int(expiry_age)
        signed: str = self._serializer.dumps(f"{expires_at}{_SEPARATOR}{secrets.token_urlsafe(6)}{_SEPARATOR}{payload}")
        if len(signed) > MAX_PAYLOAD_SIZE:
            raise SessionError(
                f"The signed session cookie would be {len(signed)} bytes, over the {MAX_PAYLOAD_SIZE} bytes "
                f"SignedCookieBackend allows so that the whole cookie fits in the {MAX_COOKIE_SIZE} bytes "
                "browsers keep. Store less in the session, or use a server-side backend."
            )
        return signed

    def _verify(self, payload: str) -> str | None:
        """Return the session JSON signed into ``payload``, or ``None`` (logged) when it cannot be trusted."""
        try:
            text: str = self._serializer.loads(payload)
        except self._bad_data:
            security_logger.warning(
                "SignedCookieBackend: session cookie with a bad signature (tampered with, or signed with a key "
                "or salt this backend does not know); treated as empty."
            )
            return None
        expires_at, _, rest = text.partition(_SEPARATOR)
        _nonce, _, data = rest.partition(_SEPARATOR)
        if not data or not (expires_at.isascii() and expires_at.isdigit()):
            security_logger.warning("SignedCookieBackend: signed session payload is malformed; treated as empty.")
            return None
        if int(expires_at) <= expiry.timestamp():
            security_logger.debug("SignedCookieBackend: session cookie expired; treated as empty.")
            return None
        return data

    async def _load(self, skey: str) -> str | None:
        return self._verify(skey)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        # Nothing is stored: the data lives in the key the caller holds, and create() makes new keys.
        if must_create and self._verify(skey) is not None:
            raise CreateError("This signed session payload is valid already; call create() for a new one.")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None:
        raise NotImplementedError(
            "SignedCookieBackend cannot merge concurrent saves: the data travels in the cookie, so the last "
            "response's cookie wins. Session.save() writes the whole session with create() instead."
        )

    async def _exists(self, skey: str) -> bool:
        return self._verify(skey) is not None

    async def _delete(self, skey: str) -> None:
        """Nothing to forget on the server: the middleware expires the cookie of a flushed session."""

    async def _clear_expired(self) -> int:
        # Expired payloads are refused when read; there is no store to sweep.
        return 0


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def _check_secret(key: object, name: str) -> None:
    if not isinstance(key, (str, bytes)):
        raise ImproperlyConfigured(f"SignedCookieBackend's {name} must be a str or bytes, not {type(key).__name__}.")
    if not key:
        raise ImproperlyConfigured(f"SignedCookieBackend's {name} is empty; it must be a long random secret.")
