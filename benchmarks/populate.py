"""Bulk pre-population of the SQLite, PostgreSQL and Redis stores for the scaling runs.

Rows are written straight into the store (one SQLite transaction, PostgreSQL ``COPY``, pipelined Redis
``SET``), in exactly the format asession's backends write:

* ``DatabaseBackend`` (``asession/backends/db.py``): table ``asession_sessions`` with ``session_key`` =
  sha256 hex of the session key, ``session_data`` = the JSON text, ``expire_at`` = epoch seconds.
* ``CacheBackend`` on Redis (``asession/backends/cache.py``): key ``asession:<sha256 hex>``, value the JSON
  text, TTL the expiry age.

The schema is created by the backend itself (``open()``), and every fill ends by loading one of the new
sessions back through the backend, so a change of storage format fails loudly here instead of measuring
misses. Session ``i`` has the cookie value :func:`bench_key` (i).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PostgresStore", "RedisStore", "SQLiteStore", "bench_key", "session_data", "write_keys_file"]

TABLE = "asession_sessions"
REDIS_PREFIX = "asession:"
LIVE_AGE = 14 * 24 * 3600
_BATCH = 20_000


def bench_key(i: int) -> str:
    """The session key (cookie value) of pre-populated session ``i``: 32 characters of ``[a-z0-9]``."""
    return f"bench{i:027d}"


def _skey(i: int) -> str:
    return hashlib.sha256(bench_key(i).encode("ascii")).hexdigest()


def session_data(payload_bytes: int = 0) -> dict[str, Any]:
    """What a pre-populated session holds: the counter, plus padding to reach the payload size."""
    data: dict[str, Any] = {"counter": 0}
    if payload_bytes:
        data["payload"] = "x" * payload_bytes
    return data


def _payload(payload_bytes: int) -> str:
    from asession import serializers

    return serializers.dumps(session_data(payload_bytes))


def write_keys_file(path: Path, count: int, sample: int = 20_000, seed: int = 1) -> Path:
    """Write up to ``sample`` keys drawn uniformly from sessions ``0 .. count-1``, one a line, for wrk."""
    rng = random.Random(seed)
    indices = rng.sample(range(count), min(count, sample))
    path.write_text("".join(bench_key(i) + "\n" for i in indices))
    return path


async def _check_loads(backend: Any, i: int, payload_bytes: int, expired: bool) -> None:
    await backend.open()
    try:
        loaded = await backend.load(bench_key(i))
    finally:
        await backend.close()
    expected = None if expired else session_data(payload_bytes)
    if loaded != expected:
        raise RuntimeError(
            f"{backend!r} loaded {str(loaded)[:80]!r} for a pre-populated session, expected {str(expected)[:80]!r}: "
            "the storage format in benchmarks/populate.py no longer matches the backend's."
        )


class SQLiteStore:
    """A SQLite file filled through ``sqlite3`` in one transaction per fill."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def backend(self) -> Any:
        from asession.backends.db import DatabaseBackend

        return DatabaseBackend(str(self.path))

    async def prepare(self) -> None:
        """Create the file, schema and index the way the backend does (WAL mode included)."""
        backend = self.backend()
        await backend.open()
        await backend.close()

    def _rows(self, start: int, stop: int, payload: str, expire_at: float) -> Iterator[tuple[str, str, float]]:
        for i in range(start, stop):
            yield (_skey(i), payload, expire_at)

    async def fill(self, start: int, stop: int, payload_bytes: int = 0, expired: bool = False) -> None:
        expire_at = time.time() + (-3600 if expired else LIVE_AGE)
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous = OFF")
            connection.execute("BEGIN")
            connection.executemany(
                f'INSERT OR REPLACE INTO "{TABLE}" (session_key, session_data, expire_at) VALUES (?, ?, ?)',
                self._rows(start, stop, _payload(payload_bytes), expire_at),
            )
            connection.execute("COMMIT")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()
        await _check_loads(self.backend(), start, payload_bytes, expired)

    async def clear(self) -> None:
        _remove_sqlite_files(self.path)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class PostgresStore:
    """A PostgreSQL database (a dedicated one: the harness creates and drops it) filled with ``COPY``."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    def backend(self) -> Any:
        from asession.backends.db import DatabaseBackend

        return DatabaseBackend(self.url, min_pool_size=1, max_pool_size=2)

    async def prepare(self) -> None:
        backend = self.backend()
        await backend.open()
        await backend.close()
        await self.clear()

    async def fill(self, start: int, stop: int, payload_bytes: int = 0, expired: bool = False) -> None:
        import asyncpg

        expire_at = time.time() + (-3600 if expired else LIVE_AGE)
        payload = _payload(payload_bytes)
        connection = await asyncpg.connect(self.url)
        try:
            for low in range(start, stop, _BATCH * 5):
                high = min(stop, low + _BATCH * 5)
                await connection.copy_records_to_table(
                    TABLE,
                    records=[(_skey(i), payload, expire_at) for i in range(low, high)],
                    columns=["session_key", "session_data", "expire_at"],
                )
            await connection.execute(f'ANALYZE "{TABLE}"')
        finally:
            await connection.close()
        await _check_loads(self.backend(), start, payload_bytes, expired)

    async def clear(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(f'TRUNCATE "{TABLE}"')
        finally:
            await connection.close()


class RedisStore:
    """A dedicated Redis database (``/14`` by default) filled with pipelined ``HSET`` and ``EXPIRE``.

    Sessions are stored as asession stores them: one hash per session, each field a key's JSON text and
    its value the value's JSON (``asession/backends/cache.py``), so the scaling runs measure the load path
    of today's sessions, not the fallback for sessions stored as strings by an earlier version.
    """

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url

    def backend(self) -> Any:
        from asession.backends.cache import CacheBackend

        return CacheBackend(self.url)

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    async def prepare(self) -> None:
        await self.clear()

    async def fill(self, start: int, stop: int, payload_bytes: int = 0, expired: bool = False) -> None:
        if expired:
            raise ValueError("Redis drops expired sessions itself; there is nothing to pre-populate.")
        from json.encoder import encode_basestring

        from asession import serializers

        data = session_data(payload_bytes)
        fields = {encode_basestring(key): serializers.dumps_value(value) for key, value in data.items()} or {"": ""}
        client = self._client()
        try:
            for low in range(start, stop, _BATCH):
                pipe = client.pipeline(transaction=False)
                for i in range(low, min(stop, low + _BATCH)):
                    pipe.hset(REDIS_PREFIX + _skey(i), mapping=fields)
                    pipe.expire(REDIS_PREFIX + _skey(i), LIVE_AGE)
                pipe.execute()
        finally:
            client.close()
        await _check_loads(self.backend(), start, payload_bytes, expired)

    def count(self) -> int:
        client = self._client()
        try:
            return int(client.dbsize())
        finally:
            client.close()

    async def clear(self) -> None:
        client = self._client()
        try:
            client.flushdb()
        finally:
            client.close()
