"""CachedDatabaseBackend: a write-through cache in front of a DatabaseBackend, as Django's ``cached_db``.

The database is the truth; the cache only saves reads. The backend composes the two through their
public seams: the database's SQL driver (``db.driver``, :class:`asession.backends.sql.Driver`), which
works on storage keys and JSON text, and the cache's plain text entries (``cache.entries``,
:class:`asession.backends.cache.CacheStore`). A key is validated and hashed once, by this backend.

A cache entry is ``"<expire_at>|<payload>"``: the payload together with the expiry timestamp the
database has. An entry read back past that timestamp (by :func:`asession.expiry.now`) is a miss, so a
cached session never outlives its database row, whatever clock the cache's own TTL follows.

**A cached copy never hides a newer write or a delete**, also across processes sharing the cache:

- A save or update writes the database, then *overwrites* the cache entry with the new payload.
- A delete removes the row, then overwrites the entry with a *delete marker* for
  :data:`DELETE_MARKER_TTL` seconds: a marker reads as a miss.
- A read that missed the cache refills it only with ``add`` (only if no entry exists, atomically) and
  only if its database read began less than :data:`REFILL_WINDOW` seconds earlier. A refill racing a
  write or a delete therefore either lands first and is overwritten, or finds the newer entry (or the
  marker) in place and adds nothing. This closes the race of two workers where one reads the row just
  before the other deletes it and then refills the cache with the logged-out session.
- A save, update or delete the cache could not follow still goes to the database, and the key is
  remembered as *outdated*: until this process has deleted those entries from the cache, it reads
  nothing from the cache, and it deletes them as soon as the cache answers again.

What remains: another process sharing the cache may serve a copy made outdated during a cache outage
until this process has removed it (normally within its next request); and a cache that evicts a delete
marker within :data:`REFILL_WINDOW` of writing it, while a read of the same session races the delete,
could let that read refill the deleted session.
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar

from asession import expiry
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.backends.cache import CacheBackend, CacheStore
from asession.backends.db import DatabaseBackend
from asession.changes import Changes
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError

__all__ = [
    "DELETE_MARKER",
    "DELETE_MARKER_TTL",
    "ENTRY_PREFIX",
    "MAX_OUTDATED",
    "REFILL_WINDOW",
    "CachedDatabaseBackend",
]

logger = logging.getLogger(__name__)

#: The prefix of this backend's cache entries, clear of the cache backend's own sessions (``asession:<skey>``).
ENTRY_PREFIX = "asession:cached:"
#: How many storage keys changed during a cache outage one process remembers, at most (64 bytes each).
MAX_OUTDATED = 100_000
#: What a deleted session's cache entry holds, so that no racing read refills it.
DELETE_MARKER = "deleted"
#: Seconds a delete marker stays in the cache: far longer than any refill may take (REFILL_WINDOW).
DELETE_MARKER_TTL = 60
#: A read refills the cache only if its database read began at most this many seconds before.
REFILL_WINDOW = 1.0


class CachedDatabaseBackend(SessionBackend):
    """Read sessions from a cache, falling back to a database; write and delete through both.

    ``db`` is a :class:`~asession.backends.db.DatabaseBackend`, ``cache`` a
    :class:`~asession.backends.cache.CacheBackend` (``memory://``, Redis or memcached). A read that
    misses the cache loads the database row and refills the cache for the row's remaining lifetime. A
    save writes the database, then caches the new data; ``must_create`` is decided by the database,
    atomically; an update is merged by the database, atomically, and the cache follows with the result.
    A delete removes the row, then marks the cached copy deleted. See the module's docstring for why a
    cached copy never hides a newer write or a delete.

    A failing cache is logged as a warning on ``asession.backends.cached_db`` and otherwise survived:
    sessions are read from and written to the database alone. Keys written meanwhile are remembered
    and removed from the cache when it is back, before this process reads from it again. A failing
    database raises :class:`~asession.exceptions.BackendUnavailableError`. :meth:`open` opens whichever
    of the two backends is not open yet, and :meth:`close` closes only those.
    """

    hashes_keys: ClassVar[bool] = True
    expires_by_itself: ClassVar[bool] = False

    def __init__(
        self,
        db: DatabaseBackend,
        cache: CacheBackend,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        encrypt_at_rest: bool = False,
    ) -> None:
        super().__init__(max_size=max_size, encrypt_at_rest=encrypt_at_rest)
        if not isinstance(db, DatabaseBackend):
            raise ImproperlyConfigured(
                f"CachedDatabaseBackend needs a DatabaseBackend as its db, not {db!r}. Use e.g. "
                "CachedDatabaseBackend(DatabaseBackend('sessions.db'), CacheBackend('redis://127.0.0.1:6379/0'))."
            )
        if not isinstance(cache, CacheBackend):
            raise ImproperlyConfigured(
                f"CachedDatabaseBackend needs a CacheBackend as its cache (memory://, redis:// or memcached://), "
                f"not {cache!r}."
            )
        self.db = db
        self.cache = cache
        self.prompt_cancellation = db.prompt_cancellation and cache.prompt_cancellation
        self._opened_here: list[SessionBackend] = []
        #: Storage keys whose cache entry may be older than the database, to delete once the cache answers.
        self._outdated: set[str] = set()

    def _describe(self) -> str:
        return f"{self.db!r} cached in {self.cache!r}"

    async def _open(self) -> None:
        opened: list[SessionBackend] = []
        try:
            for inner in (self.db, self.cache):
                if not inner.is_open:
                    await inner.open()
                    opened.append(inner)
        except BaseException:
            for backend in reversed(opened):
                await backend.close()
            raise
        self._opened_here = opened

    async def _close(self) -> None:
        opened, self._opened_here = self._opened_here, []
        if self._outdated and self.cache.is_open:
            await self._remove_outdated()  # last chance; failures are logged
        try:
            if self.cache in opened:
                await self.cache.close()
        finally:
            if self.db in opened:
                await self.db.close()

    def _db(self) -> DatabaseBackend:
        if not self.db.is_open:
            raise SessionError(f"The database of {self!r} was closed by its owner; open it again first.")
        return self.db

    # -- storage ----------------------------------------------------------------------------------

    async def _load(self, skey: str) -> str | None:
        driver = self._db().driver
        now = expiry.timestamp()
        reachable, payload = await self._cache_get(skey, now)
        if payload is not None:
            return payload
        started = time.monotonic()
        entry = await driver.load_entry(skey, now)
        if entry is None:
            return None
        payload, expire_at = entry
        # A cache that just failed is not asked again within the same call; a read that took long may
        # have raced a write whose marker is gone by now, so it leaves the cache alone.
        if reachable and time.monotonic() - started < REFILL_WINDOW:
            await self._cache_put(skey, f"{expire_at!r}|{payload}", expire_at, now, refill=True)
        return payload

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        driver = self._db().driver
        # Taken before the database computes its own expiry, so the cache entry never outlives the row.
        now = expiry.timestamp()
        expire_at = now + expiry_age
        if not must_create:
            await driver.save(skey, payload, expire_at)
        elif not await driver.create(skey, payload, expire_at, now):
            raise CreateError(f"A session with this key already exists in {self!r}.")
        await self._cache_put(skey, f"{expire_at!r}|{payload}", expire_at, now, refill=False)

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        driver = self._db().driver
        now = expiry.timestamp()
        expire_at = now + expiry_age
        # The database merges, atomically; the cache then holds exactly what the database does.
        payload = await driver.update(skey, lambda raw: self._merge(raw, changes), expire_at, now)
        await self._cache_put(skey, f"{expire_at!r}|{payload}", expire_at, now, refill=False)
        return payload

    async def _exists(self, skey: str) -> bool:
        driver = self._db().driver
        now = expiry.timestamp()
        if (await self._cache_get(skey, now))[1] is not None:
            return True
        return await driver.exists(skey, now)

    async def _delete(self, skey: str) -> None:
        await self._db().driver.delete(skey)
        now = expiry.timestamp()
        await self._cache_put(skey, DELETE_MARKER, now + DELETE_MARKER_TTL, now, refill=False)

    async def _clear_expired(self) -> int:
        return await self._db().driver.clear_expired(expiry.timestamp())

    # -- the cache ------------------------------------------------------------------------------------

    async def _cache_get(self, skey: str, now: float) -> tuple[bool, str | None]:
        """Whether the cache answered, and the live payload it holds for ``skey``."""
        if self._outdated and not await self._remove_outdated():
            return False, None  # the cache still fails, and may hold copies older than the database
        try:
            raw = await self._entries().get(ENTRY_PREFIX + skey)
        except Exception as exc:
            logger.warning("%r could not read its cache: %r. Reading the database instead.", self, exc)
            return False, None
        return True, None if raw is None else _unwrap(raw, now)

    async def _cache_put(self, skey: str, entry: str, expire_at: float, now: float, *, refill: bool) -> None:
        """Cache ``entry`` until ``expire_at``; a refill only adds, never replaces what a write put there."""
        ttl = max(1, math.ceil(expire_at - now))
        try:
            entries = self._entries()
            if refill:
                await entries.add(ENTRY_PREFIX + skey, entry, ttl)  # False: a write got there first
            else:
                await entries.set(ENTRY_PREFIX + skey, entry, ttl)
            self._outdated.discard(skey)
        except Exception as exc:
            logger.warning("%r could not write its cache: %r. The database has the session.", self, exc)
            if not refill:  # a failed refill leaves nothing older than the database behind
                self._mark_outdated(skey)

    def _entries(self) -> CacheStore:
        if not self.cache.is_open:
            raise SessionError(f"The cache of {self!r} was closed by its owner.")
        return self.cache.entries

    def _mark_outdated(self, skey: str) -> None:
        if len(self._outdated) < MAX_OUTDATED:
            self._outdated.add(skey)
        else:
            logger.error(
                "%r lost track of sessions changed while its cache was down (over %d); once the cache is back "
                "it may serve older copies of them until they expire.",
                self,
                MAX_OUTDATED,
            )

    async def _remove_outdated(self) -> bool:
        """Delete the outdated entries from the cache; ``False`` (logged) if the cache still fails."""
        try:
            entries = self._entries()
            for skey in list(self._outdated):
                await entries.delete(ENTRY_PREFIX + skey)
                self._outdated.discard(skey)
        except Exception as exc:
            logger.warning(
                "%r could not reach its cache: %r. %d sessions changed meanwhile; reading the database instead.",
                self,
                exc,
                len(self._outdated),
            )
            return False
        return True


def _unwrap(raw: str | bytes, now: float) -> str | None:
    """The payload of a cache entry, or ``None`` when it is expired at ``now``, a delete marker, or not ours."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    stamp, separator, payload = raw.partition("|")
    if not separator:
        return None
    try:
        expire_at = float(stamp)
    except ValueError:
        return None
    return payload if expire_at > now else None
