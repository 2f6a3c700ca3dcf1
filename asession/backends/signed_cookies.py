"""SignedCookieBackend: the session travels in the cookie, signed (HMAC-SHA256) and timestamped.

As in Django's ``signed_cookies`` backend the session key *is* the signed payload, so nothing is stored on
the server: :meth:`SignedCookieBackend.create` returns a new payload for every save, and ``save``/``delete``
have nothing to do. Unlike Django, the absolute expiry time is signed into the payload, so a custom
``set_expiry`` is honoured and a stolen cookie stops working when the session would have expired.

The data is signed, not encrypted: the visitor can read it (base64 and maybe zlib), only not change it.
:class:`~asession.backends.encrypted_cookies.EncryptedCookieBackend` hides it too.

The cookie is itsdangerous' ``URLSafeSerializer`` format (salt, ``django-concat`` key derivation,
HMAC-SHA256), computed here with :mod:`hashlib` states prepared once per key instead of through
itsdangerous' layers, which cost more than the rest of a request's session handling (issue 13). Cookies
made by earlier versions verify, and the cookies made now verify with itsdangerous. Two things differ
from itsdangerous' own output, both still valid in its format: payloads under :data:`COMPRESS_FROM` bytes
are not compressed (zlib never shortens them by more than a byte or two, and setting it up costs
more than the whole signature), and zlib runs with a 4 KiB window, the most a cookie can hold.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from asession.backends import _cookies
from asession.backends._cookies import COOKIE_ALLOWANCE, MAX_COOKIE_SIZE, MAX_PAYLOAD_SIZE, MIN_SECRET_KEY_LENGTH
from asession.backends._extras import require
from asession.backends.base import DEFAULT_MAX_SIZE, security_logger
from asession.encryption import HmacKey

__all__ = [
    "COMPRESS_FROM",
    "COOKIE_ALLOWANCE",
    "MAX_COOKIE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MIN_SECRET_KEY_LENGTH",
    "SignedCookieBackend",
]

#: Payloads shorter than this many bytes are signed uncompressed (see the module's docstring).
COMPRESS_FROM = 128
#: zlib's window (2**12 = 4 KiB, as long as any cookie) and memory level: a compressor of about 30 KB, where
#: zlib's defaults allocate some 260 KB (and fault in fresh pages) on every call.
_ZLIB_WBITS = 12
_ZLIB_MEMLEVEL = 5
#: A signed payload inflates to at most this many bytes: more is not a session this backend made.
_MAX_INFLATED = 64 * MAX_COOKIE_SIZE

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
_NAME = "SignedCookieBackend"


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(text: bytes) -> bytes:
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


class SignedCookieBackend(_cookies.CookieBackend):
    """Keep the whole session in the cookie, signed with ``secret_key`` (HMAC-SHA256, itsdangerous' format).

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
    extra, whose format this is) or a key is empty, not text, or (for ``secret_key``) shorter than
    :data:`MIN_SECRET_KEY_LENGTH` characters.
    """

    def __init__(
        self,
        secret_key: str | bytes,
        fallback_keys: Iterable[str | bytes] = (),
        *,
        salt: str = "asession.signed_cookies",
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        # The format is itsdangerous'; the extra stays this backend's dependency, as the cookies are its.
        require("itsdangerous", _NAME, "cookies")
        super().__init__(max_size=max_size)
        secrets_newest_first = _cookies.check_secrets(_NAME, secret_key, fallback_keys)
        # itsdangerous' "django-concat" key derivation: sha256(salt + b"signer" + secret).
        prefix = salt.encode("utf-8") + b"signer"
        self._signers = [HmacKey(hashlib.sha256(prefix + secret).digest()) for secret in secrets_newest_first]
        self.salt = salt

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
        nonce = secrets.token_urlsafe(6)
        text = f"{_cookies.expires_at(expiry_age)}{_SEPARATOR}{nonce}{_SEPARATOR}{payload}".encode()
        body = _b64encode(text)
        if len(text) >= COMPRESS_FROM:
            compressor = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS, _ZLIB_MEMLEVEL)
            compressed = compressor.compress(text) + compressor.flush()
            if len(compressed) < len(text) - 1:  # itsdangerous' rule
                body = b"." + _b64encode(compressed)
        signed = (body + b"." + _b64encode(self._signers[0].digest(body))).decode("ascii")
        _cookies.check_size(_NAME, "signed", signed)
        return signed

    def _verify(self, payload: str) -> str | None:
        """Return the session JSON signed into ``payload``, or ``None`` (logged) when it cannot be trusted."""
        text = self._unsign(payload)
        if text is None:
            security_logger.warning(
                "SignedCookieBackend: session cookie with a bad signature (tampered with, or signed with a key "
                "or salt this backend does not know); treated as empty."
            )
            return None
        rest = _cookies.split_expiry(_NAME, text)
        if rest is None:
            return None
        _nonce, _, data = rest.partition(_SEPARATOR)
        if not data:
            security_logger.warning("SignedCookieBackend: signed session payload is malformed; treated as empty.")
            return None
        return data

    def _unsign(self, payload: str) -> str | None:
        """The text signed into ``payload`` (checked by :meth:`accepts_key`) by any key, or ``None``."""
        signed = payload.encode("ascii")
        body, separator, signature = signed.rpartition(b".")
        if not separator:
            return None
        for signer in self._signers:  # newest first; every key is tried on a forgery, whatever it holds
            if hmac.compare_digest(_b64encode(signer.digest(body)), signature):
                break
        else:
            return None
        try:
            if body[:1] == b".":
                inflater = zlib.decompressobj()
                raw = inflater.decompress(_b64decode(body[1:]), _MAX_INFLATED)
                if inflater.unconsumed_tail:
                    return None
            else:
                raw = _b64decode(body)
            return raw.decode("utf-8")
        except (binascii.Error, ValueError, zlib.error):
            return None
