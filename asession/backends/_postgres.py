"""The PostgreSQL dialect of DatabaseBackend, through an asyncpg pool.

Each operation is one pooled query; asyncpg prepares each statement once per connection and caches
it. A connection the server dropped (restart, ``pg_terminate_backend``) is replaced by the pool on a
later acquire, and a query that hit such a connection is run again on another one, so a database
restart costs no failed request once the server is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from asession.backends.db import Driver, Statements
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured

__all__ = ["CONNECT_TIMEOUT", "PostgresDriver"]

#: Seconds :meth:`PostgresDriver.open` waits for each connection, instead of asyncpg's 60.
CONNECT_TIMEOUT = 10.0

T = TypeVar("T")

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
        server_settings: dict[str, str],
        describe: str,
    ) -> None:
        self.url = url
        self.table = table
        self.min_size = min_size
        self.max_size = max_size
        self.server_settings = server_settings
        self.describe = describe
        self.sql = Statements.build(table, placeholder="$", float_type="DOUBLE PRECISION")
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
                server_settings=self.server_settings or None,
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

    async def _retry(self, method: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run one pooled query, again on another connection when the one it got had died.

        The pool only notices that the server dropped a connection when it next uses it; each attempt
        discards one such connection, so ``max_size + 1`` attempts reach a live one. Failing to connect
        raises at once: that is the server being down, not a stale connection.
        """
        retries = self.max_size
        while True:
            try:
                return await method(*args)
            except _DEAD_CONNECTION:
                if retries == 0:
                    raise
                retries -= 1

    async def load(self, skey: str, now: float) -> str | None:
        data: str | None = await self._retry(self.pool.fetchval, self.sql.load, skey, now)
        return data

    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        row = await self._retry(self.pool.fetchrow, self.sql.load_entry, skey, now)
        return None if row is None else (row[0], row[1])

    async def exists(self, skey: str, now: float) -> bool:
        return await self._retry(self.pool.fetchval, self.sql.exists, skey, now) is not None

    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        await self._retry(self.pool.execute, self.sql.save, skey, payload, expire_at)

    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        # A retry after a connection died mid-statement may find the row this call wrote and report
        # a collision; Session then simply picks another fresh key.
        status = await self._retry(self.pool.execute, self.sql.create, skey, payload, expire_at, now)
        return _row_count(status) > 0

    async def delete(self, skey: str) -> None:
        await self._retry(self.pool.execute, self.sql.delete, skey)

    async def clear_expired(self, now: float) -> int:
        return _row_count(await self._retry(self.pool.execute, self.sql.clear_expired, now))


def _row_count(status: str) -> int:
    """The row count at the end of a command status such as ``INSERT 0 1`` or ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])
