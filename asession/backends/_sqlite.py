"""The SQLite dialect of DatabaseBackend: aiosqlite for writes, grouped into batches; a non-blocking read connection.

Writes go through one aiosqlite connection, which runs each call on its own thread so that waiting
for another process's write lock (up to ``busy_timeout``) never stalls the event loop.

**Group commit.** Saves, creates and deletes are queued instead of each making its own trip to that
thread and its own WAL commit. The queue is handed to the thread as one call when the event loop gets
to it (the next loop iteration) or, while a batch is being written, as soon as that batch finishes: so
the writes submitted in one loop iteration, or during one commit, share one trip and one commit. A
batch holds at most :data:`MAX_BATCH` writes; one write alone runs as a single autocommit statement,
as before. Several run as ``BEGIN IMMEDIATE``, each statement in submission order (two saves of one
key: the later wins), ``COMMIT``. ``BEGIN IMMEDIATE`` takes the write lock up front, waiting up to
``busy_timeout`` for another process; a batch therefore waits once, not once per write.

What a caller is told:

- ``save`` returns, and ``create`` reports whether it inserted (each statement keeps its own row
  count), only after the ``COMMIT`` succeeded: a write that was reported done is committed, and a
  read that starts afterwards, on the read connection too, sees it.
- A statement that fails on its own (a constraint, a value SQLite refuses) leaves the transaction
  open, SQLite having undone just that statement; only its caller gets the error, the others commit.
- When the batch as a whole fails (busy beyond ``busy_timeout``, an I/O error, a failed ``COMMIT``,
  anything that ends the transaction), it is rolled back and every caller of that batch gets the
  original exception (which :class:`~asession.backends.base.SessionBackend` reports as
  ``BackendUnavailableError``): a write reported failed was not committed.
- A caller cancelled before its batch started is dropped from it; one cancelled while its batch runs
  does not stop the batch (its write may be committed), and the other callers get their answers.
- :meth:`SQLiteDriver.close` writes what is queued and waits for the batch in progress before closing
  the connection. If ``close()`` itself is cancelled, queued writes that had not started fail with
  ``BackendUnavailableError``.

Reads skip the thread. A hop to aiosqlite's thread and back costs tens of microseconds, ten times a
primary-key lookup in a warm database, so in WAL mode reads run on a second, read-only connection
directly in the event loop. WAL readers never wait for writers, and this connection has no busy
timeout: whenever SQLite would have to wait (a checkpoint resetting the log, recovery after a crash)
it reports "busy" at once and the read falls back to the aiosqlite thread. Every read is its own
transaction that starts after the awaited writes of this process committed, so a session saved by
one request is visible to the next. The read connection memory-maps the first 256 MiB of the file
(``PRAGMA mmap_size``; it only ever reads through the map), so a lookup in a store larger than its page
cache costs little more than in a small one while the operating system keeps the file cached; pages
past 256 MiB and pages still in the WAL are read as before. ``synchronous=NORMAL`` is WAL's recommended setting:
durable across crashes of the application, only a power loss may drop the last commits. Batching
changes none of this: a batch is one WAL commit with the same durability as a single write.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiosqlite

from asession.backends.db import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured, SessionError

__all__ = ["MAX_BATCH", "SQLiteDriver"]

#: The page cache, in KiB, that :meth:`SQLiteDriver.clear_expired` may use while it deletes.
_CLEAR_CACHE_KIB = 128 * 1024
#: How much of the database file the read connection maps into memory: a page missing from its page
#: cache then costs no system call and no copy. Measured on a million sessions (a 300 MB file): a
#: lookup of a random session 8.8 -> 7.3 µs of CPU; a larger page cache did not help.
_READ_MMAP_BYTES = 256 * 1024 * 1024
#: The most writes one transaction commits; the rest wait for the next batch.
MAX_BATCH = 256

_Statement = tuple[str, tuple[Any, ...]]
#: What a batch gives back per statement: its row count, or the exception that failed only it.
_Outcome = int | Exception


def _run_batch(writer: aiosqlite.Connection, statements: list[_Statement]) -> list[_Outcome]:
    """Run ``statements`` in one transaction on aiosqlite's thread; raise when the batch as a whole fails."""
    connection = writer._conn
    if len(statements) == 1:
        sql, parameters = statements[0]
        return [connection.execute(sql, parameters).rowcount]
    connection.execute("BEGIN IMMEDIATE")
    try:
        outcomes: list[_Outcome] = []
        for sql, parameters in statements:
            try:
                outcomes.append(connection.execute(sql, parameters).rowcount)
            except sqlite3.OperationalError:
                raise  # busy, I/O, disk full: the transaction may be gone
            except Exception as exc:
                # SQLite undid this statement and kept the transaction, unless the error ended it.
                if not connection.in_transaction:
                    raise
                outcomes.append(exc)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    return outcomes


