"""Encryption: the primitives of ``EncryptedCookieBackend`` and of ``encrypt_at_rest=True``.

Everything here is AES-256-GCM from the ``cryptography`` package (the ``crypto`` extra), with keys derived
by HKDF-SHA256 (RFC 5869) and a random 96-bit nonce for every message. HMAC and HKDF are computed with
:mod:`hashlib` states prepared once per key (:class:`HmacKey`), which gives the same bytes as :mod:`hmac`
and ``cryptography``'s ``HKDF`` (the tests compare them) at a fraction of the cost: on OpenSSL 3 one
``hmac.digest()`` costs about 3.5 µs, a prepared key about 1 µs, and these run on every request.

**Encryption at rest** (:class:`SessionCipher`). A server-side store keeps ``sha256(key)``; with
``encrypt_at_rest=True`` it also keeps the data encrypted with keys derived from the raw session key, which
only the visitor's cookie holds. Each top-level item ``name: value`` of a session is stored as its own item
``field: ciphertext``:

- ``field`` is ``"~"`` and the URL-safe base64 of the first 16 bytes of ``HMAC-SHA256(name key, name)``:
  deterministic for one session, so a request's changes address the same stored item as the load did,
  and the stores' own atomic merges (Redis hash fields, the SQL, file and memory merges in Python) keep
  working unchanged on ciphertext; one-way, so the store learns no key names;
- ``ciphertext`` is the standard base64 of ``nonce ‖ AES-256-GCM(data key, nonce, {name: value} as JSON,
  associated data: field)``: the name travels inside, authenticated, and the associated data binds each
  ciphertext to its field, so no ciphertext can be moved to another item or another session.

Two items stay plaintext, because the per-user index reads them without any cookie
(:meth:`~asession.backends.base.SessionBackend.user_sessions`): :data:`asession.users.META_KEY` (start, last
activity, expiry, user agent) and :data:`asession.users.USER_ID_KEY` (the user id, which the index record
holds in plaintext anyway). Items in any other plaintext form are those of a session stored before
encryption was turned on: they load as they are, an encrypted item of the same name wins over them, and the
first save after such a load encrypts them (see :meth:`SessionCipher.upgrade`).

**The encrypted cookie** (:class:`CookieCipher`): ``version ‖ nonce ‖ AES-256-GCM(key, nonce, plaintext,
associated data: version)``, URL-safe base64 without padding, one key per secret derived with the salt in
HKDF's ``info``, so a cookie of another app (another salt) fails authentication like a forged one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json.encoder
import os
from binascii import b2a_base64
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from asession import serializers, users
from asession.changes import Changes
from asession.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "AT_REST_INFO",
    "FIELD_PREFIX",
    "NONCE_SIZE",
    "PLAIN_NAMES",
    "TAG_SIZE",
    "CookieCipher",
    "DecryptionError",
    "HmacKey",
    "SessionCipher",
    "cipher_for",
    "hkdf",
    "is_field",
    "nonce",
    "require_cryptography",
]

#: Bytes of an AES-GCM nonce (96 bits, the size GCM is defined for) and of its tag.
NONCE_SIZE = 12
TAG_SIZE = 16
#: HKDF's ``info`` for the keys of a session's data at rest: not the storage key's SHA-256 of the raw key,
#: nor anything else derived from it, so knowing ``sha256(key)`` (the store does) gives nothing here.
AT_REST_INFO = b"asession encrypt_at_rest v1: AES-256-GCM key, HMAC-SHA256 name key"
#: HKDF's salt for the keys at rest (RFC 5869 allows a fixed one; the session key itself is random).
AT_REST_SALT = b"asession.encryption"
#: The items a session keeps in plaintext, for the per-user index (see the module's docstring).
PLAIN_NAMES = frozenset({users.META_KEY, users.USER_ID_KEY})
#: Every encrypted field starts with this, followed by 22 characters of URL-safe base64 (16 bytes).
FIELD_PREFIX = "~"
_FIELD_BYTES = 16
_FIELD_LENGTH = len(FIELD_PREFIX) + 22

_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class DecryptionError(ValueError):
    """Stored or received ciphertext that does not authenticate: tampered with, truncated, or someone else's."""


