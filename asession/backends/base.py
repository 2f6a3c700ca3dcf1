"""SessionBackend: the abstract async storage every backend implements.

A backend is long-lived and shared by all requests. Its public coroutines (:meth:`~SessionBackend.load`,
:meth:`~SessionBackend.save`, ...) hold everything backends have in common: the open/closed state, key
validation, SHA-256 hashing of keys for server-side stores, JSON encoding, the size limit, logging of
corrupt data and the translation of storage failures into :class:`BackendUnavailableError`. Each backend
only implements the underscore methods, which see the hashed storage key and the JSON text.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from asession import encryption, events, keys, serializers, users
from asession.changes import Changes
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured, SessionError, UpdateError

if TYPE_CHECKING:
    import sys

    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

__all__ = ["DEFAULT_MAX_SIZE", "BackendState", "SessionBackend"]

#: The largest serialized session a backend stores or loads, in bytes (1 MiB).
DEFAULT_MAX_SIZE = 1024 * 1024
_CREATE_ATTEMPTS = 10
#: Plaintext sessions one backend remembers between their load and their save (see ``_decrypt``).
_PLAINTEXT_LOADED_SIZE = 4096
T = TypeVar("T")

security_logger = logging.getLogger("asession.security")


def _raw(key: str | keys.ValidKey) -> str:
    """The session key itself (what the cookie holds), from a key checked by ``_skey``."""
    return key.raw if type(key) is keys.ValidKey else key  # type: ignore[return-value]


class BackendState(enum.Enum):
    """Where a backend is in its life: UNOPENED until :meth:`SessionBackend.open`, then OPEN, then CLOSED."""

    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


class SessionBackend(ABC):
    """Abstract async session storage.

    Open it with ``async with backend:`` or ``await backend.open()`` and close it with
    ``await backend.close()`` (idempotent); a closed backend may be opened again. Every storage
    coroutine raises :class:`SessionError` when the backend is not open, and
    :class:`BackendUnavailableError` (chained to the original exception) when the store fails.

    ``max_size`` bounds the serialized size of one session: saving more raises :class:`SessionError`
    and stored data over the limit loads as ``None`` and is logged on ``asession.security``.

    ``encrypt_at_rest=True`` (server-side stores only; needs the ``crypto`` extra) stores each item of the
    data encrypted with keys derived from the raw session key, which the store never sees
    (:mod:`asession.encryption`): a dump then holds neither cookies nor data, only the per-user index's
    metadata and user id. ``max_size`` then bounds the encrypted form, about 4/3 of the JSON plus 60 bytes per
    item. Sessions stored before it was turned on still load, and are encrypted by their next save.
    """

    #: Server-side stores keep ``sha256(key)`` instead of the key, so a dump reveals no usable cookie.
    hashes_keys: ClassVar[bool] = True
    #: The store drops expired entries by itself (a TTL), so :meth:`clear_expired` has nothing to do.
    expires_by_itself: ClassVar[bool] = False
    #: The store merges a request's changes into the stored session (:meth:`update`). ``False`` for
    #: stores whose data travels in the cookie, where the last save wins.
    merges: ClassVar[bool] = True
    #: A cancelled call of this store ends at once. ``False`` where the driver cleans up first, talking to
    #: the server (asyncpg): a call past ``store_timeout`` is then abandoned instead of waited for
    #: (:mod:`asession.deadline`).
    prompt_cancellation: bool = True
    #: Calls of this store may wait (on a server, a lock, a disk). ``False`` for stores that answer without
    #: ever waiting (memory, signed cookies): they have nothing for ``store_timeout`` to bound, and skip the
    #: watchdog on every request. A subclass of those whose calls do wait must set it back to ``True``.
    waits: bool = True
    #: The backend keeps a per-user index of sessions (``user_sessions``, revocation). ``False`` for stores
    #: whose data travels in the cookie, which the server can neither list nor end.
    indexes: ClassVar[bool] = True

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE, encrypt_at_rest: bool = False) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
            raise ValueError(f"max_size must be a positive number of bytes, not {max_size!r}.")
        self.max_size = max_size
        self._state = BackendState.UNOPENED
        if encrypt_at_rest:
            if not self.hashes_keys:
                raise ImproperlyConfigured(
                    f"{type(self).__name__} keeps its sessions in the cookie: encrypt_at_rest is for server-side "
                    "stores. Use EncryptedCookieBackend for a cookie the visitor cannot read."
                )
            encryption.require_cryptography(f"{type(self).__name__}(encrypt_at_rest=True)")
        #: Whether the data is stored encrypted under keys derived from the raw session key.
        self.encrypt_at_rest = bool(encrypt_at_rest)
        #: Storage keys of sessions loaded with plaintext items (stored before encrypt_at_rest was on), for
        #: their next save to encrypt. Emptied when full: a forgotten one is found again by its next load.
        self._plaintext_loaded: dict[str, bool] = {}

    @classmethod
    def from_url(cls, url: str) -> SessionBackend:
        """Build this backend from a URL; :func:`~asession.backends.backend_from_url` calls it.

        Backends that have a URL form override this; the others raise :class:`ImproperlyConfigured`.
        """
        raise ImproperlyConfigured(f"{cls.__name__} cannot be built from a URL such as {url!r}.")

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def state(self) -> BackendState:
        """The backend's :class:`BackendState`."""
        return self._state

    @property
    def is_open(self) -> bool:
        """``True`` between :meth:`open` and :meth:`close`."""
        return self._state is BackendState.OPEN

    async def open(self) -> None:
        """Acquire connections, files or pools. Does nothing when already open.

        Raises :class:`ImproperlyConfigured` or :class:`BackendUnavailableError` (naming the server,
        password hidden) when the store cannot be reached.
        """
        if self._state is BackendState.OPEN:
            return
        await self._open()
        self._state = BackendState.OPEN

    async def close(self) -> None:
        """Release what :meth:`open` acquired. Safe to call more than once, or on an unopened backend."""
        if self._state is not BackendState.OPEN:
            self._state = BackendState.CLOSED
            return
        self._state = BackendState.CLOSED
        await self._close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._state is not BackendState.OPEN:
            when = "before open()" if self._state is BackendState.UNOPENED else "after close()"
            raise SessionError(
                f"{type(self).__name__} was used {when}. Open it with `async with backend:` or "
                "`await backend.open()`, or hand it unopened to SessionMiddleware, which opens it on startup."
            )

    # -- keys ---------------------------------------------------------------------------------------

    def accepts_key(self, key: object) -> bool:
        """Tell whether ``key`` is well-formed for this backend. Malformed keys never reach the store."""
        return keys.is_valid_key(key)

    def _storage_key(self, key: str) -> str:
        return keys.storage_key(key) if self.hashes_keys else key

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Whether keys follow the server-side rule of asession.keys, whose checked() remembers recent keys.
        cls._standard_keys = cls.hashes_keys and cls.accepts_key is SessionBackend.accepts_key

    _standard_keys: ClassVar[bool] = True

    def valid_key(self, key: object) -> keys.ValidKey | None:
        """``key`` checked and hashed once, for the session to hand back on every call; ``None`` if malformed."""
        if self._standard_keys:
            return keys.checked(key)
        if not self.accepts_key(key):
            return None
        raw: str = key  # type: ignore[assignment]  # accepts_key() admits only str
        return keys.ValidKey(raw, keys.storage_key(raw) if self.hashes_keys else raw, self.hashes_keys)

    def _skey(self, key: str | keys.ValidKey) -> str | None:
        """The storage key of ``key``, or ``None`` when it is malformed (a :class:`ValidKey` is trusted)."""
        if type(key) is keys.ValidKey and key.hashed is self.hashes_keys:
            return key.skey
        if not self.accepts_key(key):
            return None
        return self._storage_key(key)  # type: ignore[arg-type]  # accepts_key() admits only str

    # -- storage ------------------------------------------------------------------------------------

    async def load(self, key: str | keys.ValidKey) -> dict[str, Any] | None:
        """Return the dict that :meth:`save` stored under ``key``.

        Returns ``None`` when the key is malformed, unknown or expired, and when the stored data is
        corrupt or over ``max_size`` (logged as a warning on ``asession.security``).
        """
        if self._state is not BackendState.OPEN:
            self._check_open()
        skey = self._skey(key)
        if skey is None:
            return None
        try:
            raw = await self._load(skey)
        except SessionError:
            raise
        except Exception as exc:
            raise self._unavailable("load a session", exc) from exc
        if raw is None:
            return None
        if self.encrypt_at_rest:
            return self._decrypt(key, skey, raw)
        return self._decode(raw)

    def _decode(self, raw: str | bytes) -> dict[str, Any] | None:
        if len(raw) > self.max_size:
            security_logger.warning(
                "%s: stored session of %d bytes exceeds max_size=%d; treated as empty.",
                type(self).__name__,
                len(raw),
                self.max_size,
            )
            return None
        try:
            return serializers.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            security_logger.warning("%s: session data corrupted (%s); treated as empty.", type(self).__name__, exc)
            return None

    def _encode(self, data: Mapping[str, Any]) -> str:
        payload = serializers.dumps(data)
        if len(payload) > self.max_size:
            raise SessionError(
                f"The session is {len(payload)} bytes once serialized, over the limit of {self.max_size} bytes. "
                "Store less in the session, or raise the backend's max_size."
            )
        return payload

    # -- encryption at rest (asession/encryption.py) ------------------------------------------------

    def _decrypt(self, key: str | keys.ValidKey, skey: str, raw: str | bytes) -> dict[str, Any] | None:
        """The data of an encrypted stored session; ``None`` (logged) when any item fails to authenticate."""
        stored = self._decode(raw)
        if stored is None:
            return None
        try:
            data, plaintext = encryption.cipher_for(_raw(key)).open(stored)
        except (ValueError, UnicodeDecodeError) as exc:
            security_logger.warning(
                "%s: encrypted session data does not authenticate (%s); treated as empty.", type(self).__name__, exc
            )
            return None
        if plaintext:  # stored before encrypt_at_rest was on: the next save encrypts it
            found = self._plaintext_loaded
            if len(found) >= _PLAINTEXT_LOADED_SIZE:
                found.clear()
            found[skey] = True
        return data

    async def _upgrade_changes(self, key: str | keys.ValidKey, skey: str, changes: Changes) -> Changes:
        """``changes`` on the encrypted items of a session loaded with plaintext items, and their encryption.

        The plaintext items are read again here, just before the merge, and written encrypted by it (their
        plaintext removed) unless the request changed them: a parallel request's change to one of them made
        between this read and the merge would be undone, once, on the first save after encryption was
        turned on. Items already encrypted are never rewritten but by their own changes.
        """
        self._plaintext_loaded.pop(skey, None)
        cipher = encryption.cipher_for(_raw(key))
        if changes.replace:
            return cipher.seal_changes(changes)
        raw = await self._load(skey)
        stored = None if raw is None else self._decode(raw)
        if stored is None:
            return cipher.seal_changes(changes)  # gone or corrupt: the merge refuses it
        return cipher.upgrade(stored, changes)

    async def save(
        self, key: str | keys.ValidKey, data: Mapping[str, Any], expiry_age: int, must_create: bool = False
    ) -> None:
        """Store ``data`` under ``key`` for ``expiry_age`` seconds, replacing what was there.

        With ``must_create=True`` the write happens only if ``key`` is not stored yet, atomically, and
        :class:`CreateError` is raised otherwise. A non-positive ``expiry_age`` stores nothing and
        forgets the key. Raises ``TypeError`` naming the offending key when the data does not survive
        JSON, :class:`SessionError` for a malformed key or data over ``max_size``; in each case nothing
        is written.
        """
        self._check_open()
        skey = self._skey(key)
        if skey is None:
            raise SessionError(f"Refusing to store a session under the malformed key {key!r}.")
        if self.encrypt_at_rest:
            data = encryption.cipher_for(_raw(key)).seal(data)
            self._plaintext_loaded.pop(skey, None)  # the whole record is replaced: nothing plaintext is left
        payload = self._encode(data)
        try:
            if expiry_age <= 0:
                await self._delete(skey)
                return
            await self._save(skey, payload, int(expiry_age), must_create)
        except SessionError:
            raise
        except Exception as exc:
            raise self._unavailable("save a session", exc) from exc

    async def update(
        self,
        key: str | keys.ValidKey,
        changed: Mapping[str, Any],
        removed: Iterable[str],
        expiry_age: int,
        *,
        replace: bool = False,
    ) -> None:
        """Merge a request's changes into the session stored under ``key``, atomically, and refresh its expiry.

        ``changed`` maps keys to their new values, ``removed`` lists keys to delete; keys in neither keep
        what is stored *now*, whatever a parallel request wrote since this one loaded. ``replace=True``
        stores exactly ``changed`` instead (a request that cleared the session). The read, the merge and
        the write are one atomic step in the store, never a read and a later write across an await.

        Raises :class:`UpdateError`, writing nothing, when no live session is stored under ``key``
        (flushed, rotated, revoked or expired since it was loaded, or corrupt: logged on
        ``asession.security``); ``TypeError`` naming the key when a value does not survive JSON, and
        :class:`SessionError` when the merged session would exceed ``max_size``, before anything is
        written. A non-positive ``expiry_age`` forgets the session, as :meth:`save` does.
        """
        return await self.apply(
            key,
            Changes(
                changed if type(changed) is dict else dict(changed),
                removed if type(removed) is frozenset else frozenset(removed),
                replace,
            ),
            expiry_age,
        )

    async def apply(self, key: str | keys.ValidKey, changes: Changes, expiry_age: int) -> None:
        """:meth:`update` with the changes as one :class:`~asession.changes.Changes`: what a session's save calls.

        Same atomic merge, errors and expiry rule as :meth:`update`; ``changes.changed`` must be a ``dict``
        and ``changes.removed`` a ``frozenset``.
        """
        if self._state is not BackendState.OPEN:
            self._check_open()
        skey = self._skey(key)
        if skey is None:
            raise UpdateError(f"No session can be stored under the malformed key {key!r}; nothing was written.")
        try:
            if expiry_age <= 0:
                await self._delete(skey)
                return
            if self.encrypt_at_rest:
                if self._plaintext_loaded and skey in self._plaintext_loaded:
                    changes = await self._upgrade_changes(key, skey, changes)
                else:
                    changes = encryption.cipher_for(_raw(key)).seal_changes(changes)
            await self._update(skey, changes, int(expiry_age))
        except (SessionError, TypeError):
            # TypeError: a value JSON cannot carry, named by the merge's encoding before anything is written.
            raise
        except Exception as exc:
            raise self._unavailable("update a session", exc) from exc

    def _merge(self, raw: str | bytes | None, changes: Changes) -> str:
        """The payload to store: the stored ``raw`` payload with ``changes`` applied.

        For backends that merge in Python inside their atomic step. Raises :class:`UpdateError` when
        ``raw`` is ``None`` or unreadable (logged on ``asession.security``: a corrupt session is never
        half-merged) and :class:`SessionError` when the result exceeds ``max_size``.
        """
        current = None if raw is None else self._decode(raw)
        if current is None:
            raise self._gone()
        return self._encode(changes.apply(current))

    def _gone(self) -> UpdateError:
        return UpdateError(
            f"No live session is stored under this key in {self!r}: it was flushed, rotated, revoked or expired "
            "after it was loaded. Nothing was written."
        )

    async def exists(self, key: str | keys.ValidKey) -> bool:
        """Tell whether a live (unexpired) session is stored under ``key``."""
        self._check_open()
        skey = self._skey(key)
        if skey is None:
            return False
        try:
            return await self._exists(skey)
        except SessionError:
            raise
        except Exception as exc:
            raise self._unavailable("check a session", exc) from exc

    async def delete(self, key: str | keys.ValidKey) -> None:
        """Forget the session stored under ``key``; no error when there is none."""
        self._check_open()
        skey = self._skey(key)
        if skey is None:
            return
        try:
            await self._delete(skey)
        except SessionError:
            raise
        except Exception as exc:
            raise self._unavailable("delete a session", exc) from exc

    # -- users: the per-user index (asession/users.py) ------------------------------------------------

    def _check_indexes(self) -> None:
        self._check_open()
        if not self.indexes:
            raise NotImplementedError(
                f"{type(self).__name__} keeps no per-user index: its sessions live in the visitors' cookies, so "
                "the server cannot list or end them. Use a server-side backend for login tracking and revocation."
            )

    async def user_sessions(self, user_id: str | int) -> list[users.SessionInfo]:
        """The live sessions of ``user_id`` (bound by :meth:`Session.login`), newest first.

        Costs one read of the user's index and one per session of that user, whatever the size of the
        store; entries of sessions that ended are pruned on the way. Raises ``ValueError`` for an invalid
        user id, ``NotImplementedError`` on a backend without an index (signed cookies).
        """
        user = users.check_user_id(user_id)
        self._check_indexes()
        return await self._users_call("list a user's sessions", users.sessions(self, user))

    async def revoke_user_sessions(self, user_id: str | int, *, except_key: str | None = None) -> int:
        """End every session of ``user_id`` (but the one whose key is ``except_key``); return how many ended.

        Called while a :class:`~asession.SessionMiddleware` with ``on_event`` serves a request, each session
        ended is reported to it as a ``"revoked"`` event (:mod:`asession.events`).
        """
        user = users.check_user_id(user_id)
        self._check_indexes()
        except_skey = None if except_key is None else self._skey(except_key)
        if except_key is not None and except_skey is None:
            # Not silently "no exception": that would end the very session the caller meant to keep.
            raise ValueError(f"except_key {except_key!r} is not a session key of this backend; nothing was revoked.")
        ended = await self._users_call("revoke a user's sessions", users.revoke_user(self, user, except_skey))
        await events.report_revoked(ended, user)
        return len(ended)

    async def revoke_session(self, session_id: str) -> bool:
        """End the session whose :attr:`SessionInfo.id <asession.users.SessionInfo.id>` is ``session_id``.

        Returns whether a live session was there (``False`` for an unknown or malformed id). A live one is
        reported as a ``"revoked"`` event, as :meth:`revoke_user_sessions` reports those it ends.
        """
        self._check_indexes()
        live = await self._users_call("revoke a session", users.revoke_handle(self, session_id))
        if live:
            await events.report_revoked([session_id], users.user_of_handle(session_id))
        return live

    async def _index_session(self, user_id: str, key: str | keys.ValidKey) -> str:
        """Record the session stored under ``key`` in ``user_id``'s index (login); return its handle."""
        self._check_indexes()
        skey = self._skey(key)
        if skey is None:
            raise SessionError(f"Refusing to index the malformed key {key!r}.")
        return await self._users_call("index a session", users.add(self, user_id, skey))

    async def _unindex_session(self, user_id: str, key: str | keys.ValidKey) -> None:
        """Drop the session stored under ``key`` from ``user_id``'s index (logout)."""
        skey = self._skey(key)
        if skey is not None and self.indexes:
            await self._users_call(
                "unindex a session", users.remove(self, user_id, [users.session_handle(user_id, skey)])
            )

    def handle(self, key: str | keys.ValidKey, user_id: str | None = None) -> str | None:
        """The public handle (:attr:`SessionInfo.id`) of the session under ``key``; ``None`` when malformed."""
        skey = self._skey(key)
        return None if skey is None else users.session_handle(user_id, skey)

    async def _users_call(self, action: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except (SessionError, ValueError, TypeError):
            raise
        except Exception as exc:
            raise self._unavailable(action, exc) from exc

    async def clear_expired(self) -> int:
        """Remove expired sessions and return how many; 0 for stores that expire entries by themselves."""
        self._check_open()
        try:
            return await self._clear_expired()
        except SessionError:
            raise
        except Exception as exc:
            raise self._unavailable("clear expired sessions", exc) from exc

    async def create(self, data: Mapping[str, Any], expiry_age: int) -> str:
        """Store ``data`` under a fresh unique key and return the key (Django's ``create()``).

        The key is written with ``must_create=True``, retrying on the (astronomically rare) collision.
        Backends whose key *is* the data (signed cookies) return the new payload instead.
        """
        for _ in range(_CREATE_ATTEMPTS):
            key = keys.new_key()
            try:
                await self.save(key, data, expiry_age, must_create=True)
            except CreateError:
                continue
            return key
        raise SessionError(f"{self!r} reported every one of {_CREATE_ATTEMPTS} fresh random keys as taken.")

    def _unavailable(self, action: str, exc: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(f"{self!r} could not {action}: {type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"

    def _describe(self) -> str:
        """A short description for errors and logs: a path or URL, never a password."""
        return self._state.name.lower()

    # -- what each backend implements -------------------------------------------------------------

    async def _open(self) -> None:  # noqa: B027 - optional hook, most backends have something to open
        """Acquire resources. The default has nothing to acquire."""

    async def _close(self) -> None:  # noqa: B027
        """Release what :meth:`_open` acquired."""

    @abstractmethod
    def _load(self, skey: str) -> Awaitable[str | bytes | None]:
        """Return the JSON text stored under the storage key ``skey``, or ``None`` if missing or expired.

        Usually a coroutine; a backend may hand back its driver's awaitable as it is, which spares every
        load a coroutine frame.
        """

    @abstractmethod
    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        """Store ``payload`` under ``skey`` for ``expiry_age`` (> 0) seconds.

        With ``must_create`` the write must be atomic with the existence check and raise
        :class:`CreateError` when ``skey`` is already stored and live.
        """

    @abstractmethod
    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None:
        """Apply ``changes`` to the live session under ``skey`` and refresh its expiry, in one atomic step.

        Raise :class:`UpdateError` (``self._gone()``) when no live session is stored, writing nothing.
        Return the new payload when the backend built it (``self._merge``), ``None`` otherwise.
        """

    @abstractmethod
    async def _exists(self, skey: str) -> bool:
        """Whether a live session is stored under ``skey``."""

    @abstractmethod
    async def _delete(self, skey: str) -> None:
        """Forget ``skey``; no error when missing."""

    @abstractmethod
    async def _clear_expired(self) -> int:
        """Remove expired entries and return how many."""
