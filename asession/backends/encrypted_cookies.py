"""EncryptedCookieBackend: the session travels in the cookie, encrypted and authenticated (AES-256-GCM).

Like :class:`~asession.backends.signed_cookies.SignedCookieBackend` (the key is the payload, the absolute
expiry travels authenticated with the data, old secrets rotate out through ``fallback_keys``, the cookie
stays within 4096 bytes), except that neither the visitor nor anything that logs cookies can read the data
either, as with Rails' cookie store. The cookie is ``version ‖ nonce ‖ AES-256-GCM(JSON behind its expiry)
‖ tag`` in URL-safe base64 (:class:`asession.encryption.CookieCipher`); each secret's key is derived with
HKDF-SHA256, the salt in its ``info``.

**No compression by default.** Compressing before encrypting makes the cookie's length depend on how well
the data compresses: when an attacker can put text of their choice in a session that also holds a secret
(a search term beside a CSRF token, a name beside an OAuth state) and watch the cookie's length, they can
guess the secret byte by byte (CRIME, BREACH). Encryption does not hide length, so the length must not
depend on the content beyond its size: ``compress=False`` is the default. ``compress=True`` is for sessions
whose data no visitor influences, or holds nothing worth guessing; it saves room under the 4096-byte limit.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from asession.backends import _cookies
from asession.backends._cookies import MAX_COOKIE_SIZE, MAX_PAYLOAD_SIZE, MIN_SECRET_KEY_LENGTH
from asession.backends.base import DEFAULT_MAX_SIZE, security_logger
from asession.encryption import COOKIE_OVERHEAD, CookieCipher, DecryptionError, require_cryptography

__all__ = ["COMPRESS_FROM", "MAX_PAYLOAD_SIZE", "MIN_SECRET_KEY_LENGTH", "EncryptedCookieBackend"]

#: With ``compress=True``, plaintexts shorter than this many bytes are not compressed (zlib cannot shorten them).
COMPRESS_FROM = 128
#: What follows the expiry in the plaintext: the JSON object itself, or this and its zlib compression.
_COMPRESSED = b"z"
_ZLIB_WBITS = 12
_ZLIB_MEMLEVEL = 5
_PAYLOAD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: The canonical last character of unpadded base64, by the length modulo 4: the bits it carries beyond the
#: data must be zero, or several cookies would decode to one (``None``: that length is never base64).
_CANONICAL_LAST: tuple[frozenset[str] | None, ...] = (
    _PAYLOAD_CHARS,
    None,
    frozenset("AQgw"),
    frozenset("AEIMQUYcgkosw048"),
)
#: The shortest cookie: the overhead and ``1:{}``, in base64.
_MIN_PAYLOAD_LENGTH = ((COOKIE_OVERHEAD + 4) * 4 + 2) // 3
_NAME = "EncryptedCookieBackend"


class EncryptedCookieBackend(_cookies.CookieBackend):
    """Keep the whole session in the cookie, encrypted with a key derived from ``secret_key``.

    ``fallback_keys`` are older secrets, newest first, that still open cookies but never seal: put the old
    secret there when rotating so nobody is logged out. ``salt`` separates these keys from any other use of
    the same secret (another app's cookies fail to open like forged ones). ``max_size`` bounds the session's
    JSON, as for every backend; the cookie value may be at most :data:`MAX_PAYLOAD_SIZE` bytes, so that the
    whole ``Set-Cookie`` stays within the 4096 bytes browsers keep. ``compress=True`` compresses the JSON
    before encrypting it when that makes it shorter: read the module's docstring first.

    A cookie that does not open (changed, truncated, not base64, sealed with a key or salt this backend does
    not know), is malformed or expired loads as ``None``; all but the expired ones are logged as warnings on
    ``asession.security``. Raises :class:`ImproperlyConfigured` at construction when cryptography is missing
    (the ``crypto`` extra) or a key is empty, not text, or (for ``secret_key``) shorter than
    :data:`MIN_SECRET_KEY_LENGTH` characters.
    """

    def __init__(
        self,
        secret_key: str | bytes,
        fallback_keys: Iterable[str | bytes] = (),
        *,
        salt: str = "asession.encrypted_cookies",
        max_size: int = DEFAULT_MAX_SIZE,
        compress: bool = False,
    ) -> None:
        require_cryptography(_NAME)
        super().__init__(max_size=max_size)
        self._cipher = CookieCipher(_cookies.check_secrets(_NAME, secret_key, fallback_keys), salt)
        self.salt = salt
        self.compress = bool(compress)

    def accepts_key(self, key: object) -> bool:
        """Tell whether ``key`` looks like one of our cookies: canonical URL-safe base64, 44 to 4096 long."""
        if not isinstance(key, str) or not _MIN_PAYLOAD_LENGTH <= len(key) <= MAX_COOKIE_SIZE:
            return False
        last = _CANONICAL_LAST[len(key) % 4]
        return last is not None and key[-1] in last and _PAYLOAD_CHARS.issuperset(key)

    async def create(self, data: Mapping[str, Any], expiry_age: int) -> str:
        """Return the encrypted cookie holding ``data`` for ``expiry_age`` seconds: the session's new key.

        Every save makes a new cookie (a fresh nonce), so ``cycle_key`` gets a fresh key too. Raises
        ``TypeError`` naming the offending key when the data does not survive JSON, and
        :class:`SessionError` naming the size when the cookie would be longer than :data:`MAX_PAYLOAD_SIZE`.
        """
        self._check_open()
        payload = self._encode(data)
        head = f"{_cookies.expires_at(expiry_age)}{_cookies.SEPARATOR}"
        plaintext = f"{head}{payload}".encode()
        if self.compress and len(plaintext) >= COMPRESS_FROM:
            compressor = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS, _ZLIB_MEMLEVEL)
            packed = compressor.compress(payload.encode()) + compressor.flush()
            if len(packed) + 1 < len(payload):
                plaintext = head.encode() + _COMPRESSED + packed
        cookie = base64.urlsafe_b64encode(self._cipher.seal(plaintext)).rstrip(b"=").decode("ascii")
        _cookies.check_size(_NAME, "encrypted", cookie)
        return cookie

    def _verify(self, payload: str) -> str | None:
        """Return the session JSON sealed into ``payload``, or ``None`` (logged) when it cannot be trusted."""
        try:
            blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            plaintext = self._cipher.open(blob)
        except (binascii.Error, ValueError) as exc:  # DecryptionError is a ValueError
            reason = exc if isinstance(exc, DecryptionError) else "not base64"
            security_logger.warning(
                "EncryptedCookieBackend: session cookie that does not open (%s: tampered with, truncated, or "
                "sealed with a key or salt this backend does not know); treated as empty.",
                reason,
            )
            return None
        stamp, _, body = plaintext.partition(b":")
        if not _cookies.live(_NAME, stamp, body):
            return None
        try:
            if body[:1] == _COMPRESSED:
                inflater = zlib.decompressobj()
                body = inflater.decompress(body[1:], self.max_size + 1)  # over max_size: refused by _decode
            return body.decode("utf-8")
        except (zlib.error, UnicodeDecodeError) as exc:
            security_logger.warning("EncryptedCookieBackend: authenticated payload is malformed (%s).", exc)
            return None
