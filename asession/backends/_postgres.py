"""The PostgreSQL dialect of DatabaseBackend, through an asyncpg pool.

Each operation is one pooled query; asyncpg prepares each statement once per connection and caches
it. A connection the server dropped (restart, ``pg_terminate_backend``) is replaced by the pool on a
later acquire, and a query that hit such a connection is run again on another one, so a database
restart costs no failed request once the server is back.

Nothing waits forever. One deadline of ``command_timeout`` seconds covers an operation: waiting for a
free connection (asyncpg's ``Pool.fetchval`` and friends would wait without limit, so the driver
acquires explicitly, with a timeout), connecting a replacement, the query and its retries. The
connections carry the same ``command_timeout``, which also bounds :meth:`PostgresDriver.open`'s
schema statements and asyncpg's cancelling of a query. A query that times out is cancelled on the
server; releasing its connection waits for that cancellation (a few milliseconds; at most
``command_timeout`` more when the server stopped answering, and then the connection is closed), so the
connection goes back to the pool ready for the next query. :meth:`PostgresDriver.clear_expired` is
maintenance and may delete millions of rows: it waits ``command_timeout`` for a connection and for each
lock, but its DELETE may then run up to :data:`CLEAR_EXPIRED_TIMEOUT`.

**Updates** (:meth:`PostgresDriver.update`: a request's changes merged into the session as stored now)
run as one transaction on one pooled connection: ``BEGIN``; ``SELECT session_data ... FOR UPDATE``, which
locks the live row, waiting for any transaction that holds it; the backend's Python merge; ``UPDATE``;
``COMMIT``. Four round trips, the row lock held for the middle two; updates of one session queue on its
row, other sessions are not touched. A concurrent ``DELETE`` either commits first (the ``SELECT`` then
finds no row and nothing is written) or waits for the ``COMMIT`` and deletes the merged row: a deleted
session never comes back. The one deadline of ``command_timeout`` covers the whole transaction, lock
waits included. A connection found dead before the ``COMMIT`` was sent took its uncommitted transaction
with it, so the update is run again, merge included, on another connection; one that dies during the
``COMMIT`` leaves the outcome unknown, so that update raises :class:`BackendUnavailableError` instead
of being run a second time.

Why not one ``UPDATE`` with jsonb, ``(session_data::jsonb - $removed::text[]) || $changed::jsonb``: it
would save three round trips, but it could not run the merge every other store runs. A corrupt stored
session must be refused and logged, never half-merged (the cast would fail the statement, or a jsonb
column would have refused the data long before); ``max_size`` must be checked on the merged result before
anything is written; and jsonb rewrites the payload (keys reordered, duplicates dropped), so the stored
text would differ from what the same session stores on SQLite or Redis. Doing all of that in SQL means a
second implementation of the merge to keep in step with ``SessionBackend._merge``. The column therefore
stays ``TEXT`` and the merge stays in Python: existing tables need no migration, not even a lock or a
rewrite of their rows, and a process running an older release keeps working against the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from asession.backends._driver import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured

__all__ = ["CLEAR_EXPIRED_TIMEOUT", "CONNECT_TIMEOUT", "PostgresDriver"]

#: Seconds :meth:`PostgresDriver.open` waits for each connection, instead of asyncpg's 60.
CONNECT_TIMEOUT = 10.0
#: Seconds the DELETE of :meth:`PostgresDriver.clear_expired` may run once it holds its locks.
CLEAR_EXPIRED_TIMEOUT = 3600.0

T = TypeVar("T")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: One query on a pooled connection, given the seconds it may still take.
    _Query = Callable[[PoolConnectionProxy[asyncpg.Record], float], Awaitable[T]]

#: Errors of a pooled connection that the server closed while it sat idle in the pool.
_DEAD_CONNECTION = (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError, asyncpg.AdminShutdownError)

#: Errors that mean the URL names the wrong database or credentials, not that the server is down.
_CONFIGURATION_ERRORS = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InsufficientPrivilegeError,
    ValueError,  # asyncpg's ClientConfigurationError: an option of the URL it cannot use
)


class PostgresDriver(Driver):
    """An asyncpg pool over one PostgreSQL database."""

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
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise BackendUnavailableError(f"The PostgreSQL session pool for {self.describe!r} is not open.")
        return self._pool

    async def open(self) -> None:
        pool: asyncpg.Pool[asyncpg.Record] | None = None
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self.command_timeout,
                server_settings=self.server_settings or None,
                statement_cache_size=100 if self.statement_cache_size is None else self.statement_cache_size,
            )
            await self._create_table(pool)
        except BaseException as exc:
            if pool is not None:
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

    async def _create_table(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        async with pool.acquire() as connection:
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
        if pool is not None:
            await pool.close()

    async def _run(self, query: _Query[T]) -> T:
        """Run ``query`` on a pooled connection within ``command_timeout``, retried when the connection had died.

        The pool only notices that the server dropped a connection when it next uses it; each attempt
        discards one such connection, so ``max_size + 1`` attempts reach a live one. Failing to connect
        raises at once: that is the server being down, not a stale connection. The attempts share one
        deadline; running out of it raises :class:`BackendUnavailableError`.
        """
        pool = self.pool
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout
        retries = self.max_size
        while True:
            try:
                connection = await pool.acquire(timeout=deadline - loop.time())
            except asyncio.TimeoutError as exc:
                raise BackendUnavailableError(
                    f"No connection to PostgreSQL at {self.describe!r} was available within command_timeout="
                    f"{self.command_timeout!r} seconds: every connection of the pool (max_pool_size={self.max_size!r}) "
                    "stayed busy, or the server did not accept a new one. Raise max_pool_size, or look for slow "
                    "queries."
                ) from exc
            try:
                # asyncpg raises TimeoutError at once when no time is left, and cancels a query that runs out.
                return await query(connection, deadline - loop.time())
            except _DEAD_CONNECTION:
                if retries == 0:
                    raise
                retries -= 1
            except asyncio.TimeoutError as exc:
                raise BackendUnavailableError(
                    f"A query on PostgreSQL at {self.describe!r} did not finish within command_timeout="
                    f"{self.command_timeout!r} seconds and was cancelled. Look for a lock held on the table "
                    f"{self.table!r}, or an overloaded server."
                ) from exc
            finally:
                # Waits for the server to acknowledge a cancelled query, then resets the connection. When
                # that fails, asyncpg has closed the connection and the pool opens a new one later; the
                # outcome of the query, already known, is what the caller gets.
                with contextlib.suppress(Exception):
                    await pool.release(connection, timeout=self.command_timeout)

    async def load(self, skey: str, now: float) -> str | None:
        data: str | None = await self._run(
            lambda connection, timeout: connection.fetchval(self.sql.load, skey, now, timeout=timeout)
        )
        return data

    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        row = await self._run(
            lambda connection, timeout: connection.fetchrow(self.sql.load_entry, skey, now, timeout=timeout)
        )
        return None if row is None else (row[0], row[1])

    async def exists(self, skey: str, now: float) -> bool:
        found = await self._run(
            lambda connection, timeout: connection.fetchval(self.sql.exists, skey, now, timeout=timeout)
        )
        return found is not None

    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        await self._run(
            lambda connection, timeout: connection.execute(self.sql.save, skey, payload, expire_at, timeout=timeout)
        )

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        # A retry after a connection died mid-statement may find the row this call wrote and report
        # a collision; Session then simply picks another fresh key.
        status = await self._run(
            lambda connection, timeout: connection.execute(
                self.sql.create, skey, payload, expire_at, now, timeout=timeout
            )
        )
        return _row_count(status) > 0

    async def update(self, skey: str, merge: Callable[[str | None], str], expire_at: float, now: float) -> str:
        sql = self.sql

        async def run(connection: PoolConnectionProxy[asyncpg.Record], timeout: float) -> str:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            await connection.execute("BEGIN", timeout=timeout)
            committing = False
            try:
                raw: str | None = await connection.fetchval(
                    sql.load_for_update, skey, now, timeout=deadline - loop.time()
                )
                payload = merge(raw)
                await connection.execute(sql.update, skey, payload, expire_at, timeout=deadline - loop.time())
                committing = True
                await connection.execute("COMMIT", timeout=deadline - loop.time())
            except BaseException as exc:
                if committing and isinstance(exc, _DEAD_CONNECTION):
                    # The server may have committed before the connection died: running the update again
                    # could apply it twice, over a parallel request's keys or a logout since.
                    raise BackendUnavailableError(
                        f"The connection to PostgreSQL at {self.describe!r} was lost while committing a session "
                        "update; whether it was stored is unknown."
                    ) from exc
                # Hand a live connection back to the pool clean (a timed-out query is cancelled first). A
                # connection that died took its transaction with it, uncommitted, and asyncpg has detached it
                # from this proxy already (then even asking raises): the update is run again elsewhere.
                with contextlib.suppress(Exception):
                    if connection.is_in_transaction():
                        await connection.execute("ROLLBACK", timeout=self.command_timeout)
                raise
            return payload

        return await self._run(run)

    async def delete(self, skey: str) -> None:
        await self._run(lambda connection, timeout: connection.execute(self.sql.delete, skey, timeout=timeout))

    async def clear_expired(self, now: float) -> int:
        # Maintenance, not a request: a large backlog may take longer than command_timeout to delete, and a
        # cancelled DELETE deletes nothing, so only waiting for a lock is bounded (lock_timeout) and the
        # statement itself may run up to CLEAR_EXPIRED_TIMEOUT.
        async def run(connection: PoolConnectionProxy[asyncpg.Record], timeout: float) -> str:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = {max(1, math.ceil(timeout * 1000))}")
                return await connection.execute(self.sql.clear_expired, now, timeout=CLEAR_EXPIRED_TIMEOUT)

        return _row_count(await self._run(run))


def _row_count(status: str) -> int:
    """The row count at the end of a command status such as ``INSERT 0 1`` or ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])
