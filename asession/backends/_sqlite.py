"""The SQLite dialect of DatabaseBackend: aiosqlite for writes, a non-blocking read connection for reads.

Writes go through one aiosqlite connection, which runs each call on its own thread so that waiting
for another process's write lock (up to ``busy_timeout``) never stalls the event loop. Every write is
exactly one such call: the connection is in autocommit mode (no separate ``commit()``), and ``rowcount``
is read from the cursor ``execute`` returns.

Reads skip the thread. A hop to aiosqlite's thread and back costs tens of microseconds, ten times a
primary-key lookup in a warm database, so in WAL mode reads run on a second, read-only connection
directly in the event loop. WAL readers never wait for writers, and this connection has no busy
timeout: whenever SQLite would have to wait (a checkpoint resetting the log, recovery after a crash)
it reports "busy" at once and the read falls back to the aiosqlite thread. Every read is its own
transaction that starts after the awaited writes of this process committed, so a session saved by
one request is visible to the next. ``synchronous=NORMAL`` is WAL's recommended setting: durable
across crashes of the application, only a power loss may drop the last commits.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from asession.backends.db import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured, SessionError

__all__ = ["SQLiteDriver"]

#: The page cache, in KiB, that :meth:`SQLiteDriver.clear_expired` may use while it deletes.
_CLEAR_CACHE_KIB = 128 * 1024


class SQLiteDriver(Driver):
    """A SQLite file in WAL mode: one aiosqlite connection for writes, one read-only connection for reads."""

    def __init__(self, path: str, table: str, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.sql = Statements.build(table, placeholder="?", float_type="REAL")
        self._connection: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise BackendUnavailableError(f"The SQLite session database {self.path!r} is not open.")
        return self._connection

    async def open(self) -> None:
        try:
            # isolation_level=None: autocommit, each statement is its own transaction.
            connection = await aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise await asyncio.to_thread(self._open_error, exc) from exc
        try:
            mode = list(await connection.execute_fetchall("PRAGMA journal_mode = WAL"))[0][0]
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute(self.sql.create_table)
            await connection.execute(self.sql.create_index)
            # Only WAL lets a reader proceed without waiting; ':memory:' and '' are private to one connection.
            if str(mode).lower() == "wal" and self.path not in (":memory:", ""):
                self._reader = await asyncio.to_thread(self._connect_reader)
        except sqlite3.Error as exc:
            await connection.close()
            raise BackendUnavailableError(
                f"Cannot prepare the SQLite session database {self.path!r}: {exc}. Check that it is a writable "
                "SQLite file."
            ) from exc
        self._connection = connection

    def _open_error(self, exc: sqlite3.Error) -> SessionError:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            return ImproperlyConfigured(
                f"Cannot create the SQLite session database {self.path!r}: the directory {directory!r} "
                "doesn't exist. Create it or choose another path."
            )
        return BackendUnavailableError(f"Cannot open the SQLite session database {self.path!r}: {exc}.")

    def _connect_reader(self) -> sqlite3.Connection:
        # timeout=0: report "busy" at once instead of waiting in the event loop.
        reader = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = 1")
        return reader

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        connection, self._connection = self._connection, None
        if reader is not None:
            reader.close()
        if connection is not None:
            await connection.close()

    async def _read(self, sql: str, parameters: tuple[str, float]) -> Sequence[Any] | None:
        """The first row of a query, on the read connection, or on the write thread when SQLite is busy."""
        reader = self._reader
        if reader is not None:
            try:
                rows = reader.execute(sql, parameters).fetchall()
            except sqlite3.OperationalError:
                pass  # busy, most likely; the write thread waits for it, or raises what is really wrong
            else:
                return rows[0] if rows else None
        for row in await self.connection.execute_fetchall(sql, parameters):
            return tuple(row)
        return None

    async def load(self, skey: str, now: float) -> str | None:
        row = await self._read(self.sql.load, (skey, now))
        return None if row is None else str(row[0])

    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        row = await self._read(self.sql.load_entry, (skey, now))
        return None if row is None else (str(row[0]), float(row[1]))

    async def exists(self, skey: str, now: float) -> bool:
        return await self._read(self.sql.exists, (skey, now)) is not None

    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        await self.connection.execute_fetchall(self.sql.save, (skey, payload, expire_at))

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        cursor = await self.connection.execute(self.sql.create, (skey, payload, expire_at, now))
        return cursor.rowcount > 0

    async def delete(self, skey: str) -> None:
        await self.connection.execute_fetchall(self.sql.delete, (skey,))

    async def clear_expired(self, now: float) -> int:
        # Deleting rows walks the primary-key index in random order, so a large backlog runs about twice
        # as fast with a page cache that holds the index (measured on a million rows). The cache grows
        # only as far as the database needs and shrinks back afterwards.
        connection = self.connection
        previous = list(await connection.execute_fetchall("PRAGMA cache_size"))[0][0]
        await connection.execute_fetchall(f"PRAGMA cache_size = -{_CLEAR_CACHE_KIB}")
        try:
            cursor = await connection.execute(self.sql.clear_expired, (now,))
            return cursor.rowcount
        finally:
            await connection.execute_fetchall(f"PRAGMA cache_size = {int(previous)}")