def require_cryptography(what: str) -> None:
    """Import ``cryptography``'s AES-GCM, or raise :class:`ImproperlyConfigured` naming the ``crypto`` extra."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{what} needs the cryptography package. Install it with `pip install 'asession[crypto]'`."
        ) from exc


class HmacKey:
    """HMAC-SHA256 under one key, with the padded key's hash states prepared once (RFC 2104)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        """``HMAC-SHA256(key, message)``, the same 32 bytes as ``hmac.digest(key, message, "sha256")``."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def hkdf(key_material: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): ``length`` bytes (at most 8160) derived from ``key_material``."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 derives 1 to 8160 bytes, not {length}.")
    expand = HmacKey(HmacKey(salt or bytes(32)).digest(key_material))
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = expand.digest(block + info + bytes((counter,)))
        output += block
        counter += 1
    return output[:length]


class _Nonces:
    """Random 96-bit nonces from ``os.urandom``, drawn 256 at a time: one system call per 256 messages.

    Taken from a deque, whose ``popleft`` is atomic, so two threads never get the same nonce (two that find
    it empty both refill it, with fresh random bytes); emptied in a forked child (``os.register_at_fork``),
    so two processes never share nonces.
    """

    _BATCH = 256

    def __init__(self) -> None:
        #: The nonces drawn and not used yet; a caller may ``popleft()`` one itself when it is not empty.
        self.pool: deque[bytes] = deque()

    def take(self) -> bytes:
        try:
            return self.pool.popleft()
        except IndexError:
            batch = os.urandom(NONCE_SIZE * self._BATCH)
            self.pool.extend(batch[i : i + NONCE_SIZE] for i in range(0, len(batch), NONCE_SIZE))
            return self.pool.popleft()

    def forget(self) -> None:
        self.pool.clear()


_nonces = _Nonces()
_tuple_new = tuple.__new__
os.register_at_fork(after_in_child=_nonces.forget)


def nonce() -> bytes:
    """A fresh random 96-bit nonce."""
    return _nonces.take()


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def is_field(name: str) -> bool:
    """Whether ``name`` has the form of an encrypted item's field (not a plaintext name of an older session)."""
    return len(name) == _FIELD_LENGTH and name[0] == FIELD_PREFIX


# -- encryption at rest ---------------------------------------------------------------------------------------


