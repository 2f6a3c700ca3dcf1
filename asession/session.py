"""Session: a dict-like, synchronous-looking mapping over an async backend, with Django's semantics.

The mapping is read and written without ``await`` once :meth:`Session.load` has run; the lifecycle
(``load``, ``save``, ``create``, ``flush``, ``cycle_key``, ...) is async. Flags follow Django:
``accessed`` is set by every read, ``modified`` (with ``accessed``) by every write.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asession import expiry
from asession._async_accessors import _MISSING, AsyncAccessors
from asession.config import SessionConfig
from asession.exceptions import SessionError

if TYPE_CHECKING:
    from asession.backends.base import SessionBackend

__all__ = ["Session"]

_DEFAULT_CONFIG = SessionConfig()


class Session(AsyncAccessors):
    """One visitor's session: a ``dict`` whose contents live in ``backend`` under ``session_key``.

    A session created with a key must be loaded (``await session.load()``) before its mapping is
    touched, or :class:`SessionError` is raised. A malformed key is dropped at construction, and a
    well-formed key that is not stored loads as an empty session; both get a fresh key on save.
    """

    __slots__ = ("_backend", "_config", "_session_key", "_loaded", "_expiry", "modified", "accessed")

    def __init__(
        self, backend: SessionBackend, session_key: str | None = None, config: SessionConfig | None = None
    ) -> None:
        # No dict.__init__(): dict.__new__ already made the empty mapping.
        self._backend = backend
        self._config = config if config is not None else _DEFAULT_CONFIG
        if session_key is not None and not backend.accepts_key(session_key):
            session_key = None
        self._session_key: str | None = session_key
        self._loaded = session_key is None
        self._expiry: expiry.CustomExpiry = None
        self.modified = False
        self.accessed = False

    # -- identity -----------------------------------------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The key stored in the cookie; ``None`` until the session is saved."""
        return self._session_key

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
        """Record a change made in place to a nested value, so the middleware saves the session."""
        self.accessed = True
        self.modified = True

    def _check(self) -> None:
        if not self._loaded:
            raise SessionError(
                "This session has a key but was not loaded: `await session.load()` first, or use the async "
                "accessors (`await session.aget(key)`, ...), which load on demand."
            )

    def __repr__(self) -> str:
        return f"<Session key={self._session_key!r} data={dict.__repr__(self)}>"

    # -- reads --------------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._check()
        self.accessed = True
        return dict.__getitem__(self, key)

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
        return dict.get(self, key, default)

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
        return dict.values(self)

    def items(self) -> Any:
        self._check()
        self.accessed = True
        return dict.items(self)

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

    def __delitem__(self, key: str) -> None:
        self._check()
        self.accessed = True
        dict.__delitem__(self, key)
        self.modified = True

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        self._check()
        self.accessed = True
        self.modified = self.modified or dict.__contains__(self, key)
        if default is _MISSING:
            return dict.pop(self, key)
        return dict.pop(self, key, default)

    def popitem(self) -> tuple[str, Any]:
        self._check()
        self.accessed = True
        item = dict.popitem(self)
        self.modified = True
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._check()
        self.accessed = True
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        self.modified = True
        dict.__setitem__(self, key, default)
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._check()
        dict.update(self, *args, **kwargs)
        self.accessed = self.modified = True

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        self._check()
        dict.clear(self)
        self.accessed = self.modified = True

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
        return data

    async def load(self) -> None:
        """Read the session from the backend once; a no-op for a new or already loaded session.

        An unknown or expired key leaves the session empty with ``session_key`` ``None``, so the next
        save creates a fresh key and no record is created for the unknown one. Raises
        :class:`BackendUnavailableError` when the store fails; the session then stays unloaded.
        """
        if self._loaded:
            return
        data = await self._backend.load(self._session_key)  # type: ignore[arg-type]  # unloaded implies a key
        if data is None:
            self._session_key = None
        else:
            stored_expiry = data.pop(expiry.EXPIRY_KEY, None)
            if stored_expiry is not None:
                self._expiry = expiry.parse_stored(stored_expiry)
            dict.update(self, data)
        self._loaded = True

    async def save(self, must_create: bool = False) -> None:
        """Persist the session, generating a fresh unique key if it has none.

        An unloaded session is loaded first, so stored data is never overwritten by an empty mapping.
        With ``must_create=True`` raises :class:`CreateError` when the current key is already stored.
        Raises ``TypeError`` naming the offending key if the data does not survive JSON; nothing is
        written then.
        """
        if not self._loaded:
            await self.load()
        data = self._snapshot()
        age = expiry.age(self._expiry, self._config.max_age)
        if must_create and self._session_key is not None:
            await self._backend.save(self._session_key, data, age, must_create=True)
        else:
            self._session_key = await self._backend.store(self._session_key, data, age)

    async def exists(self, key: str) -> bool:
        """Whether a live session is stored under ``key``."""
        return await self._backend.exists(key)

    async def delete(self, key: str | None = None) -> None:
        """Delete the stored session ``key`` (this session's key by default); no error if missing.

        The mapping and ``session_key`` are left as they are: use :meth:`flush` to end a session.
        """
        if key is None:
            key = self._session_key
            if key is None:
                return
        await self._backend.delete(key)

    async def create(self) -> None:
        """Store this session under a new unique key (an empty session for a new one)."""
        self._loaded = True
        self._session_key = await self._backend.store(None, self._snapshot(), self.get_expiry_age())
        self.modified = True

    async def flush(self) -> None:
        """End the session: delete its stored data, empty the mapping and drop the key.

        Afterwards ``session_key`` is ``None``, and ``modified`` and ``accessed`` are both ``True``; the
        middleware then expires the cookie. Call it on logout.
        """
        dict.clear(self)
        self._expiry = None
        self._loaded = True
        self.accessed = self.modified = True
        await self.delete()
        self._session_key = None

    async def cycle_key(self) -> None:
        """Keep the data under a new key and delete the old record; call it on login against fixation."""
        await self._load_if_needed()
        old_key = self._session_key
        self._session_key = await self._backend.store(None, self._snapshot(), self.get_expiry_age())
        self.modified = True
        if old_key is not None:
            await self._backend.delete(old_key)

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
        self.modified = True

    def get_expiry_age(self, modification: datetime | None = None) -> int:
        """Seconds from ``modification`` (default now) until the session expires."""
        self._check()
        return expiry.age(self._expiry, self._config.max_age, modification)

    def get_expiry_date(self, modification: datetime | None = None) -> datetime:
        """The aware UTC datetime at which the session expires."""
        self._check()
        return expiry.date(self._expiry, self._config.max_age, modification)

    def get_expire_at_browser_close(self) -> bool:
        """Whether the cookie should last only until the browser closes."""
        self._check()
        return expiry.expires_at_browser_close(self._expiry, self._config.expire_at_browser_close)

    def _cookie_lifetime(self) -> tuple[int, int] | None:
        """``(Max-Age, Expires as a Unix second)`` for the cookie set now; ``None`` for a browser-session cookie."""
        if expiry.expires_at_browser_close(self._expiry, self._config.expire_at_browser_close):
            return None
        return expiry.cookie_lifetime(self._expiry, self._config.max_age)
