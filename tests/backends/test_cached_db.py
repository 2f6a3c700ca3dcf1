"""CachedDatabaseBackend quirks: read-through refill, cache failures, deletes, expiry envelope, ownership.

The storage contract itself runs in ``test_contract.py`` as ``[cached-db]``; the race of two workers that
issue #11 reported runs in ``test_cached_db_race.py``. Here the cache is a :class:`FlakyCache`: a
``memory://`` CacheBackend whose plain entries (``cache.entries``, the seam CachedDatabaseBackend uses) can
be told to fail, to hand back bytes, and record the TTL of every write. aiocache's memory cache runs its
TTL on real time while the database follows the fake clock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asession import keys
from asession.backends.base import BackendState
from asession.backends.cache import CacheBackend, CacheStore
from asession.backends.cached_db import DELETE_MARKER, DELETE_MARKER_TTL, ENTRY_PREFIX, CachedDatabaseBackend
from asession.backends.db import DatabaseBackend
from asession.backends.memory import MemoryBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured, SessionError
from tests.conftest import Clock

DAY = 86400
LOGGER = "asession.backends.cached_db"


class FlakyEntries:
    """The real plain entries of a :class:`FlakyCache`, failing, counting and recording as it is told."""

    def __init__(self, store: CacheStore, cache: FlakyCache) -> None:
        self.store = store
        self.cache = cache

    async def get(self, key: str) -> str | bytes | None:
        self.cache.gets += 1
        if self.cache.fail_get:
            raise ConnectionError("cache read refused")
        if self.cache.answer is not None:
            return self.cache.answer
        raw = await self.store.get(key)
        if self.cache.as_bytes and isinstance(raw, str):
            return raw.encode()
        return raw

    async def set(self, key: str, text: str, ttl: int) -> object:
        if self.cache.fail_set:
            raise ConnectionError("cache write refused")
        self.cache.writes.append(("set", key, ttl))
        return await self.store.set(key, text, ttl)

    async def add(self, key: str, text: str, ttl: int) -> bool:
        if self.cache.fail_set:
            raise ConnectionError("cache write refused")
        self.cache.writes.append(("add", key, ttl))
        return await self.store.add(key, text, ttl)

    async def delete(self, key: str) -> object:
        if self.cache.fail_delete:
            raise ConnectionError("cache delete refused")
        return await self.store.delete(key)

    async def exists(self, key: str) -> bool:
        if self.cache.fail_get:
            raise ConnectionError("cache read refused")
        return await self.store.exists(key)


class FlakyCache(CacheBackend):
    """A ``memory://`` CacheBackend whose plain entries can fail like an unreachable server."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.fail_get = self.fail_set = self.fail_delete = False
        self.as_bytes = False
        #: What every read answers instead of the stored entry, when set.
        self.answer: bytes | None = None
        self.gets = 0
        #: ("set" or "add", key, ttl) of every write that reached the store.
        self.writes: list[tuple[str, str, int]] = []

    @property
    def entries(self) -> CacheStore:
        return FlakyEntries(super().entries, self)

    def fail(self, failing: bool = True) -> None:
        """Make every read, write and delete fail, or none."""
        self.fail_get = self.fail_set = self.fail_delete = failing


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


async def peek(cache: CacheBackend, key: str) -> str | bytes | None:
    """The raw cache entry CachedDatabaseBackend keeps for ``key``."""
    return await cache.entries.get(ENTRY_PREFIX + keys.storage_key(key))


async def put(cache: CacheBackend, key: str, entry: str) -> None:
    """Write the raw cache entry of ``key``, as another writer could."""
    await cache.entries.set(ENTRY_PREFIX + keys.storage_key(key), entry, DAY)


def payload_of(raw: str | bytes | None) -> Any:
    """The session data inside a cache entry ``<expire_at>|<payload>``."""
    assert isinstance(raw, str), raw
    return json.loads(raw.partition("|")[2])


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
    """A miss loads the row and adds it to the cache with the database's expiry and the time left as TTL."""
    key = keys.new_key()
    await db.save(key, {"v": "db"}, 100)
    expire_at = clock.current.timestamp() + 100
    clock.advance(60)
    assert await peek(cache, key) is None
    assert await cached.load(key) == {"v": "db"}
    assert await peek(cache, key) == f"{expire_at!r}|" + '{"v":"db"}'
    assert cache.writes == [("add", ENTRY_PREFIX + keys.storage_key(key), 40)]


