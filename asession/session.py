"""Session: a dict-like, synchronous-looking mapping over an async backend, with Django's semantics.

The mapping is read and written without ``await`` once :meth:`Session.load` has run; the lifecycle
(``load``, ``save``, ``create``, ``flush``, ``cycle_key``, ...) is async. Flags follow Django:
``accessed`` is set by every read, ``modified`` (with ``accessed``) by every write.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asession import expiry, serializers, users
from asession._async_accessors import _MISSING, AsyncAccessors
from asession.changes import Changes
from asession.config import SessionConfig
from asession.deadline import bounded
from asession.events import Dispatch
from asession.exceptions import SessionError
from asession.keys import ValidKey

if TYPE_CHECKING:
    from asession.backends.base import SessionBackend


__all__ = ["Session"]

_DEFAULT_CONFIG = SessionConfig()


class Session(AsyncAccessors):
    """One visitor's session: a ``dict`` whose contents live in ``backend`` under ``session_key``.

    A session created with a key must be loaded (``await session.load()``) before its mapping is
    touched, or :class:`SessionError` is raised. A malformed key is dropped at construction, and a
    well-formed key that is not stored loads as an empty session; both get a fresh key on save.

    The session records which top-level keys it set, deleted, or handed out as nested lists and dicts
    (with their JSON as loaded, to notice a change made in place). Saving a session loaded from the
    store writes only those keys, merged into what is stored now (:meth:`SessionBackend.update`), so
    parallel requests of one session keep each other's changes; :meth:`clear` replaces the whole stored
    mapping. Saving a session that is no longer stored raises :class:`~asession.exceptions.UpdateError`.
    """

    __slots__ = (
        "_backend",
        "_config",
        "_key",
        "_loaded",
        "_stored",
        "_expiry",
        "_expiry_changed",
        "_changed",
        "_removed",
        "_replace",
        "_marked",
        "_snapshots",
        "_meta",
        "_listener",
        "_headers",
        "modified",
        "accessed",
    )

    def __init__(
        self, backend: SessionBackend, session_key: str | None = None, config: SessionConfig | None = None
    ) -> None:
        # No dict.__init__(): dict.__new__ already made the empty mapping.
        self._backend = backend
        self._config = config if config is not None else _DEFAULT_CONFIG
        # The cookie's key is checked (and hashed) here, once: the backend trusts the ValidKey it made.
        self._key: ValidKey | None = None if session_key is None else backend.valid_key(session_key)
        self._loaded = self._key is None
        #: Whether a record of this session is in the store, so that a save updates it.
        self._stored = False
        self._expiry: expiry.CustomExpiry = None
        # What _reset_changes() sets, inline: a session is built on every request.
        self._expiry_changed = self._replace = self._marked = False
        self._changed: set[str] | None = None
        self._removed: set[str] | None = None
        self._snapshots: dict[str, str] | None = None
        #: Start, last activity, expiry and user agent (asession.users.META_KEY), kept beside the mapping.
        # As loaded (the stored string, decoded on first use) or as changed (a list): see _meta_list().
        self._meta: str | list[Any] | None = None
        #: Set by the middleware when someone listens to session events.
        self._listener: Dispatch | None = None
        #: The request's ASGI headers, set by the middleware: login() records the User-Agent.
        self._headers: list[tuple[bytes, bytes]] | None = None
        self.modified = False
        self.accessed = False

    def _reset_changes(self) -> None:
        """Forget what changed: keys set and deleted since the last load or save, clear() (replace the whole
        stored mapping), mark_modified(), and the JSON of each nested value handed out (to detect changes
        made in place)."""
        self._expiry_changed = self._replace = self._marked = False
        self._changed = self._removed = None
        self._snapshots = None

    # -- identity -----------------------------------------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The key stored in the cookie; ``None`` until the session is saved."""
        key = self._key
        return None if key is None else key.raw

    @property
    def backend(self) -> SessionBackend:
        """The backend that stores this session."""
        return self._backend

    @property
    def config(self) -> SessionConfig:
        """The :class:`SessionConfig` that sets the default expiry."""
        return self._config

    @property
    def is_loaded(self) -> bool:
        """Whether the mapping may be used: the session was loaded, or never had a stored key."""
        return self._loaded

    def mark_accessed(self) -> None:
        """Record that the session was read, for code that reads nested values through references."""
        self.accessed = True

    def mark_modified(self) -> None:
        """Record a change made in place to a nested value, so the middleware saves the session.

        Changes made in place to values read through the mapping's methods are found without this call.
        For values reached otherwise (``dict(session)``, ``json.dumps``), it makes the next save write every
        key the session holds.
        """
        self.accessed = True
        self.modified = True
        self._marked = True

    def detect_changes(self) -> bool:
        """Whether a nested value handed out by this session was changed in place since; sets ``modified`` if so.

        The middleware calls it to save such a change although nothing set ``modified``.
        """
        if self._snapshots is None or not self._changed_in_place():
            return False
        self.modified = True
        return True

    def _changed_in_place(self) -> list[str]:
        snapshots = self._snapshots
        if not snapshots:
            return []
        changed = self._changed or ()
        found = []
        for key, before in snapshots.items():
            if key in changed or not dict.__contains__(self, key):
                continue
            try:
                if serializers.dumps_value(dict.__getitem__(self, key)) == before:
                    continue
            except TypeError:
                pass  # it holds something JSON cannot carry now: save it, to raise the TypeError naming the key
            found.append(key)
        return found

    def _watch(self, key: str, value: Any) -> None:
        """Remember the JSON of a nested value handed out, unless this request has replaced it already."""
        snapshots = self._snapshots
        if snapshots is None:
            snapshots = self._snapshots = {}
        elif key in snapshots:
            return
        if self._changed is None or key not in self._changed:
            try:
                snapshots[key] = serializers.dumps_value(value)
            except TypeError:
                pass  # set by this request in a form JSON cannot carry: save() names it

    def _set(self, key: str) -> None:
        changed = self._changed
        if changed is None:
            self._changed = {key}
        else:
            changed.add(key)
        if self._removed is not None:
            self._removed.discard(key)

    def _remove(self, key: str) -> None:
        removed = self._removed
        if removed is None:
            self._removed = {key}
        else:
            removed.add(key)
        if self._changed is not None:
            self._changed.discard(key)

    def _check(self) -> None:
        if not self._loaded:
            raise SessionError(
                "This session has a key but was not loaded: `await session.load()` first, or use the async "
                "accessors (`await session.aget(key)`, ...), which load on demand."
            )

    def __repr__(self) -> str:
        return f"<Session key={self.session_key!r} data={dict.__repr__(self)}>"

    # -- reads --------------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._check()
        self.accessed = True
        value = dict.__getitem__(self, key)
        if type(value) is dict or type(value) is list:  # the caller may change it in place
            self._watch(key, value)
        return value

    def __contains__(self, key: object) -> bool:
        self._check()
        self.accessed = True
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._check()
        self.accessed = True
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._check()
        return dict.__len__(self)

    def get(self, key: str, default: Any = None) -> Any:
        self._check()
        self.accessed = True
        value = dict.get(self, key, default)
        if (type(value) is dict or type(value) is list) and dict.__contains__(self, key):
            self._watch(key, value)
        return value

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is in the session (kept for code ported from the original API)."""
        return key in self

    def keys(self) -> Any:
        self._check()
        self.accessed = True
        return dict.keys(self)

    def values(self) -> Any:
        self._check()
        self.accessed = True
        self._watch_all()
        return dict.values(self)

    def items(self) -> Any:
        self._check()
        self.accessed = True
        self._watch_all()
        return dict.items(self)

    def _watch_all(self) -> None:
        for key, value in dict.items(self):
            if type(value) is dict or type(value) is list:
                self._watch(key, value)

    def iterkeys(self) -> Iterator[str]:
        """An iterator over the keys (kept for code ported from the original API)."""
        return iter(self.keys())

    def itervalues(self) -> Iterator[Any]:
        """An iterator over the values (kept for code ported from the original API)."""
        return iter(self.values())

    def iteritems(self) -> Iterator[tuple[str, Any]]:
        """An iterator over the ``(key, value)`` pairs (kept for code ported from the original API)."""
        return iter(self.items())

    # -- writes -------------------------------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        self._check()
        dict.__setitem__(self, key, value)
        self.accessed = self.modified = True
        self._set(key)

    def __delitem__(self, key: str) -> None:
        self._check()
        self.accessed = True
        dict.__delitem__(self, key)
        self.modified = True
        self._remove(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        self._check()
        self.accessed = True
        if dict.__contains__(self, key):
            self.modified = True
            self._remove(key)
        if default is _MISSING:
            return dict.pop(self, key)
        return dict.pop(self, key, default)

    def popitem(self) -> tuple[str, Any]:
        self._check()
        self.accessed = True
        item = dict.popitem(self)
        self.modified = True
        self._remove(item[0])
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._check()
        self.accessed = True
        if dict.__contains__(self, key):
            value = dict.__getitem__(self, key)
            if type(value) is dict or type(value) is list:
                self._watch(key, value)
            return value
        self.modified = True
        dict.__setitem__(self, key, default)
        self._set(key)
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        other = dict(*args, **kwargs)
        dict.update(self, other)
        self.accessed = self.modified = True
        for key in other:
            self._set(key)

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        """Empty the session; its next save replaces the whole stored mapping instead of merging."""
        self._check()
        dict.clear(self)
        self.accessed = self.modified = True
        self._changed = self._removed = self._snapshots = None
        self._replace = True

    # -- async accessors (aget, aset, ...: asession/_async_accessors.py) load through this ----------

    async def _load_if_needed(self) -> None:
        if not self._loaded:
            await self.load()

    # -- lifecycle ----------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        # dict.items() reads the storage directly: saving must not flip the accessed flag.
        data = dict(dict.items(self))
        if self._expiry is not None:
            data[expiry.EXPIRY_KEY] = self._expiry
        meta = self._meta
        if meta is not None:
            data[users.META_KEY] = meta if type(meta) is str else users.encode_meta(meta)  # type: ignore[arg-type]
        return data

    def _meta_list(self) -> list[Any] | None:
        """The metadata as a list, decoded from its stored string on first use (``None`` when malformed)."""
        meta = self._meta
        if type(meta) is str:
            meta = self._meta = users.decode_meta(meta)
        return meta  # type: ignore[return-value]  # a list or None now

    async def load(self) -> None:
        """Read the session from the backend once; a no-op for a new or already loaded session.

        An unknown or expired key leaves the session empty with ``session_key`` ``None``, so the next
        save creates a fresh key and no record is created for the unknown one. Raises
        :class:`BackendUnavailableError` when the store fails; the session then stays unloaded.
        """
        if self._loaded:
            return
        backend = self._backend
        call = backend.load(self._key)  # type: ignore[arg-type]  # unloaded implies a key
        # bounded() inline for the store that never waits: this runs on every request with a cookie.
        data = await (bounded(call, self._config.store_timeout, backend) if backend.waits else call)
        if data is None:
            self._key = None
        else:
            stored_expiry = data.pop(expiry.EXPIRY_KEY, None)
            if stored_expiry is not None:
                self._expiry = expiry.parse_stored(stored_expiry)
            meta = data.pop(users.META_KEY, None)
            if type(meta) is str:  # decoded when first needed (_meta_list): this runs on every load
                self._meta = meta
            dict.update(self, data)
            self._stored = True
        self._loaded = True

    async def save(self, must_create: bool = False) -> None:
        """Persist the session, generating a fresh unique key if it has none.

        A session loaded from the store is saved as an update: only the keys this request set, deleted
        or changed in place are written, merged atomically into the session as stored now, and
        :class:`~asession.exceptions.UpdateError` is raised (nothing written) when it is no longer
        stored. A new session is created under a fresh key. Stores that cannot merge (signed cookies)
        write the whole session. An unloaded session is loaded first. With ``must_create=True`` raises
        :class:`CreateError` when the current key is already stored. Raises ``TypeError`` naming the
        offending key if the data does not survive JSON; nothing is written then.
        """
        if not self._loaded:
            await self.load()
        config = self._config
        backend = self._backend
        key = self._key
        age = self._age()
        if must_create and key is not None:
            await bounded(backend.save(key, self._snapshot(), age, must_create=True), config.store_timeout, backend)
        elif key is not None and self._stored and backend.merges:
            changes = self._changes()
            meta = self._meta_list()
            if meta is not None:
                changes.changed[users.META_KEY] = users.encode_meta(meta)  # type: ignore[index]  # built here: a dict
            call = backend.apply(key, changes, age)
            await (bounded(call, config.store_timeout, backend) if backend.waits else call)
        else:
            self._key = await self._create(age)
            self._stored = True
            self._reset_changes()
            await self._emit("created")
            return
        self._stored = True
        self._reset_changes()

    def _age(self) -> int:
        """Seconds the store keeps the session from now: Django's expiry, capped by the idle and absolute
        timeouts; also records the activity in the metadata of sessions that carry it."""
        config = self._config
        meta = self._meta_list() if self._meta is not None else None
        if meta is None:
            if not (config.tracks_activity or dict.__contains__(self, users.USER_ID_KEY)):
                return expiry.age(self._expiry, config.max_age)  # the usual session: Django's rule alone
            meta = self._meta = users.new_meta(expiry.timestamp())
        now = expiry.timestamp()
        age = self._capped_age(now)
        meta[users.SEEN] = int(now * 1000)
        meta[users.EXPIRES] = int(now) + age
        return age

    def _capped_age(self, now: float) -> int:
        """Django's expiry age, capped by ``idle_timeout`` and by what is left of ``absolute_timeout``."""
        config = self._config
        age = expiry.age(self._expiry, config.max_age)
        if config.idle_timeout is not None:
            age = min(age, config.idle_timeout)
        if config.absolute_timeout is not None:
            started = users.meta_seconds(self._meta_list(), users.STARTED)
            start = now if started is None else started
            age = min(age, int(start + config.absolute_timeout - now))
        return age

    def _changes(self) -> Changes:
        """What this request did to the session since it was loaded (or last saved)."""
        if self._replace:
            return Changes(self._snapshot(), replace=True)
        changed_keys = self._changed
        if (
            changed_keys is not None
            and self._snapshots is None
            and self._removed is None
            and not self._marked
            and not self._expiry_changed
        ):  # the usual write: keys set, nothing else to look at
            return Changes({key: dict.__getitem__(self, key) for key in changed_keys if dict.__contains__(self, key)})
        keys = set(changed_keys or ())
        keys.update(self._changed_in_place())
        removed = set(self._removed or ())
        if self._marked or (self.modified and not keys and not removed and not self._expiry_changed):
            # Changed in place where this session could not see it (mark_modified(), or `modified` set
            # by hand): every key it holds is written.
            keys.update(dict.keys(self))
        changed = {key: dict.__getitem__(self, key) for key in keys if dict.__contains__(self, key)}
        if self._expiry_changed:
            if self._expiry is None:
                removed.add(expiry.EXPIRY_KEY)
            else:
                changed[expiry.EXPIRY_KEY] = self._expiry
        return Changes(changed, frozenset(removed))

    async def exists(self, key: str) -> bool:
        """Whether a live session is stored under ``key``."""
        return await bounded(self._backend.exists(key), self._config.store_timeout, self._backend)

    async def delete(self, key: str | None = None) -> None:
        """Delete the stored session ``key`` (this session's key by default); no error if missing.

        The mapping and ``session_key`` are left as they are: use :meth:`flush` to end a session. After
        deleting its own record, the session's next save stores it under a fresh key (the deleted one is
        never brought back).
        """
        if key is None or key == self.session_key:
            await self._delete(self._key)
            self._stored = False
        else:
            await self._delete(key)

    async def _delete(self, key: str | ValidKey | None) -> None:
        if key is not None:
            await bounded(self._backend.delete(key), self._config.store_timeout, self._backend)

    async def create(self) -> None:
        """Store this session under a new unique key (an empty session for a new one)."""
        self._loaded = True
        self._key = await self._create(self._age())
        self._stored = True
        self._reset_changes()
        self.modified = True
        await self._emit("created")

    async def flush(self) -> None:
        """End the session: delete its stored data, empty the mapping and drop the key.

        Afterwards ``session_key`` is ``None``, and ``modified`` and ``accessed`` are both ``True``; the
        middleware then expires the cookie. Call it on logout.
        """
        # Not loaded first: a session never read has no known user, and its index entry, if any, is pruned
        # by the next listing once the session is gone.
        user_id = self.user_id if self._loaded else None
        key = self._key
        handle = self._handle() if self._loaded else None
        await self._end()
        if user_id is not None and key is not None:
            await self._unindex(user_id, key)
        await self._emit("flushed", handle, user_id)

    async def _end(self) -> None:
        dict.clear(self)
        self._expiry = None
        self._meta = None
        self._loaded = True
        self._stored = False
        self._reset_changes()
        self.accessed = self.modified = True
        await self.delete()
        self._key = None

    async def cycle_key(self) -> None:
        """Keep the data under a new key and delete the old record; call it on login against fixation."""
        await self._load_if_needed()
        old_key = self._key
        await self._rotate()
        user_id = self.user_id
        if user_id is not None and old_key is not None:  # the index follows the session to its new key
            await self._index(user_id)
            await self._unindex(user_id, old_key)
        await self._emit("rotated")
        await self._delete(old_key)

    async def _rotate(self) -> None:
        """Store the data under a fresh key; the old record is left for the caller to delete."""
        self._key = await self._create(self._age())
        self._stored = True
        self._reset_changes()
        self.modified = True

    # -- users (asession/users.py) ------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """The id of the user :meth:`login` bound this session to (``"_auth_user_id"``), or ``None``."""
        if not self._loaded:
            self._check()
        value = dict.get(self, users.USER_ID_KEY)
        return value if isinstance(value, str) and value else None

    async def login(self, user_id: str | int) -> None:
        """Sign ``user_id`` in: a new key (against fixation), the user bound, the absolute timeout restarted.

        Like Django's ``login()``: the data is kept when the same user (or nobody) was signed in, and
        dropped when another user was. The session is recorded in the backend's per-user index with the
        request's user agent, so :meth:`SessionBackend.user_sessions` lists it and
        :meth:`revoke_other_sessions` can end the others. Raises ``ValueError`` for a user id that is empty,
        longer than 256 characters, or neither a ``str`` nor an ``int`` (an ``int`` is stored as its string).
        """
        user_id = users.check_user_id(user_id)
        await self._load_if_needed()
        old_key, old_user = self._key, self.user_id
        if old_user is not None and old_user != user_id:
            dict.clear(self)
            self._expiry = None
        dict.__setitem__(self, users.USER_ID_KEY, user_id)
        self.accessed = True
        self._meta = users.new_meta(expiry.timestamp(), self._request_user_agent())
        await self._rotate()
        await self._index(user_id)
        if old_key is not None:
            if old_user is not None:
                await self._unindex(old_user, old_key)
            await self._delete(old_key)
        await self._emit("login")

    def _request_user_agent(self) -> str | None:
        for name, value in self._headers or ():
            if name == b"user-agent":
                return value.decode("latin-1")
        return None

    async def logout(self) -> None:
        """Sign out: end the session (as :meth:`flush`) and drop it from its user's index."""
        await self._load_if_needed()
        user_id, key = self.user_id, self._key
        handle = self._handle()
        await self._end()
        if user_id is not None and key is not None:
            await self._unindex(user_id, key)
        await self._emit("logout", handle, user_id)

    async def revoke_other_sessions(self) -> int:
        """End every other session of this session's user ("sign out my other devices"); return how many.

        0 when no user is signed in. Raises ``NotImplementedError`` on a backend without an index. In a
        request, each session ended is a ``"revoked"`` event (reported by the backend, with its id).
        """
        await self._load_if_needed()
        user_id = self.user_id
        if user_id is None:
            return 0
        key = self.session_key
        backend = self._backend
        return await bounded(backend.revoke_user_sessions(user_id, except_key=key), self._config.store_timeout, backend)

    async def _index(self, user_id: str) -> None:
        backend = self._backend
        if backend.indexes and self._key is not None:
            await bounded(backend._index_session(user_id, self._key), self._config.store_timeout, backend)

    async def _unindex(self, user_id: str, key: ValidKey) -> None:
        backend = self._backend
        if backend.indexes:
            await bounded(backend._unindex_session(user_id, key), self._config.store_timeout, backend)

    def _handle(self) -> str | None:
        """This session's public handle (:attr:`SessionInfo.id <asession.users.SessionInfo.id>`), if it has a key."""
        key = self._key
        return None if key is None else self._backend.handle(key, dict.get(self, users.USER_ID_KEY))

    async def _emit(self, kind: str, handle: str | None = None, user_id: str | None = None) -> None:
        listener = self._listener
        if listener is not None:
            if handle is None and user_id is None:
                handle, user_id = self._handle(), self.user_id
            await listener(kind, handle, user_id)

    # -- idle timeout: touching a session that a request only read ----------------------------------

    def needs_touch(self) -> bool:
        """Whether this stored session, which the request did not change, should have its idle expiry
        refreshed now: ``idle_timeout`` is set and ``touch_interval`` has passed since the last save or touch."""
        interval = self._config._touch_every
        if interval is None or not self._stored:
            return False
        meta = self._meta
        if type(meta) is str:  # as loaded: the last activity is its first field (users.encode_meta)
            try:
                seen = int(meta[: meta.index(" ")])
            except ValueError:
                return True  # unreadable: touching rewrites it
        elif type(meta) is list and type(meta[users.SEEN]) is int:
            seen = meta[users.SEEN]
        else:
            return True
        return expiry.timestamp() * 1000 - seen >= interval * 1000

    async def touch(self) -> None:
        """Refresh the idle expiry in the store and record the activity, without saving the data.

        Merges only the session's metadata (:data:`asession.users.META_KEY`) into the stored session, with
        the new expiry. Raises :class:`~asession.exceptions.UpdateError` when the session is no longer stored.
        """
        key = self._key
        if key is None or not self._stored:
            raise SessionError("Only a stored session can be touched.")
        age = self._age()
        backend = self._backend
        meta = self._meta_list()
        assert meta is not None  # _age() makes it: touches happen only with an idle timeout
        changes = Changes({users.META_KEY: users.encode_meta(meta)})
        await bounded(backend.apply(key, changes, age), self._config.store_timeout, backend)

    async def _create(self, age: int) -> ValidKey:
        """Store the data under a fresh unique key (the backend's ``create()``) and return that key."""
        backend = self._backend
        raw = await bounded(backend.create(self._snapshot(), age), self._config.store_timeout, backend)
        key = backend.valid_key(raw)
        if key is None:  # pragma: no cover - a backend handing out a key it would refuse is a bug
            raise SessionError(f"{backend!r} created the malformed key {raw!r}.")
        return key

    # -- expiry (synchronous, as in Django) ---------------------------------------------------------

    def set_expiry(self, value: expiry.ExpiryValue) -> None:
        """Set when the session expires.

        An ``int`` is seconds of inactivity (``0``: when the browser closes); a ``timedelta`` or a
        ``datetime`` (naive means local time) is a fixed moment; ``None`` goes back to the configured
        default. The choice is stored with the session. Raises ``TypeError`` for other values.
        """
        self._check()
        custom = expiry.normalize(value)
        if custom is None and self._expiry is None:
            return
        self._expiry = custom
        self._expiry_changed = True
        self.modified = True

    def get_expiry_age(self, modification: datetime | None = None) -> int:
        """Seconds from ``modification`` (default now) until the session expires.

        Django's rule (``set_expiry`` or ``max_age``), capped by ``idle_timeout`` and by what is left of
        ``absolute_timeout`` when those are set, as the store will keep it if saved now.
        """
        self._check()
        if self._config.tracks_activity:
            moment = modification or expiry.now()
            return self._capped_age(moment.timestamp())
        return expiry.age(self._expiry, self._config.max_age, modification)

    def get_expiry_date(self, modification: datetime | None = None) -> datetime:
        """The aware UTC datetime at which the session expires (with the timeouts, as :meth:`get_expiry_age`)."""
        self._check()
        if self._config.tracks_activity:
            moment = modification or expiry.now()
            return moment + timedelta(seconds=self._capped_age(moment.timestamp()))
        return expiry.date(self._expiry, self._config.max_age, modification)

    def get_expire_at_browser_close(self) -> bool:
        """Whether the cookie should last only until the browser closes."""
        self._check()
        return expiry.expires_at_browser_close(self._expiry, self._config.expire_at_browser_close)

    def cookie_lifetime(self) -> tuple[int, int] | None:
        """``(Max-Age, Expires as a Unix second)`` for the cookie sent now; ``None`` for a browser-session cookie.

        The middleware builds ``Set-Cookie`` from it after a save.
        """
        if expiry.expires_at_browser_close(self._expiry, self._config.expire_at_browser_close):
            return None
        expires = users.meta_seconds(self._meta_list(), users.EXPIRES)
        if expires is not None:
            # The store's expiry, capped by the idle and absolute timeouts: the cookie ends with the session.
            return max(int(expires - expiry.timestamp()), 0), int(expires)
        return expiry.cookie_lifetime(self._expiry, self._config.max_age)
