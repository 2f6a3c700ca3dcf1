"""Issue #11: two workers share a database and a cache; a read that missed the cache races a delete or a write.

Worker A loads a session the cache does not hold and reads its row; worker B deletes (or updates) it; A
then refills the cache. Before the fix A's refill overwrote B's change, so a logged-out session stayed
loadable ("11 of 3000 deletes"). Now a refill only ``add``s, within ``REFILL_WINDOW`` of its database read,
and a delete leaves a marker. The deterministic tests hold A between its read and its refill; the
statistical ones race real servers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from asession import keys
from asession.backends import cached_db
from asession.backends.cache import CacheBackend
from asession.backends.cached_db import DELETE_MARKER, ENTRY_PREFIX, CachedDatabaseBackend
from asession.backends.db import DatabaseBackend

DAY = 86400
ROUNDS = 300


@dataclass
class Held:
    """Events of a database read held between reading the row and returning it."""

    read: asyncio.Event
    release: asyncio.Event


def hold_first_read(backend: CachedDatabaseBackend, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> Held:
    """Make the first ``load_entry`` of ``backend``'s driver wait for ``release`` (and ``delay`` s) after reading."""
    driver = backend.db.driver
    original = driver.load_entry
    held = Held(asyncio.Event(), asyncio.Event())

    async def load_entry(skey: str, now: float) -> tuple[str, float] | None:
        entry = await original(skey, now)
        if not held.read.is_set():
            held.read.set()
            await held.release.wait()
            await asyncio.sleep(delay)
        return entry

    monkeypatch.setattr(driver, "load_entry", load_entry)
    return held


@pytest.fixture
def shared_cache() -> CacheBackend:
    """One cache both workers use (a ``memory://`` cache lives in its CacheBackend, so the same object)."""
    return CacheBackend("memory://")


@pytest.fixture
async def workers(
    sqlite_path: Path, shared_cache: CacheBackend
) -> AsyncIterator[tuple[CachedDatabaseBackend, CachedDatabaseBackend]]:
    """Workers A and B: a DatabaseBackend each on one SQLite file, and one shared cache."""
    async with shared_cache:
        async with (
            CachedDatabaseBackend(DatabaseBackend(sqlite_path), shared_cache) as a,
            CachedDatabaseBackend(DatabaseBackend(sqlite_path), shared_cache) as b,
        ):
            yield a, b


async def cached_entry(cache: CacheBackend, key: str) -> str | bytes | None:
    return await cache.entries.get(ENTRY_PREFIX + keys.storage_key(key))


# -- deterministic ------------------------------------------------------------------------------------------


async def test_refill_racing_a_delete_leaves_the_session_deleted(
    workers: tuple[CachedDatabaseBackend, CachedDatabaseBackend],
    shared_cache: CacheBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reads the row, B deletes the session, A refills: the marker stays and neither worker loads the session."""
    a, b = workers
    key = keys.new_key()
    await b.db.save(key, {"user": 1}, DAY)  # in the database only, so A's read misses the cache
    held = hold_first_read(a, monkeypatch)
    loading = asyncio.create_task(a.load(key))
    await held.read.wait()
    await b.delete(key)
    held.release.set()
    assert await loading == {"user": 1}  # read before the delete: what a concurrent request may see
    assert await cached_entry(shared_cache, key) == DELETE_MARKER
    assert await a.load(key) is None
    assert await b.load(key) is None
    assert not await a.exists(key)


async def test_refill_racing_an_update_leaves_the_newer_payload(
    workers: tuple[CachedDatabaseBackend, CachedDatabaseBackend],
    shared_cache: CacheBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reads the row, B updates the session, A refills: the cache keeps B's payload and both workers load it."""
    a, b = workers
    key = keys.new_key()
    await b.db.save(key, {"user": 1, "cart": []}, DAY)
    held = hold_first_read(a, monkeypatch)
    loading = asyncio.create_task(a.load(key))
    await held.read.wait()
    await b.update(key, {"cart": ["book"]}, [], DAY)
    held.release.set()
    assert await loading == {"user": 1, "cart": []}
    newer = {"user": 1, "cart": ["book"]}
    assert await a.load(key) == newer
    assert await b.load(key) == newer
    raw = await cached_entry(shared_cache, key)
    assert isinstance(raw, str) and raw.endswith('|{"user":1,"cart":["book"]}')


async def test_refill_slower_than_the_refill_window_leaves_the_cache_alone(
    workers: tuple[CachedDatabaseBackend, CachedDatabaseBackend],
    shared_cache: CacheBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read whose database answer came later than REFILL_WINDOW does not refill (a marker may have expired)."""
    a, _ = workers
    monkeypatch.setattr(cached_db, "REFILL_WINDOW", 0.05)
    key = keys.new_key()
    await a.db.save(key, {"user": 1}, DAY)
    held = hold_first_read(a, monkeypatch, delay=0.1)
    held.release.set()
    assert await a.load(key) == {"user": 1}
    assert await cached_entry(shared_cache, key) is None
    assert await a.load(key) == {"user": 1}  # a quick read refills as usual
    assert await cached_entry(shared_cache, key) is not None


# -- statistical ------------------------------------------------------------------------------------------------


async def race_deletes(
    a: CachedDatabaseBackend, b: CachedDatabaseBackend, monkeypatch: pytest.MonkeyPatch, written: list[str]
) -> list[int]:
    """ROUNDS times: save a session to the database only, then A loads it while B deletes it; the rounds it survived.

    A's database answer reaches it 0 to 1.5 ms late (a network's latency, varied by round), so that its
    refill lands before, during and after B's delete: on SQLite and an in-process cache nothing else would
    interleave them.
    """
    driver = a.db.driver
    original = driver.load_entry
    lag = 0.0

    async def load_entry(skey: str, now: float) -> tuple[str, float] | None:
        entry = await original(skey, now)
        await asyncio.sleep(lag)
        return entry

    monkeypatch.setattr(driver, "load_entry", load_entry)
    survived = []
    for round_ in range(ROUNDS):
        lag = round_ % 4 * 0.0005
        key = keys.new_key()
        written.append(key)
        await b.db.save(key, {"round": round_}, DAY)
        await asyncio.gather(a.load(key), b.delete(key))
        if await a.load(key) is not None or await b.load(key) is not None:
            survived.append(round_)
    return survived


async def test_concurrent_load_and_delete_on_sqlite_never_revives_the_session(
    workers: tuple[CachedDatabaseBackend, CachedDatabaseBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Racing A's load against B's delete, over one SQLite file and one shared cache, never leaves the session."""
    a, b = workers
    assert await race_deletes(a, b, monkeypatch, []) == []


@pytest.mark.postgres
@pytest.mark.redis
async def test_concurrent_load_and_delete_on_postgres_and_redis_never_revives_the_session(
    postgres_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Racing A's load against B's delete, as two workers on PostgreSQL and Redis, never leaves the session."""
    import asyncpg

    table = f"asession_race_{uuid.uuid4().hex[:12]}"
    written: list[str] = []
    try:
        async with (
            CachedDatabaseBackend(DatabaseBackend(postgres_url, table=table), CacheBackend(redis_url)) as a,
            CachedDatabaseBackend(DatabaseBackend(postgres_url, table=table), CacheBackend(redis_url)) as b,
        ):
            try:
                assert await race_deletes(a, b, monkeypatch, written) == []
            finally:
                entries = a.cache.entries
                for key in written:
                    await entries.delete(ENTRY_PREFIX + keys.storage_key(key))
    finally:
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await connection.close()