class SessionCipher:
    """The keys of one session's data at rest, derived from its raw key: seals and opens its items.

    Made by :func:`cipher_for`; holds the AES-GCM key, the HMAC key of the field names and the fields it has
    computed already (a session uses the same few names on every request). It also remembers, per field,
    the last small ciphertext it sealed or opened with what it holds, so that reading an item this process
    has already seen skips the decryption (a session is read far more often than written): an exact match
    of field and ciphertext of this very session, which only the ciphertext it authenticated or made can be.
    """

    __slots__ = ("_aead", "_names", "_fields", "_opened", "_invalid_tag")

    def __init__(self, raw_key: str) -> None:
        from cryptography.exceptions import InvalidTag

        material = hkdf(raw_key.encode("ascii"), salt=AT_REST_SALT, info=AT_REST_INFO, length=64)
        self._aead = _aesgcm(material[:32])
        self._names = HmacKey(material[32:])
        self._fields: dict[str, str] = {}
        #: field -> (ciphertext, its item): a dict for an immutable value, else the item's JSON text.
        self._opened: dict[str, tuple[str, dict[str, Any] | str]] = {}
        self._invalid_tag = InvalidTag

    def field(self, name: str) -> str:
        """The stored field of the item ``name``: deterministic for this session, one-way."""
        field = self._fields.get(name)
        if field is None:
            digest = self._names.digest(name.encode("utf-8", "surrogatepass"))[:_FIELD_BYTES]
            field = FIELD_PREFIX + base64.urlsafe_b64encode(digest)[:22].decode("ascii")
            if len(self._fields) < _MAX_FIELDS:
                self._fields[name] = field
        return field

    def seal(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` as it is stored: each item encrypted under its field, :data:`PLAIN_NAMES` as they are.

        Raises ``TypeError`` naming the key when a value (or a key) does not survive JSON.
        """
        sealed: dict[str, Any] = {}
        fields = self._fields
        opened = self._opened
        encrypt = self._aead.encrypt
        pool = _nonces.pool
        for name, value in data.items():
            if type(name) is not str:
                # JSON's own spelling of a key that is not a string (1 -> "1"), or the TypeError naming it.
                return self.seal(serializers.loads(serializers.dumps(data)))
            if name in PLAIN_NAMES:
                sealed[name] = value
                continue
            field = fields.get(name)
            if field is None:
                field = self.field(name)
            kind = type(value)
            if kind is int:  # the usual values inline, as _item_json writes them
                text = f"{{{_quote(name)}:{int.__repr__(value)}}}"
            elif kind is str:
                text = f"{{{_quote(name)}:{_quote(value)}}}"
            else:
                text = _item_json(name, value)
            try:
                nonce = pool.popleft()
            except IndexError:  # drawn out (or another thread took the last one): take() refills
                nonce = _nonces.take()
            blob = nonce + encrypt(nonce, text.encode("utf-8", "surrogatepass"), field.encode("ascii"))
            ciphertext = sealed[field] = b2a_base64(blob, newline=False).decode("ascii")
            # Remembered, so that the next load of this item by this process skips the decryption.
            if len(ciphertext) <= _REMEMBERED_LENGTH and (field in opened or len(opened) < _REMEMBERED_FIELDS):
                opened[field] = (ciphertext, {name: value} if kind in _IMMUTABLE else text)
        return sealed

    def _removals(self, names: Iterable[str]) -> frozenset[str]:
        # The plaintext name goes too: an item left by an older, unencrypted save must not come back.
        removed: set[str] = set()
        for name in names:
            removed.add(name)
            if name not in PLAIN_NAMES and type(name) is str:
                removed.add(self.field(name))
        return frozenset(removed)

    def seal_changes(self, changes: Changes) -> Changes:
        """``changes`` addressed to the stored items: the same merge, on fields and ciphertexts."""
        changed, removed, replace = changes
        # tuple.__new__ rather than Changes(): the named tuple's own __new__ is a Python function.
        return _tuple_new(Changes, (self.seal(changed), self._removals(removed) if removed else removed, replace))

    def upgrade(self, stored: Mapping[str, Any], changes: Changes) -> Changes:
        """:meth:`seal_changes`, plus the encryption of the plaintext items of ``stored`` (an older session).

        Every plaintext item the request leaves alone is written encrypted and its plaintext removed, in
        the same atomic merge as the request's own changes.
        """
        if changes.replace:
            return self.seal_changes(changes)
        legacy = {
            name: value
            for name, value in stored.items()
            if name not in PLAIN_NAMES and not is_field(name) and self.field(name) not in stored
        }
        changed = {name: value for name, value in legacy.items() if name not in changes.removed}
        changed.update(changes.changed)
        plaintext = frozenset(name for name in stored if name not in PLAIN_NAMES and not is_field(name))
        return Changes(self.seal(changed), self._removals(changes.removed) | plaintext, False)

    def open(self, stored: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The session's data from its stored items, and whether plaintext items of an older save were among them.

        Raises :class:`DecryptionError` when any encrypted item fails to authenticate (a changed bit in its
        field, nonce, ciphertext or tag, or an item of another session): the session is then treated as
        empty, never half-read.
        """
        data: dict[str, Any] = {}
        legacy: dict[str, Any] | None = None
        opened = self._opened
        for name, value in stored.items():
            if name in PLAIN_NAMES:
                data[name] = value
            elif len(name) == _FIELD_LENGTH and name[0] == FIELD_PREFIX:
                seen = opened.get(name)
                if seen is not None and seen[0] == value:  # sealed or opened by this process: authentic
                    item = seen[1]
                    data.update(serializers.loads(item) if isinstance(item, str) else item)
                else:
                    data.update(self._open_item(name, value))
            else:
                if legacy is None:
                    legacy = {}
                legacy[name] = value
        if legacy is None:
            return data, False
        legacy.update(data)  # an encrypted item is newer than the plaintext one of the same name
        return legacy, True

    def _open_item(self, field: str, value: object) -> dict[str, Any]:
        if type(value) is not str:
            raise DecryptionError(f"the item {field} holds a JSON {type(value).__name__}, not a ciphertext")
        try:
            blob = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptionError(f"the item {field} is not base64: {exc}") from None
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError(f"the item {field} is too short to be a ciphertext")
        try:
            text = self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], field.encode("ascii"))
        except self._invalid_tag:
            raise DecryptionError(f"the item {field} does not authenticate") from None
        item = serializers.loads(text)
        if len(item) != 1:
            raise DecryptionError(f"the item {field} holds {len(item)} names, not one")
        opened = self._opened
        if len(value) <= _REMEMBERED_LENGTH and (field in opened or len(opened) < _REMEMBERED_FIELDS):
            opened[field] = (value, item if type(next(iter(item.values()))) in _IMMUTABLE else text.decode())
        return item


#: The C function the encoder quotes strings with (``ensure_ascii=False``).
_quote: Callable[[str], str] = json.encoder.encode_basestring
_SPELLED = {"True": "true", "False": "false", "None": "null"}


def _item_json(name: str, value: Any) -> str:
    """``{name: value}`` as compact JSON, the text :func:`asession.serializers.dumps` writes; strings, integers,
    booleans and ``None`` without the encoder (a fifth of the cost), anything else through it."""
    kind = type(value)
    if kind is str:
        return f"{{{_quote(name)}:{_quote(value)}}}"
    if kind is int:
        return f"{{{_quote(name)}:{int.__repr__(value)}}}"
    if value is None or kind is bool:
        return f"{{{_quote(name)}:{_SPELLED[repr(value)]}}}"
    return serializers.dumps({name: value})


#: Values a remembered item may hold as they are (the others are parsed again from their JSON on every load,
#: as the session's code may change them in place).
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})
#: Remembered ciphertexts: at most this many fields per session, each at most this long (a value of about
#: 150 bytes), so the memory they take stays small for every session key in :data:`_recent`.
_REMEMBERED_FIELDS = 16
_REMEMBERED_LENGTH = 256
#: Field names one cipher remembers, at most: a session has a handful of names; a hostile app that makes
#: many cannot grow the cache without bound.
_MAX_FIELDS = 64
#: The ciphers of the session keys seen last, as :func:`asession.keys.checked` keeps their ValidKeys:
#: deriving one costs HKDF and an AES key schedule (about 6 µs), a lookup 0.05 µs. Emptied when full.
_RECENT_SIZE = 4096
_recent: dict[str, SessionCipher] = {}


def cipher_for(raw_key: str) -> SessionCipher:
    """The :class:`SessionCipher` of the session key ``raw_key`` (validated by the caller)."""
    cipher = _recent.get(raw_key)
    if cipher is None:
        cipher = SessionCipher(raw_key)
        if len(_recent) >= _RECENT_SIZE:
            _recent.clear()
        _recent[raw_key] = cipher
    return cipher


# -- the encrypted cookie ---------------------------------------------------------------------------------------

#: The first byte of every encrypted cookie: the format, authenticated as associated data.
COOKIE_VERSION = b"\x01"
COOKIE_OVERHEAD = len(COOKIE_VERSION) + NONCE_SIZE + TAG_SIZE
_COOKIE_INFO = b"asession encrypted cookie v1\x00salt="


class CookieCipher:
    """AES-256-GCM under a secret and its fallbacks: the current key seals, every key opens (newest first)."""

    __slots__ = ("_sealer", "_openers", "_invalid_tag")

    def __init__(self, secrets_newest_first: list[bytes], salt: str) -> None:
        from cryptography.exceptions import InvalidTag

        info = _COOKIE_INFO + salt.encode("utf-8", "surrogatepass")
        self._openers = [
            _aesgcm(hkdf(secret, salt=b"asession.encrypted_cookies", info=info, length=32))
            for secret in secrets_newest_first
        ]
        self._sealer = self._openers[0]
        self._invalid_tag = InvalidTag

    def seal(self, plaintext: bytes) -> bytes:
        """``version ‖ nonce ‖ ciphertext ‖ tag`` of ``plaintext``, with a fresh random nonce."""
        nonce = _nonces.take()
        return COOKIE_VERSION + nonce + self._sealer.encrypt(nonce, plaintext, COOKIE_VERSION)

    def open(self, blob: bytes) -> bytes:
        """The plaintext sealed into ``blob`` by any of the keys; :class:`DecryptionError` if none opens it.

        Every key is tried on a foreign blob (as HMAC-based signers do), so the time depends on the blob's
        length and the number of keys, never on the plaintext; GCM checks its tag in constant time.
        """
        if len(blob) < COOKIE_OVERHEAD or blob[:1] != COOKIE_VERSION:
            raise DecryptionError("not an encrypted session cookie of this version")
        nonce = blob[1 : 1 + NONCE_SIZE]
        sealed = blob[1 + NONCE_SIZE :]
        for opener in self._openers:
            try:
                return opener.decrypt(nonce, sealed, COOKIE_VERSION)
            except self._invalid_tag:
                continue
        raise DecryptionError("the cookie does not authenticate under any key")
