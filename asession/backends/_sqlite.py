"""The SQLite dialect of DatabaseBackend: one writer thread of its own, writes grouped into batches; reads in the loop.

Writes go through one plain ``sqlite3`` connection that lives on one thread of this driver (the *writer
thread*), so that waiting for another process's write lock (up to ``busy_timeout``) never stalls the event
loop. The thread runs one job at a time, in the order submitted, and hands each result back to the event
loop with ``loop.call_soon_threadsafe``. Owning the thread is what lets a whole batch, and the read, merge
and write of an update, run as one call on it: aiosqlite's public API runs one SQL call per trip, and
grouping went through its private ``Connection._execute``. The connection is only ever used on its thread.
The thread is a daemon (an application that never closes its backend still exits; SQLite's journal undoes
a transaction cut short) and :meth:`SQLiteDriver.close` ends it.

**Group commit.** Saves, creates, deletes and updates are queued instead of each making its own trip to
that thread and its own WAL commit. The queue is handed to the thread as one call when the event loop gets
to it (the next loop iteration) or, while a batch is being written, as soon as that batch finishes: so
the writes submitted in one loop iteration, or during one commit, share one trip and one commit. A
batch holds at most :data:`MAX_BATCH` writes; one statement alone runs as a single autocommit statement.
Anything else runs as ``BEGIN IMMEDIATE``, each write in submission order (two saves of one key: the
later wins), ``COMMIT``. ``BEGIN IMMEDIATE`` takes the write lock up front, waiting up to
``busy_timeout`` for another process; a batch therefore waits once, not once per write.

**Updates** (:meth:`SQLiteDriver.update`, a request's changes merged into the stored session) are batch
items like statements. On the writer thread, inside the batch's transaction, an update reads the live row
of its key, calls ``merge`` on it (the backend's pure Python merge: no I/O, no clock) and writes the result.
It therefore sees the writes queued before it in the same batch, and nothing can write between its read
and its write: this process's writes all run on this thread, and other processes wait for the write
lock. An update alone runs in its own ``BEGIN IMMEDIATE ... COMMIT``.

What a caller is told:

- ``save`` returns, ``create`` reports whether it inserted (each statement keeps its own row count) and
  ``update`` returns the stored payload only after the ``COMMIT`` succeeded: a write that was reported
  done is committed, and a read that starts afterwards, on the read connection too, sees it.
- A statement that fails on its own (a constraint, a value SQLite refuses) leaves the transaction
  open, SQLite having undone just that statement; only its caller gets the error, the others commit.
  So does an update whose merge raises (no live session, over ``max_size``): it wrote nothing, and its
  caller gets the merge's exception unchanged.
- When the batch as a whole fails (busy beyond ``busy_timeout``, an I/O error, a failed ``COMMIT``,
  anything that ends the transaction), it is rolled back and every caller of that batch gets the
  original exception (which :class:`~asession.backends.base.SessionBackend` reports as
  ``BackendUnavailableError``): a write reported failed was not committed.
- A caller cancelled before its write ran is dropped: before its batch started, or while the batch
  waited for the write lock (a request answered "unavailable" by ``store_timeout`` does not write
  seconds later, over what later requests of the session stored, perhaps through another process).
  One cancelled while its write runs may still be committed. The other callers get their answers.
- :meth:`SQLiteDriver.close` writes what is queued and waits for the batch in progress, then closes the
  connections and ends the thread. If ``close()`` itself is cancelled, queued writes that had not started
  fail with ``BackendUnavailableError``; the thread still ends after the batch in progress.

Reads skip the thread. A hop to a thread and back costs tens of microseconds, ten times a primary-key
lookup in a warm database, so in WAL mode reads run on a second, read-only connection directly in the
event loop. WAL readers never wait for writers, and this connection has no busy timeout: whenever SQLite
would have to wait (a checkpoint resetting the log, recovery after a crash) it reports "busy" at once and
the read falls back to the writer thread. Every read is its own transaction that starts after the awaited
writes of this process committed, so a session saved by one request is visible to the next. The read
connection memory-maps the first 256 MiB of the file (``PRAGMA mmap_size``; it only ever reads through the
map), so a lookup in a store larger than its page cache costs little more than in a small one while the
operating system keeps the file cached; pages past 256 MiB and pages still in the WAL are read as before.
``synchronous=NORMAL`` is WAL's recommended setting: durable across crashes of the application, only a
power loss may drop the last commits. Batching changes none of this: a batch is one WAL commit with the
same durability as a single write.

**Opening.** A database file that :meth:`SQLiteDriver.open` creates is created readable and writable by
its owner only (0600) before SQLite opens it; SQLite gives the ``-wal`` and ``-shm`` files it creates the
database file's permissions, so sessions are never readable by other local users. An existing file keeps
its permissions. Switching a file to WAL needs an exclusive lock, and SQLite reports "database is locked"
at once, without waiting ``busy_timeout``, when another connection holds the write lock of a file still
in rollback mode (workers opening a fresh file together); open therefore tries again, on the writer
thread, until ``busy_timeout`` has passed, then raises ``BackendUnavailableError``.

``command_timeout`` of :class:`~asession.backends.db.DatabaseBackend` does not apply here: every wait of
this driver is for a SQLite lock, bounded by ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from asession.backends._driver import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured, SessionError

__all__ = ["MAX_BATCH", "WRITER_THREAD_NAME", "SQLiteDriver"]

T = TypeVar("T")

#: The page cache, in KiB, that :meth:`SQLiteDriver.clear_expired` may use while it deletes.
_CLEAR_CACHE_KIB = 128 * 1024
#: How much of the database file the read connection maps into memory: a page missing from its page
#: cache then costs no system call and no copy. Measured on a million sessions (a 300 MB file): a
#: lookup of a random session 8.8 -> 7.3 µs of CPU; a larger page cache did not help.
_READ_MMAP_BYTES = 256 * 1024 * 1024
#: The most writes one transaction commits; the rest wait for the next batch.
MAX_BATCH = 256
#: The writer thread's name, followed by a space and the database path.
WRITER_THREAD_NAME = "asession-sqlite-writer"
#: The longest pause, in seconds, between two attempts to prepare a database another connection has locked.
_OPEN_RETRY_MAX_DELAY = 0.05
#: Primary result codes of a lock held by another connection (SQLITE_BUSY) or in a shared cache (SQLITE_LOCKED).
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

_Statement = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class _Update:
    """An update as a batch item: the live row of ``skey`` read with ``select``, merged, written with ``write``."""

    select: str
    write: str
    skey: str
    merge: Callable[[str | None], str]
    expire_at: float
    now: float

    def run(self, connection: sqlite3.Connection) -> str:
        """Read, merge and write, on the writer thread inside the batch's transaction; return the payload."""
        row = connection.execute(self.select, (self.skey, self.now)).fetchone()
        payload = self.merge(None if row is None else row[0])
        connection.execute(self.write, (self.skey, payload, self.expire_at))
        return payload


