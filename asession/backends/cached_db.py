"""CachedDatabaseBackend: a write-through cache in front of a DatabaseBackend, as Django's ``cached_db``.

The database is the truth; the cache only saves reads. Both inner backends are driven through their
storage hooks with the storage key this backend already hashed, so a key is validated and hashed once.

The cache holds ``"<expire_at>|<payload>"``: the payload together with the expiry timestamp the database
has. An entry read back past that timestamp (by :func:`asession.expiry.now`) is a miss, so a cached
session never outlives its database row, whatever clock the cache's own TTL follows.

A cached copy must never hide a newer write or a delete, even one made while the cache was down and
the copy survived in it (Redis persists across restarts). A save or delete the cache could not follow
still goes to the database, and the key is remembered as *outdated* in the cache: until this process
has deleted those entries from the cache, it reads nothing from the cache, and it deletes them as soon
as the cache answers again. A read refills the cache only where no entry exists (``must_create``), so a
refill racing a save cannot overwrite the newer entry.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

from asession import expiry
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.backends.db import DatabaseBackend
from asession.exceptions import CreateError, ImproperlyConfigured

__all__ = ["MAX_OUTDATED", "CachedDatabaseBackend"]

logger = logging.getLogger(__name__)

#: How many storage keys changed during a cache outage one process remembers, at most (64 bytes each).
MAX_OUTDATED = 100_000


class CachedDatabaseBackend(SessionBackend):
    """Read sessions from a cache, falling back to a database; write and delete through both.

    ``db`` is a :class:`~asession.backends.db.DatabaseBackend`, ``cache`` any server-side backend,
    normally a :class:`~asession.backends.cache.CacheBackend`. A read that misses the cache loads the
    database row and refills the cache for the row's remaining lifetime. A save writes the database,
    then caches the new data; ``must_create`` is decided by the database, atomically. A delete removes
    the row, then the cached copy.

    A failing cache is logged as a warning on ``asession.backends.cached_db`` and otherwise survived:
    sessions are read from and written to the database alone. Keys written meanwhile are remembered
    and removed from the cache when it is back, before this process reads from it again; other processes
    sharing the cache may serve such an older copy until this one has done so (normally within its
    next request). A failing database raises :class:`~asession.exceptions.BackendUnavailableError`.
    :meth:`open` opens whichever of the two backends is not open yet, and :meth:`close` closes only those.
    """

    hashes_keys: ClassVar[bool] = True
    expires_by_itself: ClassVar[bool] = False

    def __init__(self, db: DatabaseBackend, cache: SessionBackend, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(max_size=max_size)
        if not isinstance(db, DatabaseBackend):
            raise ImproperlyConfigured(
                f"CachedDatabaseBackend needs a DatabaseBackend as its db, not {db!r}. Use e.g. "
                "CachedDatabaseBackend(DatabaseBackend('sessions.db'), CacheBackend('redis://127.0.0.1:6379/0'))."
            )
        if not isinstance(cache, SessionBackend) or not cache.hashes_keys:
            raise ImproperlyConfigured(
                f"CachedDatabaseBackend needs a server-side SessionBackend as its cache, such as a CacheBackend, "
                f"not {cache!r}."
            )
        self.db = db
        self.cache = cache
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
            for inner in reversed(opened):
                await inner.close()
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

    # -- storage ----------------------------------------------------------------------------------

    async def _load(self, skey: str) -> str | None:
        self.db._check_open()
        now = expiry.timestamp()
        reachable, payload = await self._cache_get(skey, now)
        if payload is not None:
            return payload
        entry = await self.db._load_entry(skey)
        if entry is None:
            return None
        payload, expire_at = entry
        if reachable:  # a cache that just failed is not asked again within the same call
            await self._cache_put(skey, payload, expire_at, now, refill=True)
        return payload

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        self.db._check_open()
        # Taken before the database computes its own expiry, so the cache entry never outlives the row.
        now = expiry.timestamp()
        await self.db._save(skey, payload, expiry_age, must_create)
        await self._cache_put(skey, payload, now + expiry_age, now, refill=False)

    async def _exists(self, skey: str) -> bool:
        self.db._check_open()
        if (await self._cache_get(skey, expiry.timestamp()))[1] is not None:
            return True
        return await self.db._exists(skey)

    async def _delete(self, skey: str) -> None:
        self.db._check_open()
        await self.db._delete(skey)
        await self._cache_delete(skey)

    async def _clear_expired(self) -> int:
        self.db._check_open()
        return await self.db._clear_expired()

    # -- the cache ------------------------------------------------------------------------------------

    async def _cache_get(self, skey: str, now: float) -> tuple[bool, str | None]:
        """Whether the cache answered, and the live payload it holds for ``skey``."""
        if self._outdated and not await self._remove_outdated():
            return False, None  # the cache still fails, and may hold copies older than the database
        try:
            self.cache._check_open()
            raw = await self.cache._load(skey)
        except Exception as exc:
            logger.warning("%r could not read its cache: %r. Reading the database instead.", self, exc)
            return False, None
        return True, None if raw is None else _unwrap(raw, now)

    async def _cache_put(self, skey: str, payload: str, expire_at: float, now: float, *, refill: bool) -> None:
        """Cache ``payload`` until ``expire_at``; a refill only adds, never replaces what a save put there."""
        try:
            self.cache._check_open()
            await self.cache._save(skey, f"{expire_at!r}|{payload}", max(1, math.ceil(expire_at - now)), refill)
            self._outdated.discard(skey)
        except CreateError:
            pass  # a save cached newer data since this read
        except Exception as exc:
            logger.warning("%r could not write its cache: %r. The database has the session.", self, exc)
            if not refill:  # a failed refill leaves nothing older than the database behind
                self._mark_outdated(skey)

    async def _cache_delete(self, skey: str) -> None:
        try:
            self.cache._check_open()
            await self.cache._delete(skey)
            self._outdated.discard(skey)
        except Exception as exc:
            logger.warning("%r could not delete from its cache: %r. The database row is gone.", self, exc)
            self._mark_outdated(skey)

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
            self.cache._check_open()
            for skey in list(self._outdated):
                await self.cache._delete(skey)
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
    """The payload of a cache entry, or ``None`` when it is expired at ``now`` or not one of ours."""
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
