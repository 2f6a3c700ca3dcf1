"""CachedDatabaseBackend quirks: read-through refill, cache failures, deletes, expiry envelope, ownership.

The storage contract itself runs in ``test_contract.py`` as ``[cached-db]``. Here the cache is usually a
MemoryBackend, so tests can look inside it; one test uses aiocache's memory cache, whose TTL runs on
real time while the database follows the fake clock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asession import keys
from asession.backends.base import BackendState
from asession.backends.cached_db import CachedDatabaseBackend
from asession.backends.db import DatabaseBackend
from asession.backends.memory import MemoryBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured, SessionError
from tests.conftest import Clock

DAY = 86400
LOGGER = "asession.backends.cached_db"


class FlakyCache(MemoryBackend):
    """A MemoryBackend whose reads, writes and deletes can be made to fail like an unreachable server."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_load = self.fail_save = self.fail_delete = False
        self.loads = 0

    async def _load(self, skey: str) -> str | None:
        self.loads += 1
        if self.fail_load:
            raise ConnectionError("cache read refused")
        return await super()._load(skey)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        if self.fail_save:
            raise ConnectionError("cache write refused")
        await super()._save(skey, payload, expiry_age, must_create)

    async def _delete(self, skey: str) -> None:
        if self.fail_delete:
            raise ConnectionError("cache delete refused")
        await super()._delete(skey)


class BytesCache(MemoryBackend):
    """A cache that hands back bytes, as Redis and memcached do."""

    async def _load(self, skey: str) -> str | None:
        text = await super()._load(skey)
        # Typed as the MemoryBackend it extends; at run time it returns bytes like the base class allows.
        return None if text is None else text.encode()  # type: ignore[return-value]


@pytest.fixture
def db(sqlite_path: Path) -> DatabaseBackend:
    return DatabaseBackend(sqlite_path)


@pytest.fixture
def cache() -> FlakyCache:
    return FlakyCache()


@pytest.fixture
async def cached(db: DatabaseBackend, cache: FlakyCache) -> AsyncIterator[CachedDatabaseBackend]:
    async with CachedDatabaseBackend(db, cache) as backend:
        yield backend


def _delete_row(path: Path, key: str) -> None:
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute("DELETE FROM asession_sessions WHERE session_key = ?", (keys.storage_key(key),))
    finally:
        connection.close()


# -- reads -------------------------------------------------------------------------------------------------


async def test_cache_hit_does_not_read_the_database(cached: CachedDatabaseBackend, sqlite_path: Path) -> None:
    """A session in the cache loads from there even after its database row vanished behind the backend's back."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    _delete_row(sqlite_path, key)
    assert await cached.load(key) == {"v": 1}
    assert await cached.exists(key)


async def test_cache_miss_refills_from_the_database_with_remaining_lifetime(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, clock: Clock
) -> None:
    """A miss loads the row and refills the cache with the database's expiry and the time left, not a full age."""
    key = keys.new_key()
    skey = keys.storage_key(key)
    await db.save(key, {"v": "db"}, 100)
    expire_at = clock.current.timestamp() + 100
    clock.advance(60)
    assert await cache.load(key) is None
    assert await cached.load(key) == {"v": "db"}
    payload, cache_expiry = cache._data[skey]
    assert payload == f"{expire_at!r}|" + '{"v":"db"}'
    assert cache_expiry == clock.current.timestamp() + 40


async def test_cache_entry_past_the_fake_clock_expiry_is_a_miss(sqlite_path: Path, clock: Clock) -> None:
    """An entry aiocache still holds (its TTL runs on real time) is a miss once asession's clock passes its expiry."""
    from asession.backends.cache import CacheBackend

    cache = CacheBackend("memory://")
    async with CachedDatabaseBackend(DatabaseBackend(sqlite_path), cache) as backend:
        key = keys.new_key()
        await backend.save(key, {"v": 1}, 10)
        clock.advance(11)
        assert await cache._load(keys.storage_key(key)) is not None  # still in aiocache
        assert await backend.load(key) is None
        assert not await backend.exists(key)