_Item = _Statement | _Update
#: What a batch gives back per item: a statement's row count, an update's payload, the exception that
#: failed only that item, or ``None`` for an item not run because its caller was cancelled first.
_Outcome = int | str | Exception | None
#: A function for the writer thread, its arguments, the future for its outcome and that future's loop.
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


def _run_batch(
    connection: sqlite3.Connection, items: list[_Item], callers: list[asyncio.Future[Any]]
) -> list[_Outcome]:
    """Run ``items`` in one transaction on the writer thread; raise when the batch as a whole fails.

    ``callers`` are the items' futures, only looked at: an item whose caller was cancelled by the time
    the item's turn comes (typically while ``BEGIN IMMEDIATE`` waited for another process's lock) is
    not run, so that a request already answered "unavailable" does not write seconds later, over what
    later requests stored. A cancellation that happens just after the check may still see its write committed.
    """
    if len(items) == 1 and not isinstance(items[0], _Update):
        if callers[0].done():
            return [None]
        sql, parameters = items[0]
        return [connection.execute(sql, parameters).rowcount]
    connection.execute("BEGIN IMMEDIATE")
    try:
        outcomes: list[_Outcome] = []
        for item, caller in zip(items, callers, strict=True):
            if caller.done():  # reading a future's state from this thread is safe; setting it is not
                outcomes.append(None)
                continue
            try:
                if isinstance(item, _Update):
                    outcomes.append(item.run(connection))
                else:
                    outcomes.append(connection.execute(item[0], item[1]).rowcount)
            except sqlite3.OperationalError:
                raise  # busy, I/O, disk full: the transaction may be gone
            except Exception as exc:
                # SQLite undid this statement and kept the transaction, unless the error ended it. A merge
                # that raised wrote nothing.
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


