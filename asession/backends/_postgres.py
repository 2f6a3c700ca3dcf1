"""The PostgreSQL dialect of DatabaseBackend, through a pool of asyncpg connections of its own.

Each operation is one query on a pooled connection; asyncpg prepares each statement once per connection
and caches it (``statement_cache_size=0`` behind PgBouncer: unnamed statements, one more round trip each).
The pool (:class:`_Pool`) is the driver's own rather than ``asyncpg.Pool``, whose reset query on every
release, tasks per acquire and release, and proxy cost a request more than its query
(``benchmarks/PROFILE.md``). A connection the server dropped (restart, ``pg_terminate_backend``) is
replaced on a later call, and a query that hit such a connection is run again on another one, so a
database restart costs no failed request once the server is back.

Nothing waits forever. One deadline of ``command_timeout`` seconds covers an operation: waiting for a
free connection, connecting a replacement, the query and its retries. The connections carry the same
``command_timeout``, which also bounds :meth:`PostgresDriver.open`'s schema statements. A query that
times out is cancelled on the server, and the call raises once PostgreSQL has acknowledged the
cancellation (a few milliseconds; at most ``command_timeout`` more when the server stopped answering, and
then the connection is closed): a write that raised has not committed. A call whose task is cancelled
(``store_timeout``, :mod:`asession.deadline`) ends at once instead, as it did when each call ran as a task
of its own that the request stopped waiting for; its connection is settled in the background (the
cancellation acknowledged, any transaction rolled back, within ``command_timeout``, else closed) before it
is lent again. :meth:`PostgresDriver.clear_expired` is maintenance and may delete
millions of rows: it waits ``command_timeout`` for a connection and for each lock, but its DELETE may
then run up to :data:`CLEAR_EXPIRED_TIMEOUT`.

**Updates** (:meth:`PostgresDriver.update`: a request's changes merged into the session as stored now).
Updates of one session from this process take turns, so they never race each other for the row. Each
then tries a **compare-and-set**: the driver remembers the payload it last read or wrote for each session
(the request's own load, just before), merges the changes into it in Python, and writes with one
statement, ``UPDATE ... SET session_data = $merged WHERE session_key = $1 AND expire_at > $now AND
session_data = $remembered``. One round trip and no transaction held open; the ``UPDATE`` locks the row
and checks the stored text under the lock (PostgreSQL re-reads a row that a concurrent transaction
changed before deciding), so it writes only if the session is live and still exactly what the merge
started from: the result is what merging into the stored session gives. Where it changes no row (another
process wrote since, a logout deleted the session, nothing remembered), the update runs as one
transaction under the row lock: ``BEGIN``; ``SELECT session_data ... FOR UPDATE``, which waits for any
transaction holding the row; the merge; ``UPDATE``; ``COMMIT``. A concurrent ``DELETE`` either commits
first (the ``SELECT`` then finds no row, nothing is written and the update raises ``UpdateError``) or
waits for the ``COMMIT`` and deletes the merged row: a deleted session never comes back. The one deadline
of ``command_timeout`` covers each attempt, lock waits included.

A connection that died under an update: a transaction not yet committing died uncommitted, so the update
is run again, merge included, on another connection; one that dies during the ``COMMIT`` leaves the
outcome unknown, so that update raises :class:`BackendUnavailableError` instead of being run a second
time. A compare-and-set whose connection died is sent again on another connection: if the row still holds
the text it expects, the first one changed nothing and the second decides; if not, the outcome is
unknown and it raises :class:`BackendUnavailableError` too.

Why not one ``UPDATE`` with jsonb, ``(session_data::jsonb - $removed::text[]) || $changed::jsonb``: it
would save the read too, but it could not run the merge every other store runs. A corrupt stored
session must be refused and logged, never half-merged (the cast would fail the statement, or a jsonb
column would have refused the data long before); ``max_size`` must be checked on the merged result before
anything is written; and jsonb rewrites the payload (keys reordered, duplicates dropped), so the stored
text would differ from what the same session stores on SQLite or Redis. Doing all of that in SQL means a
second implementation of the merge to keep in step with ``SessionBackend._merge``. The column therefore
stays ``TEXT`` and the merge stays in Python: existing tables need no migration, not even a lock or a
rewrite of their rows, and a process running an older release keeps working against the same table. The
compare-and-set keeps the Python merge and needs no read of its own: the request's load was that read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from asession.backends._driver import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured

__all__ = ["CLEAR_EXPIRED_TIMEOUT", "CONNECT_TIMEOUT", "PostgresDriver"]

#: Seconds :meth:`PostgresDriver.open` waits for each connection, instead of asyncpg's 60.
CONNECT_TIMEOUT = 10.0
#: Seconds the DELETE of :meth:`PostgresDriver.clear_expired` may run once it holds its locks.
CLEAR_EXPIRED_TIMEOUT = 3600.0
#: Seconds an idle connection beyond ``min_pool_size`` stays open (asyncpg's pool closed them after 300 too).
IDLE_LIFETIME = 300.0
#: Payloads a driver remembers for its compare-and-set updates, and the longest one it remembers (characters):
#: at most 4 MiB per process; a session forgotten is merely updated under the row lock.
_SEEN_SIZE = 512
_SEEN_PAYLOAD = 8192
_UPDATED_ONE = "UPDATE 1"

T = TypeVar("T")

if TYPE_CHECKING:
    #: One query on a pooled connection, given the seconds it may still take.
    _Query = Callable[[asyncpg.Connection[asyncpg.Record], float], Awaitable[T]]

#: Errors of a pooled connection that the server closed while it sat idle in the pool.
_DEAD_CONNECTION = (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError, asyncpg.AdminShutdownError)

#: Errors that mean the URL names the wrong database or credentials, not that the server is down.
_CONFIGURATION_ERRORS = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
    ValueError,  # asyncpg's ClientConfigurationError: an option of the URL it cannot use
)


class _Pool:
    """Up to ``max_size`` asyncpg connections, lent one at a time; the driver's own, not ``asyncpg.Pool``.

    asyncpg's pool costs a session request more than its one query does (py-spy under load,
    ``benchmarks/PROFILE.md``): each release runs a reset query (``RESET ALL``, ``UNLISTEN *`` ...), a
    second round trip the server pays for too; each acquire with a timeout and each release run a task of
    their own (``wait_for``, ``shield``); every call goes through a proxy. The driver's statements leave
    nothing on a connection to reset (no ``SET``, ``LISTEN``, cursors or session-level locks), so this pool
    lends a free connection without awaiting anything and takes it back as it is. It keeps the rest of what
    asyncpg's pool did: connections opened on demand up to ``max_size`` (``min_size`` of them at
    :meth:`fill`), a dead one forgotten and replaced, waits for a free one bounded by the caller's deadline
    and served in order, and idle connections beyond ``min_size`` closed after :data:`IDLE_LIFETIME` seconds.

    A connection whose call was cancelled or timed out may still have a query, or asyncpg's cancel request,
    in flight: :meth:`settle` takes it back once that has ended (a ``ROLLBACK``, which asyncpg sends only
    once the cancellation is acknowledged, within ``timeout``), or closes it; :meth:`recover` does the same
    in the background, for a call that must end at once (its task was cancelled).
    """

    def __init__(
        self,
        connect: Callable[[float], Awaitable[asyncpg.Connection[asyncpg.Record]]],
        min_size: int,
        max_size: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._connect = connect
        self.min_size = min_size
        self.max_size = max_size
        #: The loop the connections run on; its clock, without asking asyncio for the running loop per call.
        self.loop = loop
        #: Free connections and the loop time each came back, the most recently used last.
        self._idle: list[tuple[asyncpg.Connection[asyncpg.Record], float]] = []
        #: Callers waiting for a connection; resolved with one, or with ``None``: a place to open one is free.
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection[asyncpg.Record] | None]] = (
            collections.deque()
        )
        #: Connections open or being opened: idle, lent, or being settled or closed.
        self.size = 0
        #: Connections lent, or being settled by :meth:`recover`.
        self._lent = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        self._next_trim = loop.time() + IDLE_LIFETIME

    # -- lending -----------------------------------------------------------------------------------------

    def take_idle(self) -> asyncpg.Connection[asyncpg.Record] | None:
        """A free open connection, without waiting; ``None`` when there is none."""
        idle = self._idle
        while idle:
            connection = idle.pop()[0]
            if not connection.is_closed():
                self._lent += 1
                return connection
            self.size -= 1  # the server closed it while it sat idle
        return None

    async def take(self, deadline: float) -> asyncpg.Connection[asyncpg.Record]:
        """A connection: a free one, a new one while fewer than ``max_size`` are open, or the next one given
        back, in the order asked for. Raises ``asyncio.TimeoutError`` when ``deadline`` (loop time) passes
        first, and what connecting raises."""
        loop = self.loop
        while True:
            if self._closing:
                raise BackendUnavailableError("The PostgreSQL session pool is closed.")
            connection = self.take_idle()
            if connection is not None:
                return connection
            if self.size < self.max_size:
                self.size += 1
                try:
                    connection = await self._connect(min(max(deadline - loop.time(), 0.001), CONNECT_TIMEOUT))
                except BaseException:
                    self.size -= 1
                    self._wake()
                    raise
                self._lent += 1
                if self._closing:
                    self.give(connection)
                    continue
                return connection
            waiter: asyncio.Future[asyncpg.Connection[asyncpg.Record] | None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection (or a free place) just as this caller was cancelled: pass it on.
                    passed = waiter.result()
                    if passed is not None:
                        self.give(passed)
                    else:
                        self._wake()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            finally:
                timer.cancel()
            if handed is not None:
                return handed  # counted as lent by give()

    def give(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        """Take back a lent connection in a clean state: no transaction, no query in flight."""
        if connection.is_closed():
            self._returned(True)
            return
        if self._closing:
            self._returned(True)
            self._in_background(_close(connection))
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)  # stays lent, to the waiter
                return
        self._lent -= 1
        now = self.loop.time()
        self._idle.append((connection, now))
        if now >= self._next_trim:
            self._trim(now)

    def discard(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        """A lent connection found dead or unusable: closed and forgotten; another is opened when needed."""
        connection.terminate()
        self._returned(True)

    def recover(self, connection: asyncpg.Connection[asyncpg.Record], timeout: float) -> None:
        """Take back a lent connection whose call was cancelled, timed out or failed inside a transaction: it
        is settled in the background (its cancellation waited for, any transaction rolled back), then lent
        again, or closed."""
        if connection.is_closed():
            self._returned(True)
            return
        self._in_background(self.settle(connection, timeout))

    async def settle(self, connection: asyncpg.Connection[asyncpg.Record], timeout: float) -> None:
        """Take back a lent connection once its pending cancellation is acknowledged and any transaction rolled
        back, within ``timeout``; else close it. For a caller that must know its query has ended."""
        try:
            # Every query first waits for asyncpg's pending cancellation, within its timeout; a ROLLBACK outside
            # a transaction only warns.
            await connection.execute("ROLLBACK", timeout=timeout)
        except asyncio.CancelledError:
            self.discard(connection)
            raise
        except Exception:
            self.discard(connection)
            return
        self.give(connection)

    def _returned(self, gone: bool) -> None:
        """A lent connection came back, and is ``gone`` (closed, or being closed)."""
        self._lent -= 1
        if gone:
            self.size -= 1
            self._wake()
        drained = self._drained
        if not self._lent and drained is not None and not drained.done():
            drained.set_result(None)

    def _wake(self) -> None:
        """Tell the first waiter that a place is free to open a connection in."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _trim(self, now: float) -> None:
        """Close idle connections unused for :data:`IDLE_LIFETIME` seconds, keeping ``min_size`` open."""
        self._next_trim = now + IDLE_LIFETIME / 4
        idle = self._idle
        while idle and self.size > self.min_size and now - idle[0][1] > IDLE_LIFETIME:
            connection = idle.pop(0)[0]
            self.size -= 1
            self._in_background(_close(connection))

    def _in_background(self, work: Coroutine[None, None, None]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- life cycle --------------------------------------------------------------------------------------

    async def fill(self) -> None:
        """Open ``min_size`` connections, and at least one (to create the table on)."""
        opened: list[asyncpg.Connection[asyncpg.Record]] = []
        try:
            for _ in range(max(self.min_size, 1)):
                opened.append(await self._connect(CONNECT_TIMEOUT))
        except BaseException:
            for connection in opened:
                connection.terminate()
            raise
        self.size += len(opened)
        now = self.loop.time()
        self._idle.extend((connection, now) for connection in opened)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        """A connection for the length of an ``async with`` block (maintenance, tests); rolled back after."""
        connection = await self.take(self.loop.time() + timeout)
        try:
            yield connection
        except BaseException:
            self.recover(connection, timeout)
            raise
        if connection.is_in_transaction():
            self.recover(connection, timeout)
        else:
            self.give(connection)

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the lent connections to come back, then close every connection."""
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(BackendUnavailableError("The PostgreSQL session pool was closed."))
        idle, self._idle = self._idle, []
        self.size -= len(idle)
        await asyncio.gather(*(_close(connection) for connection, _ in idle))
        if self._lent:
            drained = self._drained = self.loop.create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def terminate(self) -> None:
        """Close every idle connection at once (a failed :meth:`PostgresDriver.open`)."""
        self._closing = True
        idle, self._idle = self._idle, []
        self.size -= len(idle)
        for connection, _ in idle:
            connection.terminate()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


async def _close(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """Close ``connection`` politely within :data:`CONNECT_TIMEOUT`, else at once."""
    try:
        await connection.close(timeout=CONNECT_TIMEOUT)
    except Exception:
        connection.terminate()


class PostgresDriver(Driver):
    """A pool of asyncpg connections over one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        table: str,
        *,
        min_size: int,
        max_size: int,
        command_timeout: float,
        server_settings: dict[str, str],
        describe: str,
        statement_cache_size: int | None = None,
    ) -> None:
        self.url = url
        self.table = table
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = command_timeout
        self.server_settings = server_settings
        #: asyncpg's cache of named prepared statements per connection; 0 behind PgBouncer in transaction
        #: pooling, where the next transaction may run on a server connection that never prepared them.
        self.statement_cache_size = statement_cache_size
        self.describe = describe
        self.sql = Statements.build(table, placeholder="$", float_type="DOUBLE PRECISION", row_lock=" FOR UPDATE")
        self._pool: _Pool | None = None
        #: Payloads this process last read or wrote, by storage key: an update of one merges into it and
        #: writes with a compare-and-set (one round trip) before it falls back to the row lock.
        self._seen: dict[str, str] = {}
        #: Storage keys with an update of this process under way, and the updates waiting for their turn.
        self._turns: dict[str, collections.deque[asyncio.Future[None]]] = {}

    @property
    def pool(self) -> _Pool:
        if self._pool is None:
            raise BackendUnavailableError(f"The PostgreSQL session pool for {self.describe!r} is not open.")
        return self._pool

    def _connect(self, timeout: float) -> Awaitable[asyncpg.Connection[asyncpg.Record]]:
        return asyncpg.connect(
            self.url,
            timeout=timeout,
            command_timeout=self.command_timeout,
            server_settings=self.server_settings or None,
            statement_cache_size=100 if self.statement_cache_size is None else self.statement_cache_size,
        )

    async def open(self) -> None:
        pool = _Pool(self._connect, self.min_size, self.max_size, asyncio.get_running_loop())
        try:
            await pool.fill()
            async with pool.acquire(self.command_timeout) as connection:
                await self._create_table(connection)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _CONFIGURATION_ERRORS):
                raise ImproperlyConfigured(
                    f"PostgreSQL at {self.describe!r} refused the session backend: {exc}. Check the user, "
                    "password, database name and options in the URL, and that the role may create the table."
                ) from exc
            if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                raise BackendUnavailableError(
                    f"Cannot connect to PostgreSQL at {self.describe!r}: {exc!r}. Check that the server is running "
                    "and reachable."
                ) from exc
            raise
        self._pool = pool

    async def _create_table(self, connection: asyncpg.Connection[asyncpg.Record]) -> None:
        # Skip the DDL when the table exists: the application's role may lack CREATE on the schema.
        if await connection.fetchval("SELECT to_regclass($1)", f'"{self.table}"') is not None:
            return
        # Workers starting together would race on CREATE TABLE IF NOT EXISTS (it can fail with a
        # unique violation in pg_type), so they take turns on an advisory lock.
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"asession:{self.table}")
            await connection.execute(self.sql.create_table)
            await connection.execute(self.sql.create_index)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._seen.clear()
        if pool is not None:
            await pool.close(self.command_timeout)

    async def _run(self, query: _Query[T], *, retry: bool = True) -> T:
        """Run ``query`` on a pooled connection within ``command_timeout``, retried when the connection had died.

        The pool only notices that the server dropped a connection when it next uses it; each attempt
        discards one such connection, so ``max_size + 1`` attempts reach a live one (none with
        ``retry=False``). Failing to connect raises at once: that is the server being down, not a stale
        connection. The attempts share one deadline; running out of it raises
        :class:`BackendUnavailableError`. A cancelled call ends at once; its connection is settled in the
        background (:meth:`_Pool.recover`).
        """
        pool = self.pool
        loop = pool.loop
        timeout = self.command_timeout
        deadline = loop.time() + timeout
        retries = self.max_size if retry else 0
        while True:
            connection = pool.take_idle()
            if connection is None:
                try:
                    connection = await pool.take(deadline)
                except asyncio.TimeoutError as exc:
                    raise BackendUnavailableError(
                        f"No connection to PostgreSQL at {self.describe!r} was available within command_timeout="
                        f"{self.command_timeout!r} seconds: every connection of the pool (max_pool_size="
                        f"{self.max_size!r}) stayed busy, or the server did not accept a new one. Raise "
                        "max_pool_size, or look for slow queries."
                    ) from exc
                timeout = deadline - loop.time()
            try:
                # asyncpg raises TimeoutError at once when no time is left, and cancels a query that runs out.
                result = await query(connection, timeout)
            except _DEAD_CONNECTION:
                pool.discard(connection)
                if retries == 0:
                    raise
                retries -= 1
                timeout = deadline - loop.time()
                continue
            except asyncio.TimeoutError as exc:
                # asyncpg has sent PostgreSQL a cancel request. Wait for it to be acknowledged before saying
                # that the call failed: a write whose cancellation is still on its way could yet commit
                # (the lock it waited for released meanwhile), and a write that raised must not have.
                await pool.settle(connection, self.command_timeout)
                raise BackendUnavailableError(
                    f"A query on PostgreSQL at {self.describe!r} did not finish within command_timeout="
                    f"{self.command_timeout!r} seconds and was cancelled. Look for a lock held on the table "
                    f"{self.table!r}, or an overloaded server."
                ) from exc
            except asyncpg.PostgresError:
                # The server refused the statement and is ready for the next one: the connection is clean
                # unless a transaction was left open.
                if connection.is_closed() or not connection.is_in_transaction():
                    pool.give(connection)
                else:
                    pool.recover(connection, self.command_timeout)
                raise
            except BaseException:
                pool.recover(connection, self.command_timeout)
                raise
            pool.give(connection)
            return result

    def _remember(self, skey: str, payload: str) -> None:
        if len(payload) <= _SEEN_PAYLOAD and self.sql.update_if:
            seen = self._seen
            if len(seen) >= _SEEN_SIZE:
                seen.clear()
            seen[skey] = payload

    async def load(self, skey: str, now: float) -> str | None:
        sql = self.sql.load
        data: str | None = await self._run(
            lambda connection, timeout: connection.fetchval(sql, skey, now, timeout=timeout)
        )
        if data is not None and skey not in self._turns:  # an update under way may have written since
            self._remember(skey, data)
        return data

    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        sql = self.sql.load_entry
        row = await self._run(lambda connection, timeout: connection.fetchrow(sql, skey, now, timeout=timeout))
        if row is None:
            return None
        if skey not in self._turns:
            self._remember(skey, row[0])
        return (row[0], row[1])

    async def exists(self, skey: str, now: float) -> bool:
        sql = self.sql.exists
        found = await self._run(lambda connection, timeout: connection.fetchval(sql, skey, now, timeout=timeout))
        return found is not None

    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        self._seen.pop(skey, None)
        sql = self.sql.save
        await self._run(lambda connection, timeout: connection.execute(sql, skey, payload, expire_at, timeout=timeout))

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        # A retry after a connection died mid-statement may find the row this call wrote and report
        # a collision; Session then simply picks another fresh key.
        self._seen.pop(skey, None)
        sql = self.sql.create
        status = await self._run(
            lambda connection, timeout: connection.execute(sql, skey, payload, expire_at, now, timeout=timeout)
        )
        return _row_count(status) > 0

    async def update(self, skey: str, merge: Callable[[str | None], str], expire_at: float, now: float) -> str:
        turns = self._turns
        queue = turns.get(skey)
        if queue is None:
            turns[skey] = collections.deque()
        else:
            # Another update of this session from this process is under way: wait for it, so that the two
            # neither race for the row nor miss each other's compare-and-set.
            turn: asyncio.Future[None] = self.pool.loop.create_future()
            queue.append(turn)
            try:
                await turn
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._next_turn(skey)  # given the turn just as this call was cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        queue.remove(turn)
                raise
        try:
            payload = await self._update_once(skey, merge, expire_at, now)
        except BaseException:
            self._seen.pop(skey, None)
            raise
        finally:
            self._next_turn(skey)
        self._remember(skey, payload)
        return payload

    def _next_turn(self, skey: str) -> None:
        turns = self._turns
        queue = turns[skey]
        while queue:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        del turns[skey]

    async def _update_once(self, skey: str, merge: Callable[[str | None], str], expire_at: float, now: float) -> str:
        expected = self._seen.get(skey)
        if expected is not None:
            payload = await self._compare_and_set(skey, merge, expected, expire_at, now)
            if payload is not None:
                return payload
        return await self._run(partial(self._locked_update, skey, merge, expire_at, now))

    async def _compare_and_set(
        self, skey: str, merge: Callable[[str | None], str], expected: str, expire_at: float, now: float
    ) -> str | None:
        """Merge into ``expected`` and write the result only if the live row still holds ``expected``.

        One statement, one round trip, no transaction held open: the ``UPDATE`` takes the row lock and checks
        the stored text under it (PostgreSQL re-reads a row a concurrent transaction changed before it
        decides), so a parallel write or a delete since makes it change nothing. Returns the payload
        written, or ``None`` when the row holds something else, is gone or expired, or the merge refused
        ``expected``: the caller then takes the row lock and merges into what is stored.
        """
        try:
            payload = merge(expected)
        except Exception:
            return None  # a corrupt or oversized session: the locked update decides on the stored text
        sql = self.sql.update_if
        query: _Query[str] = lambda connection, timeout: connection.execute(  # noqa: E731
            sql, skey, payload, expire_at, now, expected, timeout=timeout
        )
        try:
            status = await self._run(query, retry=False)
        except _DEAD_CONNECTION:
            # The connection died with the statement: it was refused (a connection the server had closed
            # while idle) or it ran and the answer was lost. Run it again elsewhere: if the row still holds
            # the text it expects, the first one changed nothing; if not, whether it was stored is unknown.
            status = await self._run(query)
            if status != _UPDATED_ONE:
                raise BackendUnavailableError(
                    f"The connection to PostgreSQL at {self.describe!r} was lost while updating a session; "
                    "whether it was stored is unknown."
                ) from None
        return payload if status == _UPDATED_ONE else None

    async def _locked_update(
        self,
        skey: str,
        merge: Callable[[str | None], str],
        expire_at: float,
        now: float,
        connection: asyncpg.Connection[asyncpg.Record],
        timeout: float,
    ) -> str:
        """The update as one transaction holding the row lock: ``BEGIN``, ``SELECT ... FOR UPDATE``, merge,
        ``UPDATE``, ``COMMIT``."""
        sql = self.sql
        deadline = self.pool.loop.time() + timeout
        loop = self.pool.loop
        await connection.execute("BEGIN", timeout=timeout)
        committing = False
        try:
            raw: str | None = await connection.fetchval(sql.load_for_update, skey, now, timeout=deadline - loop.time())
            payload = merge(raw)
            await connection.execute(sql.update, skey, payload, expire_at, timeout=deadline - loop.time())
            committing = True
            await connection.execute("COMMIT", timeout=deadline - loop.time())
        except Exception as exc:
            if committing and isinstance(exc, _DEAD_CONNECTION):
                # The server may have committed before the connection died: running the update again
                # could apply it twice, over a parallel request's keys or a logout since.
                raise BackendUnavailableError(
                    f"The connection to PostgreSQL at {self.describe!r} was lost while committing a session "
                    "update; whether it was stored is unknown."
                ) from exc
            if isinstance(exc, asyncio.TimeoutError) or connection.is_closed():
                raise  # _run settles the connection: the cancelled query, the transaction
            # The merge refused, or the server did: hand the connection back clean. A connection that died
            # took its transaction with it, uncommitted: the update is run again elsewhere.
            with contextlib.suppress(Exception):
                if connection.is_in_transaction():
                    await connection.execute("ROLLBACK", timeout=self.command_timeout)
            raise
        return payload

    async def delete(self, skey: str) -> None:
        await self._run(lambda connection, timeout: connection.execute(self.sql.delete, skey, timeout=timeout))

    async def clear_expired(self, now: float) -> int:
        # Maintenance, not a request: a large backlog may take longer than command_timeout to delete, and a
        # cancelled DELETE deletes nothing, so only waiting for a lock is bounded (lock_timeout) and the
        # statement itself may run up to CLEAR_EXPIRED_TIMEOUT.
        async def run(connection: asyncpg.Connection[asyncpg.Record], timeout: float) -> str:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = {max(1, math.ceil(timeout * 1000))}")
                return await connection.execute(self.sql.clear_expired, now, timeout=CLEAR_EXPIRED_TIMEOUT)

        return _row_count(await self._run(run))


def _row_count(status: str) -> int:
    """The row count at the end of a command status such as ``INSERT 0 1`` or ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])