def _copy_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one more caller, so that callers do not share (and extend) one traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # pragma: no cover - an exception class that cannot be rebuilt from its args
        return exc
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    return clone.with_traceback(exc.__traceback__)


class SQLiteDriver(Driver):
    """A SQLite file in WAL mode: one aiosqlite connection for writes, one read-only connection for reads."""

    def __init__(self, path: str, table: str, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.sql = Statements.build(table, placeholder="?", float_type="REAL")
        self._connection: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        #: Writes waiting for the next batch: statement, parameters, the caller's future.
        self._pending: deque[tuple[str, tuple[Any, ...], asyncio.Future[int]]] = deque()
        #: The batch running on aiosqlite's thread, if any.
        self._batch: asyncio.Task[list[_Outcome]] | None = None
        #: The scheduled start of the next batch, if any.
        self._kick: asyncio.Handle | None = None

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise self._not_open()
        return self._connection

    def _not_open(self) -> BackendUnavailableError:
        return BackendUnavailableError(f"The SQLite session database {self.path!r} is not open.")

    async def open(self) -> None:
        try:
            # isolation_level=None: autocommit; batches open their transaction with BEGIN IMMEDIATE.
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
        reader.execute(f"PRAGMA mmap_size = {_READ_MMAP_BYTES}")
        return reader

    async def close(self) -> None:
        try:
            # Write what is queued and wait for the batch in progress; no new write can be queued meanwhile,
            # the backend being closed already.
            while self._batch is not None or self._pending:
                if self._batch is None:
                    self._start_batch()
                    continue
                await asyncio.wait([self._batch])
        finally:
            while self._pending:  # only when close() was cancelled while waiting
                future = self._pending.popleft()[2]
                if not future.done():
                    future.set_exception(
                        BackendUnavailableError(
                            f"The SQLite session database {self.path!r} was closed before this write."
                        )
                    )
            reader, self._reader = self._reader, None
            connection, self._connection = self._connection, None
            if reader is not None:
                reader.close()
            if connection is not None:
                # aiosqlite runs this after the batch already handed to its thread, if any.
                await connection.close()

    # -- writes: grouped into batches -----------------------------------------------------------------------

    async def _write(self, sql: str, parameters: tuple[Any, ...]) -> int:
        """Queue one statement for the next batch and return its row count once the batch committed."""
        if self._connection is None:  # nothing would ever start the batch
            raise self._not_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((sql, parameters, future))
        if self._batch is None and self._kick is None:
            self._kick = loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        """Hand up to MAX_BATCH queued writes to aiosqlite's thread as one call."""
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        connection = self._connection
        if self._batch is not None or connection is None:
            return
        batch: list[asyncio.Future[int]] = []
        statements: list[_Statement] = []
        pending = self._pending
        while pending and len(batch) < MAX_BATCH:
            sql, parameters, future = pending.popleft()
            if not future.done():  # a caller cancelled before its write started is dropped
                batch.append(future)
                statements.append((sql, parameters))
        if not batch:
            return
        # aiosqlite has no public "run this function on your thread"; _execute is that, in every release
        # this package supports (>= 0.20).
        execute: Callable[..., Coroutine[Any, Any, list[_Outcome]]] = connection._execute
        task = asyncio.get_running_loop().create_task(execute(_run_batch, connection, statements))
        task.add_done_callback(lambda task: self._finish_batch(task, batch))
        self._batch = task

    def _finish_batch(self, task: asyncio.Task[list[_Outcome]], batch: list[asyncio.Future[int]]) -> None:
        """Give each caller of a finished batch its row count or error, then start the next batch."""
        self._batch = None
        if task.cancelled():  # the loop is shutting down; whether the batch committed is unknown
            for future in batch:
                future.cancel()
        elif (error := task.exception()) is not None:
            for index, future in enumerate(batch):
                if not future.done():
                    future.set_exception(error if index == 0 else _copy_error(error))
        else:
            for future, outcome in zip(batch, task.result(), strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        if self._pending and self._kick is None and self._connection is not None:
            self._kick = asyncio.get_running_loop().call_soon(self._start_batch)

    # -- reads ------------------------------------------------------------------------------------------------

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
        await self._write(self.sql.save, (skey, payload, expire_at))

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        return await self._write(self.sql.create, (skey, payload, expire_at, now)) > 0

    async def delete(self, skey: str) -> None:
        await self._write(self.sql.delete, (skey,))

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