def _first_row(connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> Sequence[Any] | None:
    row = connection.execute(sql, parameters).fetchone()
    return None if row is None else tuple(row)


def _clear_expired(connection: sqlite3.Connection, sql: str, now: float) -> int:
    # Deleting rows walks the primary-key index in random order, so a large backlog runs about twice
    # as fast with a page cache that holds the index (measured on a million rows). The cache grows
    # only as far as the database needs and shrinks back afterwards.
    previous = connection.execute("PRAGMA cache_size").fetchone()[0]
    connection.execute(f"PRAGMA cache_size = -{_CLEAR_CACHE_KIB}")
    try:
        return connection.execute(sql, (now,)).rowcount
    finally:
        connection.execute(f"PRAGMA cache_size = {int(previous)}")


def _create_private(path: str) -> None:
    """Create ``path`` empty and readable by its owner only, unless something already exists there.

    SQLite treats an empty file as a new database and gives the ``-wal`` and ``-shm`` files it creates
    the database file's permissions. Any failure (a missing directory, no permission) is left for
    SQLite to report when it opens the path.
    """
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _milliseconds(seconds: float) -> int:
    """``seconds`` as a value for ``PRAGMA busy_timeout``: whole milliseconds, 0 to the largest C int."""
    return int(min(seconds * 1000, 2**31 - 1)) if seconds > 0 else 0


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says that another connection holds a lock, as opposed to a real failure."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "is locked" in str(exc)


def _copy_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one more caller, so that callers do not share (and extend) one traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # pragma: no cover - an exception class that cannot be rebuilt from its args
        return exc
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    return clone.with_traceback(exc.__traceback__)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Hand a job's outcome to its future, in the event loop; a caller that was cancelled meanwhile gets nothing."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _Writer:
    """The writer thread: runs jobs one at a time, in submission order, and owns the connections it opened.

    A job is a plain function and its arguments; its result or exception goes to an asyncio future of the
    loop that submitted it, through ``call_soon_threadsafe``. The write connection is opened by a job and
    closed by :meth:`stop` on this thread, after every job submitted before; the read connection, used in
    the event loop, is closed there too.
    """

    def __init__(self, name: str) -> None:
        #: The write connection, set by the job that opens it; used on this thread only.
        self.connection: sqlite3.Connection | None = None
        #: The read-only connection the event loop reads through (WAL mode only).
        self.reader: sqlite3.Connection | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._running = True
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def submit(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``function(*args)`` for the thread; the returned future gets its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, args, future, loop))
        return future

    async def stop(self) -> None:
        """Close both connections after the jobs already submitted, and end the thread."""
        await self.submit(self._finish)
        # The thread returns right after handing over that last outcome; the join waits for no job.
        self.thread.join()

    def _finish(self) -> None:
        self._running = False  # the thread returns after this job, whatever closing raises
        writer, reader, self.connection, self.reader = self.connection, self.reader, None, None
        try:
            if writer is not None:
                writer.close()
        finally:
            if reader is not None:
                reader.close()

    def _work(self) -> None:
        jobs = self._jobs
        while self._running:
            function, args, future, loop = jobs.get()
            result: Any = None
            error: BaseException | None = None
            try:
                result = function(*args)
            except BaseException as exc:  # whatever it is, it is the caller's outcome; the thread goes on
                error = exc
            with contextlib.suppress(RuntimeError):  # the event loop was closed: nobody waits for this outcome
                loop.call_soon_threadsafe(_settle, future, result, error)
            # Hold no reference to the last job's data while waiting for the next one.
            del function, args, future, loop, result, error


