"""DatabaseBackend: sessions in one SQL table, on SQLite (aiosqlite, the default) or PostgreSQL (asyncpg).

Both databases share one schema and one set of statements, written here once::

    session_key   TEXT PRIMARY KEY      -- sha256 hex of the session key, never the key itself
    session_data  TEXT NOT NULL         -- the JSON payload
    expire_at     REAL / DOUBLE PRECISION NOT NULL, indexed   -- epoch seconds

Every read filters on ``expire_at > now``, so an expired row is invisible the moment it expires;
:meth:`DatabaseBackend.clear_expired` deletes such rows in one indexed statement. The dialects
(``_sqlite.py``, ``_postgres.py``) only connect and run these statements.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from asession import expiry
from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.exceptions import CreateError, ImproperlyConfigured

__all__ = ["DEFAULT_BUSY_TIMEOUT", "DEFAULT_TABLE", "DatabaseBackend", "Statements"]

DEFAULT_TABLE = "asession_sessions"
#: Seconds a SQLite write waits for another process's lock before failing.
DEFAULT_BUSY_TIMEOUT = 5.0
#: A plain SQL identifier, short enough that ``<table>_expire_at_idx`` fits PostgreSQL's 63 characters.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,48}")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Statements:
    """The SQL of one table, in a dialect's placeholder style and float type.

    Parameters, in order: ``save`` takes (skey, payload, expire_at); ``create`` takes (skey, payload,
    expire_at, now) and changes no row when a live row holds the key; ``load``, ``load_entry`` and
    ``exists`` take (skey, now); ``delete`` takes (skey); ``clear_expired`` takes (now).
    """

    create_table: str
    create_index: str
    load: str
    load_entry: str
    exists: str
    save: str
    create: str
    delete: str
    clear_expired: str

    @classmethod
    def build(cls, table: str, *, placeholder: str, float_type: str) -> Statements:
        """Write the statements for ``table`` (already validated), numbering parameters ``<placeholder>N``."""
        t = f'"{table}"'
        upsert = (
            f"INSERT INTO {t} (session_key, session_data, expire_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (session_key) DO UPDATE "
            "SET session_data = excluded.session_data, expire_at = excluded.expire_at"
        )
        sql = cls(
            create_table=(
                f"CREATE TABLE IF NOT EXISTS {t} (session_key TEXT PRIMARY KEY, "
                f"session_data TEXT NOT NULL, expire_at {float_type} NOT NULL)"
            ),
            create_index=f'CREATE INDEX IF NOT EXISTS "{table}_expire_at_idx" ON {t} (expire_at)',
            load=f"SELECT session_data FROM {t} WHERE session_key = $1 AND expire_at > $2",
            load_entry=f"SELECT session_data, expire_at FROM {t} WHERE session_key = $1 AND expire_at > $2",
            exists=f"SELECT 1 FROM {t} WHERE session_key = $1 AND expire_at > $2",
            save=upsert,
            # One statement, so the existence check and the write are atomic: an expired row is
            # overwritten, a live one is left alone and the statement reports no changed row.
            create=f"{upsert} WHERE {t}.expire_at <= $4",
            delete=f"DELETE FROM {t} WHERE session_key = $1",
            clear_expired=f"DELETE FROM {t} WHERE expire_at <= $1",
        )
        if placeholder == "$":
            return sql
        return cls(**{name: text.replace("$", placeholder) for name, text in vars(sql).items()})


class Driver(ABC):
    """One database dialect: owns the connection or pool and runs :class:`Statements`."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the table and its index if missing."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection or pool."""

    @abstractmethod
    async def load(self, skey: str, now: float) -> str | None:
        """The live payload stored under ``skey``."""

    @abstractmethod
    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        """The live payload stored under ``skey`` and its expiry timestamp."""

    @abstractmethod
    async def exists(self, skey: str, now: float) -> bool:
        """Whether a live row holds ``skey``."""

    @abstractmethod
    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        """Insert or replace the row of ``skey``."""

    @abstractmethod
    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        """Insert the row unless a live one holds ``skey``; return whether a row was written."""

    @abstractmethod
    async def delete(self, skey: str) -> None:
        """Delete the row of ``skey``."""

    @abstractmethod
    async def clear_expired(self, now: float) -> int:
        """Delete the expired rows and return how many."""


class DatabaseBackend(SessionBackend):
    """Keep sessions in a SQL table, on SQLite by default or on PostgreSQL by URL.

    ``url_or_path`` is a file path or ``sqlite:///relative.db`` / ``sqlite:////absolute/path.db`` for
    SQLite: WAL mode, ``synchronous=NORMAL``; writes run on aiosqlite's thread and wait up to
    ``busy_timeout`` seconds (SQLite only) for other processes, reads run without a thread hop. Or it is
    ``postgresql://user:password@host:5432/dbname`` (``postgres://`` too) for PostgreSQL, through an
    asyncpg pool of ``min_pool_size`` to ``max_pool_size`` connections (PostgreSQL only); other query
    parameters of the URL become server settings, such as ``?application_name=web`` (default
    ``asession``). The table (default ``asession_sessions``) and its ``expire_at`` index are created on
    :meth:`open` when missing.

    Expired rows stay on disk, invisible, until :meth:`clear_expired` (``asession clearsessions``)
    deletes them in one indexed statement; run it periodically, as Django's ``clearsessions``.

    Raises :class:`ImproperlyConfigured` at construction for an unsupported URL, a bad table name,
    pool size or busy timeout, or PostgreSQL without asyncpg installed; :meth:`open` raises
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
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__(max_size=max_size)
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
            self.driver = self._postgres_driver(min_pool_size, max_pool_size)
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

    def _postgres_driver(self, min_pool_size: int, max_pool_size: int) -> Driver:
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
        require("asyncpg", "DatabaseBackend", "postgres", " for PostgreSQL")
        from asession.backends._postgres import PostgresDriver

        # asyncpg lets server_settings override the URL, so name the pool only when the URL does not.
        settings = {} if "application_name" in parse_qs(parts.query) else {"application_name": "asession"}
        return PostgresDriver(
            self.url,
            self.table,
            min_size=min_pool_size,
            max_size=max_pool_size,
            server_settings=settings,
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