async def test_cache_entry_past_the_fake_clock_expiry_is_a_miss(
    cached: CachedDatabaseBackend, cache: FlakyCache, clock: Clock
) -> None:
    """An entry aiocache still holds (its TTL runs on real time) is a miss once asession's clock passes its expiry."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, 10)
    clock.advance(11)
    assert await peek(cache, key) is not None  # still in aiocache
    assert await cached.load(key) is None
    assert not await cached.exists(key)


@pytest.mark.parametrize("entry", ["garbage", "not-a-number|{}", '{"v": "cache"}', "nan|{}", DELETE_MARKER])
async def test_unreadable_cache_entry_is_a_miss(cached: CachedDatabaseBackend, cache: FlakyCache, entry: str) -> None:
    """A cache entry that is not ``<expiry>|<payload>`` (another writer, an old format, a marker) is a miss."""
    key = keys.new_key()
    await cached.save(key, {"v": "db"}, DAY)
    await put(cache, key, entry)
    assert await cached.load(key) == {"v": "db"}


async def test_cache_returning_bytes_is_understood(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """Entries that come back as bytes (Redis, memcached) are decoded and served."""
    key = keys.new_key()
    await cached.save(key, {"v": "é"}, DAY)
    await db.delete(key)  # only the cache can answer now
    cache.as_bytes = True
    assert isinstance(await peek(cache, key), bytes)
    assert await cached.load(key) == {"v": "é"}


async def test_cache_returning_undecodable_bytes_is_a_miss(cached: CachedDatabaseBackend, cache: FlakyCache) -> None:
    """Bytes that are not UTF-8 are nobody's entry: the database answers."""
    key = keys.new_key()
    await cached.save(key, {"v": "db"}, DAY)
    cache.answer = b"\xff\xfe|{}"
    assert await cached.load(key) == {"v": "db"}


# -- writes and deletes -----------------------------------------------------------------------------------


async def test_save_writes_database_and_cache(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, clock: Clock
) -> None:
    """save() writes through: both the database and the cache hold the new data, the cache for the full age."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await cached.save(key, {"v": 2}, DAY)
    assert await db.load(key) == {"v": 2}
    assert await peek(cache, key) == f"{clock.current.timestamp() + DAY!r}|" + '{"v":2}'
    assert cache.writes[-1] == ("set", ENTRY_PREFIX + keys.storage_key(key), DAY)


async def test_delete_leaves_a_marker_and_no_row(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """delete() removes the row and overwrites the cache entry with the delete marker, for DELETE_MARKER_TTL."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await cached.delete(key)
    assert await db.load(key) is None
    assert await peek(cache, key) == DELETE_MARKER
    assert cache.writes[-1] == ("set", ENTRY_PREFIX + keys.storage_key(key), DELETE_MARKER_TTL)
    assert await cached.load(key) is None
    assert not await cached.exists(key)


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
    await put(cache, stale, f"{1e12!r}|" + '{"owner": "stale"}')
    await cached.save(stale, {"owner": "new"}, DAY, must_create=True)
    assert await cached.load(stale) == {"owner": "new"}
    assert payload_of(await peek(cache, stale)) == {"owner": "new"}