class SQLiteDriver(Driver):
    """A SQLite file in WAL mode: one writer thread with its own connection, one read-only connection for reads."""

    def __init__(self, path: str, table: str, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.sql = Statements.build(table, placeholder="?", float_type="REAL")
        self._writer: _Writer | None = None
        #: The writer thread's connection, handed to its jobs (and used only there).
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        #: Writes waiting for the next batch: the item and its caller's future.
        self._pending: deque[tuple[_Item, asyncio.Future[Any]]] = deque()
        #: The outcome of the batch running on the writer thread, if any.
        self._batch: asyncio.Future[list[_Outcome]] | None = None
        #: The scheduled start of the next batch, if any.
        self._kick: asyncio.Handle | None = None

    def _not_open(self) -> BackendUnavailableError:
        return BackendUnavailableError(f"The SQLite session database {self.path!r} is not open.")

    async def open(self) -> None:
        writer = _Writer(f"{WRITER_THREAD_NAME} {self.path}")
        try:
            await writer.submit(self._open_on_writer, writer)
        except BaseException:
            await writer.stop()
            raise
        self._writer, self._connection, self._reader = writer, writer.connection, writer.reader

    def _open_on_writer(self, writer: _Writer) -> None:
        """Open the write connection, prepare the database and open the read connection; on the writer thread."""
        in_memory = self.path in (":memory:", "")
        deadline = time.monotonic() + self.busy_timeout
        if not in_memory:
            _create_private(self.path)
        try:
            # isolation_level=None: autocommit; batches open their transaction with BEGIN IMMEDIATE.
            writer.connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        try:
            mode = self._prepare(writer.connection, deadline)
            # Only WAL lets a reader proceed without waiting; ':memory:' and '' are private to one connection.
            if mode.lower() == "wal" and not in_memory:
                writer.reader = self._connect_reader()
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise BackendUnavailableError(
                    f"Cannot prepare the SQLite session database {self.path!r}: {exc}. Another connection held "
                    f"its lock for longer than busy_timeout={self.busy_timeout!r} seconds."
                ) from exc
            raise BackendUnavailableError(
                f"Cannot prepare the SQLite session database {self.path!r}: {exc}. Check that it is a writable "
                "SQLite file."
            ) from exc

    def _prepare(self, connection: sqlite3.Connection, deadline: float) -> str:
        """Switch to WAL and create the table and index, trying again while another connection holds a lock.

        Each attempt waits for locks no longer than what is left until ``deadline`` (a ``time.monotonic()``
        value), so that open gives up after about ``busy_timeout``. Returns the journal mode. Runs on the
        writer thread, which has nothing else to do until open returns, so it simply sleeps between attempts.
        """
        delay = 0.001
        while True:
            left = deadline - time.monotonic()
            connection.execute(f"PRAGMA busy_timeout = {_milliseconds(left)}")
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                connection.execute("PRAGMA synchronous = NORMAL")
                connection.execute(self.sql.create_table)
                connection.execute(self.sql.create_index)
            except sqlite3.Error as exc:
                left = deadline - time.monotonic()
                if not _is_busy(exc) or left <= 0:
                    raise
                time.sleep(min(delay, left))
                delay = min(delay * 2, _OPEN_RETRY_MAX_DELAY)
                continue
            connection.execute(f"PRAGMA busy_timeout = {_milliseconds(self.busy_timeout)}")
            return str(mode)

    def _open_error(self, exc: sqlite3.Error) -> SessionError:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            return ImproperlyConfigured(
                f"Cannot create the SQLite session database {self.path!r}: the directory {directory!r} "
                "doesn't exist. Create it or choose another path."
            )
        return BackendUnavailableError(f"Cannot open the SQLite session database {self.path!r}: {exc}.")

    def _connect_reader(self) -> sqlite3.Connection:
        # timeout=0: report "busy" at once instead of waiting in the event loop, where it is used.
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
                future = self._pending.popleft()[1]
                if not future.done():
                    future.set_exception(
                        BackendUnavailableError(
                            f"The SQLite session database {self.path!r} was closed before this write."
                        )
                    )
            writer, self._writer, self._connection, self._reader = self._writer, None, None, None
            if writer is not None:
                # Runs after the batch already handed to the thread, if any; then the thread ends.
                await writer.stop()

    async def run_on_writer(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` on the writer thread with the write connection, between two batches.

        For maintenance and tests (a ``PRAGMA`` of the write connection). ``function`` must leave no
        transaction open.
        """
        return await self._on_writer(function)

    def _on_writer(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        writer, connection = self._writer, self._connection
        if writer is None or connection is None:
            raise self._not_open()
        return writer.submit(function, connection, *args)

    # -- writes: grouped into batches -----------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> asyncio.Future[Any]:
        """Queue one write for the next batch; the future gets its outcome once the batch committed."""
        if self._writer is None:  # nothing would ever start the batch
            raise self._not_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if self._batch is None and self._kick is None:
            self._kick = loop.call_soon(self._start_batch)
        return future

    def _start_batch(self) -> None:
        """Hand up to MAX_BATCH queued writes to the writer thread as one job."""
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        writer, connection = self._writer, self._connection
        if self._batch is not None or writer is None or connection is None:
            return
        futures: list[asyncio.Future[Any]] = []
        items: list[_Item] = []
        pending = self._pending
        while pending and len(futures) < MAX_BATCH:
            item, future = pending.popleft()
            if not future.done():  # a caller cancelled before its write started is dropped
                futures.append(future)
                items.append(item)
        if not futures:
            return
        batch = writer.submit(_run_batch, connection, items, futures)
        batch.add_done_callback(lambda batch: self._finish_batch(batch, futures))
        self._batch = batch

    def _finish_batch(self, batch: asyncio.Future[list[_Outcome]], futures: list[asyncio.Future[Any]]) -> None:
        """Give each caller of a finished batch its outcome or error, then start the next batch.

        Nothing cancels a batch's future (its callers are cancelled instead), so it holds a result or an error.
        """
        self._batch = None
        error = batch.exception()
        if error is not None:
            for index, future in enumerate(futures):
                if not future.done():
                    future.set_exception(error if index == 0 else _copy_error(error))
        else:
            for future, outcome in zip(futures, batch.result(), strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        if self._pending and self._kick is None and self._writer is not None:
            self._kick = asyncio.get_running_loop().call_soon(self._start_batch)

    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        await self._enqueue((self.sql.save, (skey, payload, expire_at)))

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        count: int = await self._enqueue((self.sql.create, (skey, payload, expire_at, now)))
        return count > 0

    async def update(self, skey: str, merge: Callable[[str | None], str], expire_at: float, now: float) -> str:
        payload: str = await self._enqueue(
            _Update(self.sql.load_for_update, self.sql.update, skey, merge, expire_at, now)
        )
        return payload

    async def delete(self, skey: str) -> None:
        await self._enqueue((self.sql.delete, (skey,)))

    async def clear_expired(self, now: float) -> int:
        return await self._on_writer(_clear_expired, self.sql.clear_expired, now)

    # -- reads ------------------------------------------------------------------------------------------------

    async def _read(self, sql: str, parameters: tuple[str, float]) -> Sequence[Any] | None:
        """The first row of a query, on the read connection, or on the writer thread when SQLite is busy."""
        reader = self._reader
        if reader is not None:
            try:
                rows = reader.execute(sql, parameters).fetchall()
            except sqlite3.OperationalError:
                pass  # busy, most likely; the writer thread waits for it, or raises what is really wrong
            else:
                return rows[0] if rows else None
        return await self._on_writer(_first_row, sql, parameters)

    async def load(self, skey: str, now: float) -> str | None:
        row = await self._read(self.sql.load, (skey, now))
        return None if row is None else str(row[0])

    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        row = await self._read(self.sql.load_entry, (skey, now))
        return None if row is None else (str(row[0]), float(row[1]))

    async def exists(self, skey: str, now: float) -> bool:
        return await self._read(self.sql.exists, (skey, now)) is not None