@pytest.mark.parametrize("entry", ["garbage", "not-a-number|{}", '{"v": "cache"}', "nan|{}"])
async def test_unreadable_cache_entry_is_a_miss(cached: CachedDatabaseBackend, cache: FlakyCache, entry: str) -> None:
    """A cache entry that is not ``<expiry>|<payload>`` (another writer, an old format) falls through to the db."""
    key = keys.new_key()
    await cached.save(key, {"v": "db"}, DAY)
    await cache._save(keys.storage_key(key), entry, DAY, False)
    assert await cached.load(key) == {"v": "db"}


async def test_cache_returning_bytes_is_understood(db: DatabaseBackend) -> None:
    """Entries that come back as bytes (Redis, memcached) are decoded and served."""
    cache = BytesCache()
    async with CachedDatabaseBackend(db, cache) as backend:
        key = keys.new_key()
        await backend.save(key, {"v": "é"}, DAY)
        await db.delete(key)  # only the cache can answer now
        assert await backend.load(key) == {"v": "é"}


# -- writes and deletes -----------------------------------------------------------------------------------


async def test_save_writes_database_and_cache(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """save() writes through: both the database and the cache hold the new data."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await cached.save(key, {"v": 2}, DAY)
    assert await db.load(key) == {"v": 2}
    raw = await cache._load(keys.storage_key(key))
    assert raw is not None and raw.endswith('|{"v":2}')


async def test_delete_removes_from_cache_and_database(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """delete() leaves neither a row nor a cache entry behind."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await cached.delete(key)
    assert await db.load(key) is None
    assert await cache._load(keys.storage_key(key)) is None
    assert await cached.load(key) is None


async def test_must_create_is_decided_by_the_database(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """A key only in the database is taken; a stale key only in the cache is not, and gets overwritten."""
    taken = keys.new_key()
    await db.save(taken, {"owner": "db"}, DAY)
    with pytest.raises(CreateError):
        await cached.save(taken, {"owner": "new"}, DAY, must_create=True)
    assert await cached.load(taken) == {"owner": "db"}

    stale = keys.new_key()
    await cache._save(keys.storage_key(stale), f"{1e12!r}|" + '{"owner": "stale"}', DAY, False)
    await cached.save(stale, {"owner": "new"}, DAY, must_create=True)
    assert await cached.load(stale) == {"owner": "new"}


async def test_clear_expired_counts_database_rows(cached: CachedDatabaseBackend, clock: Clock) -> None:
    """clear_expired() deletes and counts the expired rows of the database."""
    for _ in range(4):
        await cached.save(keys.new_key(), {}, 5)
    clock.advance(6)
    assert await cached.clear_expired() == 4


async def test_session_key_is_hashed_once_per_call(
    cached: CachedDatabaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outer backend hashes the key; the database and the cache reuse that storage key."""
    calls: list[str] = []
    original = keys.storage_key

    def counting(key: str) -> str:
        calls.append(key)
        return original(key)

    monkeypatch.setattr(keys, "storage_key", counting)
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await cached.load(key)
    await cached.delete(key)
    assert calls == [key, key, key]


# -- failures ------------------------------------------------------------------------------------------------


async def test_cache_read_failure_falls_back_to_the_database_and_logs(
    cached: CachedDatabaseBackend, cache: FlakyCache, caplog: pytest.LogCaptureFixture
) -> None:
    """With cache reads failing, load() and exists() answer from the database and log a warning each."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_load = True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert await cached.load(key) == {"v": 1}
        assert await cached.exists(key)
        assert await cached.load(keys.new_key()) is None
    warnings = [record for record in caplog.records if record.name == LOGGER]
    assert len(warnings) == 3
    assert all(record.levelno == logging.WARNING for record in warnings)
    assert "could not read its cache" in warnings[0].getMessage()
    assert "cache read refused" in warnings[0].getMessage()


@pytest.mark.parametrize("action", ["save", "delete"])
async def test_write_while_cache_is_down_is_not_shadowed_once_it_is_back(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A save or delete made while the cache is down holds; the older copy the cache kept is never served."""
    key = keys.new_key()
    skey = keys.storage_key(key)
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_load = cache.fail_save = cache.fail_delete = True
    expected = {"v": 2} if action == "save" else None
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        if action == "save":
            await cached.save(key, {"v": 2}, DAY)
        else:
            await cached.delete(key)
        assert await cached.load(key) == expected  # from the database, during the outage
    assert any(record.name == LOGGER and record.levelno == logging.WARNING for record in caplog.records)
    assert await db.load(key) == expected
    assert cache._data[skey][0].endswith('{"v":1}')  # the outdated copy survived the outage
    cache.fail_load = cache.fail_save = cache.fail_delete = False
    assert await cached.load(key) == expected
    assert await cached.exists(key) is (expected is not None)


async def test_outdated_copies_are_removed_by_the_first_read_after_the_outage(
    cached: CachedDatabaseBackend, cache: FlakyCache
) -> None:
    """The first read once the cache answers again, of any session, deletes every copy the outage left outdated."""
    changed, other = keys.new_key(), keys.new_key()
    await cached.save(changed, {"v": 1}, DAY)
    await cached.save(other, {"v": "other"}, DAY)
    cache.fail_save = cache.fail_delete = True
    await cached.save(changed, {"v": 2}, DAY)
    cache.fail_save = cache.fail_delete = False
    assert keys.storage_key(changed) in cache._data
    assert await cached.load(other) == {"v": "other"}
    assert keys.storage_key(changed) not in cache._data


async def test_outdated_copy_is_not_read_while_deletes_still_fail(
    cached: CachedDatabaseBackend, cache: FlakyCache
) -> None:
    """A cache that answers reads but refuses deletes is not read from while it holds an outdated copy."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_save = cache.fail_delete = True
    await cached.save(key, {"v": 2}, DAY)
    loads_before = cache.loads
    assert await cached.load(key) == {"v": 2}
    assert cache.loads == loads_before


async def test_close_removes_outdated_copies_when_the_cache_is_back(db: DatabaseBackend, cache: FlakyCache) -> None:
    """Closing the backend is a last chance to delete copies an outage left outdated."""
    backend = CachedDatabaseBackend(db, cache)
    async with backend:
        key = keys.new_key()
        await backend.save(key, {"v": 1}, DAY)
        cache.fail_save = cache.fail_delete = True
        await backend.delete(key)
        cache.fail_save = cache.fail_delete = False
        assert keys.storage_key(key) in cache._data
    assert keys.storage_key(key) not in cache._data


async def test_new_session_is_created_while_the_cache_is_down(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, caplog: pytest.LogCaptureFixture
) -> None:
    """must_create needs no invalidation (a fresh key has no cached copy), so new sessions still work, logged."""
    cache.fail_load = cache.fail_save = cache.fail_delete = True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        key = await cached.create({"new": True}, DAY)
        assert await cached.load(key) == {"new": True}
    assert await db.load(key) == {"new": True}
    assert any("could not write its cache" in record.getMessage() for record in caplog.records)


async def test_refill_does_not_replace_a_newer_cached_save(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that loaded the old row while a save went through only adds to the cache, so the save's entry stays."""
    key = keys.new_key()
    await db.save(key, {"v": "old"}, DAY)
    original = db._load_entry

    async def load_then_someone_saves(skey: str) -> tuple[str, float] | None:
        entry = await original(skey)
        await cached.save(key, {"v": "new"}, DAY)  # another request, between this read and its refill
        return entry

    monkeypatch.setattr(db, "_load_entry", load_then_someone_saves)
    assert await cached.load(key) == {"v": "old"}
    monkeypatch.undo()
    assert await cached.load(key) == {"v": "new"}
    raw = await cache._load(keys.storage_key(key))
    assert raw is not None and raw.endswith('{"v":"new"}')


async def test_failed_cache_write_does_not_leave_the_older_copy_readable(
    cached: CachedDatabaseBackend, cache: FlakyCache
) -> None:
    """When only writing the cache fails, the next read drops the previous cached version and caches the new one."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_save = True
    await cached.save(key, {"v": 2}, DAY)
    cache.fail_save = False
    assert await cached.load(key) == {"v": 2}
    assert cache._data[keys.storage_key(key)][0].endswith('{"v":2}')


async def test_database_failure_propagates(
    cached: CachedDatabaseBackend, db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cache miss, a failing database raises BackendUnavailableError instead of reporting no session."""

    async def broken(skey: str, now: float) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(db.driver, "load_entry", broken)
    with pytest.raises(BackendUnavailableError, match="disk I/O error"):
        await cached.load(keys.new_key())


async def test_closed_database_refuses_work(cached: CachedDatabaseBackend, db: DatabaseBackend) -> None:
    """If the database was closed underneath, calls raise the database's own use-after-close error."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await db.close()
    with pytest.raises(SessionError, match="DatabaseBackend was used after close"):
        await cached.load(key)


# -- construction and life cycle ---------------------------------------------------------------------------------


async def test_open_and_close_handle_only_backends_it_opened(db: DatabaseBackend, cache: FlakyCache) -> None:
    """A database the caller opened stays open after close(); the cache opened here is closed here."""
    async with db:
        backend = CachedDatabaseBackend(db, cache)
        await backend.open()
        assert cache.is_open
        await backend.close()
        assert cache.state is BackendState.CLOSED
        assert db.is_open
    assert db.state is BackendState.CLOSED


async def test_failed_open_closes_what_it_opened(db: DatabaseBackend) -> None:
    """When the cache cannot open, the database opened a moment before is closed again and the error raised."""

    class Unreachable(MemoryBackend):
        async def _open(self) -> None:
            raise BackendUnavailableError("cache server down")

    backend = CachedDatabaseBackend(db, Unreachable())
    with pytest.raises(BackendUnavailableError, match="cache server down"):
        await backend.open()
    assert db.state is BackendState.CLOSED
    assert not backend.is_open


def test_constructor_rejects_a_db_that_is_not_a_database_backend() -> None:
    """The db must be a DatabaseBackend; anything else is named in the error."""
    with pytest.raises(ImproperlyConfigured, match="needs a DatabaseBackend as its db, not <MemoryBackend 0 sessions>"):
        CachedDatabaseBackend(MemoryBackend(), MemoryBackend())  # type: ignore[arg-type]


def test_constructor_rejects_a_cache_that_is_not_a_backend() -> None:
    """The cache must be a server-side SessionBackend, not a URL or an aiocache object; the value is named."""
    with pytest.raises(ImproperlyConfigured, match="needs a server-side SessionBackend") as info:
        CachedDatabaseBackend(DatabaseBackend(":memory:"), "redis://127.0.0.1")  # type: ignore[arg-type]
    assert "'redis://127.0.0.1'" in str(info.value)


async def test_repr_names_both_backends(cached: CachedDatabaseBackend, sqlite_path: Path) -> None:
    """repr() shows the database path and the cache."""
    assert repr(cached) == f"<CachedDatabaseBackend <DatabaseBackend {sqlite_path}> cached in <FlakyCache 0 sessions>>"


def test_expiry_is_kept_by_the_database_not_the_store() -> None:
    """expires_by_itself is False, so clear_expired() has work to do and tests move the fake clock."""
    assert CachedDatabaseBackend.expires_by_itself is False
    assert CachedDatabaseBackend.hashes_keys is True