async def test_update_merges_in_the_database_and_caches_the_result(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """update() merges into what the database holds now (not the cached copy), and the cache then holds that."""
    key = keys.new_key()
    await cached.save(key, {"a": 1, "b": 2}, DAY)
    await db.save(key, {"a": 1, "b": 2, "c": 3}, DAY)  # another writer the cache has not seen
    await cached.update(key, {"a": 10}, ["b"], DAY)
    assert await db.load(key) == {"a": 10, "c": 3}
    assert payload_of(await peek(cache, key)) == {"a": 10, "c": 3}
    assert cache.writes[-1] == ("set", ENTRY_PREFIX + keys.storage_key(key), DAY)
    assert await cached.load(key) == {"a": 10, "c": 3}


async def test_clear_expired_counts_database_rows(cached: CachedDatabaseBackend, clock: Clock) -> None:
    """clear_expired() deletes and counts the expired rows of the database."""
    for _ in range(4):
        await cached.save(keys.new_key(), {}, 5)
    await cached.save(keys.new_key(), {}, DAY)
    clock.advance(6)
    assert await cached.clear_expired() == 4
    assert await cached.clear_expired() == 0


async def test_session_key_is_hashed_once_per_call(
    cached: CachedDatabaseBackend, cache: FlakyCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outer backend hashes the key once per call; the database and the cache reuse that storage key."""
    key = keys.new_key()
    entry = ENTRY_PREFIX + keys.storage_key(key)
    calls: list[str] = []
    original = keys.storage_key

    def counting(raw: str) -> str:
        calls.append(raw)
        return original(raw)

    monkeypatch.setattr(keys, "storage_key", counting)
    await cached.save(key, {"v": 1}, DAY)
    await cached.load(key)  # a hit
    await cache.entries.delete(entry)
    await cached.load(key)  # a miss and a refill
    await cached.update(key, {"v": 2}, [], DAY)
    await cached.exists(key)
    await cached.delete(key)
    assert calls == [key] * 6


async def test_valid_key_is_not_hashed_again(cached: CachedDatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValidKey made by this backend (as the Session does, once) carries its storage key through every call."""
    key = keys.new_key()
    valid = cached.valid_key(key)
    assert valid is not None
    calls: list[str] = []
    original = keys.storage_key

    def counting(raw: str) -> str:
        calls.append(raw)
        return original(raw)

    monkeypatch.setattr(keys, "storage_key", counting)
    await cached.save(valid, {"v": 1}, DAY)
    assert await cached.load(valid) == {"v": 1}
    await cached.update(valid, {"v": 2}, [], DAY)
    assert await cached.exists(valid)
    await cached.delete(valid)
    assert calls == []


# -- failures ------------------------------------------------------------------------------------------------


async def test_cache_read_failure_falls_back_to_the_database_and_logs(
    cached: CachedDatabaseBackend, cache: FlakyCache, caplog: pytest.LogCaptureFixture
) -> None:
    """With cache reads failing, load() and exists() answer from the database and log a warning each."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_get = True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert await cached.load(key) == {"v": 1}
        assert await cached.exists(key)
        assert await cached.load(keys.new_key()) is None
    warnings = [record for record in caplog.records if record.name == LOGGER]
    assert len(warnings) == 3
    assert all(record.levelno == logging.WARNING for record in warnings)
    assert "could not read its cache" in warnings[0].getMessage()
    assert "cache read refused" in warnings[0].getMessage()


@pytest.mark.parametrize("action", ["save", "update", "delete"])
async def test_write_while_cache_is_down_is_not_shadowed_once_it_is_back(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A save, update or delete made while the cache is down holds; the older copy the cache kept is never served."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail()
    expected = None if action == "delete" else {"v": 2}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        if action == "save":
            await cached.save(key, {"v": 2}, DAY)
        elif action == "update":
            await cached.update(key, {"v": 2}, [], DAY)
        else:
            await cached.delete(key)
        assert await cached.load(key) == expected  # from the database, during the outage
    assert any(record.name == LOGGER and record.levelno == logging.WARNING for record in caplog.records)
    assert await db.load(key) == expected
    cache.fail(False)
    assert payload_of(await peek(cache, key)) == {"v": 1}  # the outdated copy survived the outage
    assert await cached.load(key) == expected
    assert await cached.exists(key) is (expected is not None)


async def test_outdated_copies_are_removed_by_the_first_read_after_the_outage(
    cached: CachedDatabaseBackend, cache: FlakyCache
) -> None:
    """The first read once the cache answers again, of any session, deletes every copy the outage left outdated."""
    changed, other = keys.new_key(), keys.new_key()
    await cached.save(changed, {"v": 1}, DAY)
    await cached.save(other, {"v": "other"}, DAY)
    cache.fail_set = cache.fail_delete = True
    await cached.save(changed, {"v": 2}, DAY)
    cache.fail_set = cache.fail_delete = False
    assert await peek(cache, changed) is not None
    assert await cached.load(other) == {"v": "other"}
    assert await peek(cache, changed) is None


async def test_outdated_copy_is_not_read_while_deletes_still_fail(
    cached: CachedDatabaseBackend, cache: FlakyCache
) -> None:
    """A cache that answers reads but refuses deletes is not read from while it holds an outdated copy."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_set = cache.fail_delete = True
    await cached.save(key, {"v": 2}, DAY)
    gets_before = cache.gets
    assert await cached.load(key) == {"v": 2}
    assert await cached.exists(key)
    assert cache.gets == gets_before


async def test_close_removes_outdated_copies_when_the_cache_is_back(db: DatabaseBackend, cache: FlakyCache) -> None:
    """Closing the backend is a last chance to delete copies an outage left outdated."""
    key = keys.new_key()
    async with db, cache:  # owned by the test, so the cache is still open to look into after close()
        async with CachedDatabaseBackend(db, cache) as backend:
            await backend.save(key, {"v": 1}, DAY)
            cache.fail_set = cache.fail_delete = True
            await backend.delete(key)
            cache.fail_set = cache.fail_delete = False
            assert await peek(cache, key) is not None
        assert await peek(cache, key) is None


async def test_new_session_is_created_while_the_cache_is_down(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache, caplog: pytest.LogCaptureFixture
) -> None:
    """must_create needs no invalidation (a fresh key has no cached copy), so new sessions still work, logged."""
    cache.fail()
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
    original = db.driver.load_entry

    async def load_then_someone_saves(skey: str, now: float) -> tuple[str, float] | None:
        entry = await original(skey, now)
        await cached.save(key, {"v": "new"}, DAY)  # another request, between this read and its refill
        return entry

    monkeypatch.setattr(db.driver, "load_entry", load_then_someone_saves)
    assert await cached.load(key) == {"v": "old"}
    monkeypatch.undo()
    assert await cached.load(key) == {"v": "new"}
    assert payload_of(await peek(cache, key)) == {"v": "new"}


@pytest.mark.parametrize("action", ["save", "update"])
async def test_failed_cache_write_does_not_leave_the_older_copy_readable(
    cached: CachedDatabaseBackend, cache: FlakyCache, action: str
) -> None:
    """When only writing the cache fails, the key is outdated: the next read drops the old copy and caches the new."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    cache.fail_set = True
    if action == "save":
        await cached.save(key, {"v": 2}, DAY)
    else:
        await cached.update(key, {"v": 2}, [], DAY)
    cache.fail_set = False
    assert payload_of(await peek(cache, key)) == {"v": 1}
    assert await cached.load(key) == {"v": 2}
    assert payload_of(await peek(cache, key)) == {"v": 2}


async def test_failed_refill_marks_nothing_outdated(
    cached: CachedDatabaseBackend, db: DatabaseBackend, cache: FlakyCache
) -> None:
    """A refill that cannot write leaves nothing older than the database, so the cache is read again next time."""
    key = keys.new_key()
    await db.save(key, {"v": 1}, DAY)
    cache.fail_set = True
    assert await cached.load(key) == {"v": 1}
    cache.fail_set = False
    gets_before = cache.gets
    assert await cached.load(key) == {"v": 1}
    assert cache.gets == gets_before + 1


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
    """If the database was closed underneath, calls raise a SessionError saying so."""
    key = keys.new_key()
    await cached.save(key, {"v": 1}, DAY)
    await db.close()
    with pytest.raises(SessionError, match="was closed by its owner"):
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

    class Unreachable(CacheBackend):
        async def _open(self) -> None:
            raise BackendUnavailableError("cache server down")

    backend = CachedDatabaseBackend(db, Unreachable("memory://"))
    with pytest.raises(BackendUnavailableError, match="cache server down"):
        await backend.open()
    assert db.state is BackendState.CLOSED
    assert not backend.is_open


def test_constructor_rejects_a_db_that_is_not_a_database_backend() -> None:
    """The db must be a DatabaseBackend; anything else is named in the error."""
    with pytest.raises(ImproperlyConfigured, match="needs a DatabaseBackend as its db, not <MemoryBackend 0 sessions>"):
        CachedDatabaseBackend(MemoryBackend(), CacheBackend("memory://"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cache", "named"),
    [(MemoryBackend(), "<MemoryBackend 0 sessions>"), ("redis://127.0.0.1", "'redis://127.0.0.1'")],
    ids=["session-backend", "url"],
)
def test_constructor_rejects_a_cache_that_is_not_a_cache_backend(cache: object, named: str) -> None:
    """The cache must be a CacheBackend, not another backend, a URL or an aiocache object; the value is named."""
    with pytest.raises(ImproperlyConfigured, match="needs a CacheBackend as its cache") as info:
        CachedDatabaseBackend(DatabaseBackend(":memory:"), cache)  # type: ignore[arg-type]
    assert f"not {named}" in str(info.value)


async def test_repr_names_both_backends(cached: CachedDatabaseBackend, sqlite_path: Path) -> None:
    """repr() shows the database path and the cache."""
    assert repr(cached) == f"<CachedDatabaseBackend <DatabaseBackend {sqlite_path}> cached in <FlakyCache memory://>>"


def test_expiry_is_kept_by_the_database_not_the_store() -> None:
    """expires_by_itself is False, so clear_expired() has work to do and tests move the fake clock; keys are hashed."""
    assert CachedDatabaseBackend.expires_by_itself is False
    assert CachedDatabaseBackend.hashes_keys is True
