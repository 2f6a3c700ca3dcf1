"""DatabaseBackend: sessions in one SQL table, on SQLite (the default) or PostgreSQL (asyncpg).

Both databases share one schema and one set of statements, written once in ``_driver.py`` with the
driver protocol (:class:`Driver`, :class:`Statements`, re-exported here). This module checks the
arguments, picks the dialect (``_sqlite.py``, ``_postgres.py``), which only connects and runs those
statements, and takes every timestamp from :func:`asession.expiry.timestamp` in the event loop.

A request's changes are merged into the stored session inside one database transaction
(:meth:`Driver.update`): the row is read, :meth:`~asession.backends.base.SessionBackend._merge` applies
the changes, and the result is written before any other write to that row can run.
"""

from __future__ import annotations

import math
import os
import re
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from asession import expiry
from asession.backends._driver import Driver, Statements
from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.changes import Changes
from asession.exceptions import CreateError, ImproperlyConfigured

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_TABLE",
    "DatabaseBackend",
    "Driver",
    "Statements",
]

DEFAULT_TABLE = "asession_sessions"
#: Seconds a SQLite write waits for another process's lock before failing.
DEFAULT_BUSY_TIMEOUT = 5.0
#: Seconds a PostgreSQL operation (waiting for a pooled connection, then the query) may take before failing.
DEFAULT_COMMAND_TIMEOUT = 5.0
#: A plain SQL identifier, short enough that ``<table>_expire_at_idx`` fits PostgreSQL's 63 characters.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,48}")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabaseBackend(SessionBackend):
    """Keep sessions in a SQL table, on SQLite by default or on PostgreSQL by URL.

    ``url_or_path`` is a file path or ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db`` for
    SQLite: WAL mode, ``synchronous=NORMAL``; writes run on a thread of the backend's own and wait up to
    ``busy_timeout`` seconds (SQLite only) for other processes, reads run without a thread hop. Or it is
    ``postgresql://user:password@host:5432/dbname`` (``postgres://`` too) for PostgreSQL, through an
    asyncpg pool of ``min_pool_size`` to ``max_pool_size`` connections (PostgreSQL only); other query
    parameters of the URL become server settings, such as ``?application_name=web`` (default
    ``asession``). The table (default ``asession_sessions``) and its ``expire_at`` index are created on
    :meth:`open` when missing.

    :meth:`update` merges a request's changes into the row as stored now, atomically: on SQLite inside the
    write lock of a batch; on PostgreSQL with one compare-and-set ``UPDATE`` of the payload the request
    loaded, or, when the row changed since, in one transaction under the row lock (``SELECT ... FOR
    UPDATE``). Two processes updating one session, or an update racing a delete, never lose a key or bring
    a deleted session back.

    Nothing waits forever. On PostgreSQL each operation (waiting for a free pooled connection, then the
    query) fails after ``command_timeout`` seconds (default 5) with
    :class:`~asession.exceptions.BackendUnavailableError`, a locked table or an exhausted pool included;
    the timed-out query is cancelled on the server and its connection goes back to the pool. On SQLite
    ``command_timeout`` is accepted and does not apply: ``busy_timeout`` bounds every wait there, opening
    included (workers opening one fresh file together take turns for up to ``busy_timeout``). A SQLite
    file that :meth:`open` creates, and its ``-wal`` and ``-shm`` files, are readable by their owner
    only (0600); an existing file keeps its permissions.

    Expired rows stay on disk, invisible, until :meth:`clear_expired` (``asession clearsessions``)
    deletes them in one indexed statement; run it periodically, as Django's ``clearsessions``.

    Raises :class:`ImproperlyConfigured` at construction for an unsupported URL, a bad table name,
    pool size, busy timeout or command timeout, or PostgreSQL without asyncpg installed; :meth:`open` raises
    :class:`ImproperlyConfigured` for a missing directory, database or role, and
    :class:`~asession.exceptions.BackendUnavailableError` when the server cannot be reached.
    """

    def __init__(
        self,
        url_or_path: str | os.PathLike[str],
        *,
        table: str = DEFAULT_TABLE,
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        statement_cache_size: int | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        encrypt_at_rest: bool = False,
    ) -> None:
        super().__init__(max_size=max_size, encrypt_at_rest=encrypt_at_rest)
        if (
            isinstance(command_timeout, bool)
            or not isinstance(command_timeout, (int, float))
            or not 0 < command_timeout < math.inf
        ):
            raise ImproperlyConfigured(
                f"command_timeout must be a positive number of seconds, not {command_timeout!r}."
            )
        self.command_timeout = float(command_timeout)
        if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table):
            raise ImproperlyConfigured(
                f"The session table name {table!r} is not a plain SQL identifier. Use 1 to 49 letters, digits "
                "and underscores, not starting with a digit, such as 'asession_sessions'."
            )
        self.table = table
        self.url = os.fspath(url_or_path) if isinstance(url_or_path, os.PathLike) else url_or_path
        if not isinstance(self.url, str) or not self.url:
            raise ImproperlyConfigured(
                f"DatabaseBackend needs a SQLite file path or a database URL such as 'sqlite:///sessions.db' "
                f"or 'postgresql://user@host/db', not {url_or_path!r}."
            )
        self.driver: Driver
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else ""
        if scheme in _POSTGRES_SCHEMES:
            self.dialect = "postgresql"
            # A cancelled call ends at once: the driver's pool settles the connection (asyncpg's cancel request,
            # a rollback) in the background, so store_timeout needs no task per call (asession.deadline).
            self.driver = self._postgres_driver(
                min_pool_size, max_pool_size, self.command_timeout, statement_cache_size
            )
        elif scheme in ("", "sqlite"):
            self.dialect = "sqlite"
            self.path = _sqlite_path(self.url) if scheme else self.url
            if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or busy_timeout < 0:
                raise ImproperlyConfigured(
                    f"busy_timeout must be a non-negative number of seconds, not {busy_timeout!r}."
                )
            from asession.backends._sqlite import SQLiteDriver

            self.driver = SQLiteDriver(self.path, table, busy_timeout=float(busy_timeout))
        else:
            raise ImproperlyConfigured(
                f"DatabaseBackend supports SQLite and PostgreSQL, not {hide_password(self.url)!r}. Use a file "
                "path, 'sqlite:///sessions.db' or 'postgresql://user@host/db'."
            )

    def _postgres_driver(
        self, min_pool_size: int, max_pool_size: int, command_timeout: float, statement_cache_size: int | None
    ) -> Driver:
        for name, value, low in (("min_pool_size", min_pool_size, 0), ("max_pool_size", max_pool_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ImproperlyConfigured(f"{name} must be an int of at least {low}, not {value!r}.")
        if min_pool_size > max_pool_size:
            raise ImproperlyConfigured(
                f"min_pool_size ({min_pool_size!r}) must not exceed max_pool_size ({max_pool_size!r})."
            )
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"The PostgreSQL URL {hide_password(self.url)!r} is malformed ({exc}). "
                "Expected e.g. 'postgresql://user:password@host:5432/dbname'."
            ) from exc
        # ?statement_cache_size=0 (for PgBouncer in transaction pooling mode) is asession's to read: asyncpg
        # would send an unknown URL option to the server as a setting, which PostgreSQL refuses.
        query = parse_qs(parts.query, keep_blank_values=True)
        if "statement_cache_size" in query:
            if statement_cache_size is not None:
                raise ImproperlyConfigured("statement_cache_size is given both in the URL and as an argument.")
            values = query.pop("statement_cache_size")
            if len(values) != 1 or not values[0].isdigit() or not values[0].isascii():
                raise ImproperlyConfigured(
                    f"statement_cache_size in {hide_password(self.url)!r} must be a non-negative integer."
                )
            statement_cache_size = int(values[0])
            url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        else:
            url = self.url
        if statement_cache_size is not None and (
            isinstance(statement_cache_size, bool)
            or not isinstance(statement_cache_size, int)
            or statement_cache_size < 0
        ):
            raise ImproperlyConfigured(
                f"statement_cache_size must be a non-negative int (0 behind PgBouncer), not {statement_cache_size!r}."
            )
        require("asyncpg", "DatabaseBackend", "postgres", " for PostgreSQL")
        from asession.backends._postgres import PostgresDriver

        # asyncpg lets server_settings override the URL, so name the pool only when the URL does not.
        settings = {} if "application_name" in query else {"application_name": "asession"}
        return PostgresDriver(
            url,
            self.table,
            min_size=min_pool_size,
            max_size=max_pool_size,
            command_timeout=command_timeout,
            server_settings=settings,
            statement_cache_size=statement_cache_size,
            describe=hide_password(self.url),
        )

    @classmethod
    def from_url(cls, url: str) -> DatabaseBackend:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://user:pw@host:5432/db``."""
        return cls(url)

    def _describe(self) -> str:
        return self.path if self.dialect == "sqlite" else hide_password(self.url)

    async def _open(self) -> None:
        await self.driver.open()

    async def _close(self) -> None:
        await self.driver.close()

    async def _load(self, skey: str) -> str | None:
        return await self.driver.load(skey, expiry.timestamp())

    async def _load_entry(self, skey: str) -> tuple[str, float] | None:
        """The live payload of ``skey`` and its expiry timestamp, for caches in front of the database."""
        return await self.driver.load_entry(skey, expiry.timestamp())

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        now = expiry.timestamp()
        if not must_create:
            await self.driver.save(skey, payload, now + expiry_age)
        elif not await self.driver.create(skey, payload, now + expiry_age, now):
            raise CreateError(f"A session with this key already exists in {self!r}.")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        # The clock is read here, in the event loop (tests replace it); the driver may merge on a thread.
        now = expiry.timestamp()
        return await self.driver.update(skey, lambda raw: self._merge(raw, changes), now + expiry_age, now)

    async def _exists(self, skey: str) -> bool:
        return await self.driver.exists(skey, expiry.timestamp())

    async def _delete(self, skey: str) -> None:
        await self.driver.delete(skey)

    async def _clear_expired(self) -> int:
        return await self.driver.clear_expired(expiry.timestamp())


def _sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL, taken verbatim."""
    rest = url.split("://", 1)[1]
    if "?" in rest:
        raise ImproperlyConfigured(
            f"The SQLite URL {url!r} has query parameters, which DatabaseBackend does not read. Remove them and "
            "pass options as arguments, e.g. DatabaseBackend('sessions.db', busy_timeout=10)."
        )
    if not rest.startswith("/") or len(rest) < 2:
        raise ImproperlyConfigured(
            f"The SQLite URL {url!r} names no file. Use 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db' (three slashes, then the path)."
        )
    return rest[1:]
