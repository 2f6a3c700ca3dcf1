"""The driver protocol of DatabaseBackend: the SQL both databases share, and what each dialect must provide.

:class:`~asession.backends.db.DatabaseBackend` does everything a database does not care about (keys,
JSON, size limits, the clock, error translation) and hands a :class:`Driver` storage keys, payload text
and epoch timestamps. The dialects (``_sqlite.py``, ``_postgres.py``) implement :class:`Driver` with
:class:`Statements`. This module imports neither the backend nor a dialect, so that the backend can
import the dialects and the dialects this protocol without an import loop.

The table, on both databases::

    session_key   TEXT PRIMARY KEY      -- sha256 hex of the session key, never the key itself
    session_data  TEXT NOT NULL         -- the JSON payload
    expire_at     REAL / DOUBLE PRECISION NOT NULL, indexed   -- epoch seconds

A row is *live* while ``expire_at > now``; every read filters on that, so an expired row is invisible
the moment it expires, and :meth:`Driver.clear_expired` deletes such rows in one indexed statement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Driver", "Statements"]


@dataclass(frozen=True)
class Statements:
    """The SQL of one table, in a dialect's placeholder style and float type.

    Parameters, in order: ``save`` and ``update`` take (skey, payload, expire_at); ``create`` takes
    (skey, payload, expire_at, now) and changes no row when a live row holds the key; ``update_if`` takes
    (skey, payload, expire_at, now, expected) and changes the row only while it is live and holds exactly
    the ``expected`` payload (a compare-and-set, PostgreSQL's one-round-trip update; optional); ``load``,
    ``load_for_update``, ``load_entry`` and ``exists`` take (skey, now); ``delete`` takes (skey);
    ``clear_expired`` takes (now). ``load_for_update`` is ``load`` with the dialect's row lock (``FOR
    UPDATE`` on PostgreSQL; nothing on SQLite, whose ``BEGIN IMMEDIATE`` already holds the write lock).
    """

    create_table: str
    create_index: str
    load: str
    load_for_update: str
    load_entry: str
    exists: str
    save: str
    update: str
    create: str
    delete: str
    clear_expired: str
    #: Empty where a dialect or a caller's own statements do without it (SQLite; Django's columns).
    update_if: str = ""

    @classmethod
    def build(cls, table: str, *, placeholder: str, float_type: str, row_lock: str = "") -> Statements:
        """Write the statements for ``table`` (already validated), numbering parameters ``<placeholder>N``."""
        t = f'"{table}"'
        upsert = (
            f"INSERT INTO {t} (session_key, session_data, expire_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (session_key) DO UPDATE "
            "SET session_data = excluded.session_data, expire_at = excluded.expire_at"
        )
        load = f"SELECT session_data FROM {t} WHERE session_key = $1 AND expire_at > $2"
        sql = cls(
            create_table=(
                f"CREATE TABLE IF NOT EXISTS {t} (session_key TEXT PRIMARY KEY, "
                f"session_data TEXT NOT NULL, expire_at {float_type} NOT NULL)"
            ),
            create_index=f'CREATE INDEX IF NOT EXISTS "{table}_expire_at_idx" ON {t} (expire_at)',
            load=load,
            load_for_update=f"{load}{row_lock}",
            load_entry=f"SELECT session_data, expire_at FROM {t} WHERE session_key = $1 AND expire_at > $2",
            exists=f"SELECT 1 FROM {t} WHERE session_key = $1 AND expire_at > $2",
            save=upsert,
            # Run only after load_for_update found the row live in the same transaction, so it exists.
            update=f"UPDATE {t} SET session_data = $2, expire_at = $3 WHERE session_key = $1",
            update_if=(
                f"UPDATE {t} SET session_data = $2, expire_at = $3 "
                "WHERE session_key = $1 AND expire_at > $4 AND session_data = $5"
            ),
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
    """One database dialect: owns the connection or pool and runs :class:`Statements`.

    The contract, for :class:`~asession.backends.db.DatabaseBackend` and for composite backends that
    call a driver directly (``CachedDatabaseBackend`` reads ``db.driver``):

    - ``skey`` is a *storage key* (the SHA-256 hex the backend made of the session key), stored as given.
    - ``now`` and ``expire_at`` are epoch seconds that the caller takes from :func:`asession.expiry.timestamp`
      in the event loop; a driver never reads a clock of its own, so one clock (and a test's fake one)
      decides what is live. A row is live while ``expire_at > now``.
    - A payload is the JSON text, stored and returned unchanged; a driver neither parses nor size-checks it.
    - Methods raise the database's own exceptions (``sqlite3.Error``, ``asyncpg`` errors, ``OSError``,
      ``TimeoutError``) or :class:`~asession.exceptions.BackendUnavailableError`; the backend turns the
      former into ``BackendUnavailableError``. Only :meth:`update` lets other exceptions through, those of
      its ``merge``.
    - A write that returned is committed and visible to every later read, of any process. A write that
      raised is not committed, except where a method says that its outcome may be unknown.
    - Calls made before :meth:`open` or after :meth:`close` raise ``BackendUnavailableError``.
    """

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the table and its index if missing."""

    @abstractmethod
    async def close(self) -> None:
        """Finish or fail the writes in flight, then release the connection or pool. Safe to call twice."""

    @abstractmethod
    async def load(self, skey: str, now: float) -> str | None:
        """The live payload stored under ``skey``, or ``None`` when no live row holds it."""

    @abstractmethod
    async def load_entry(self, skey: str, now: float) -> tuple[str, float] | None:
        """The live payload stored under ``skey`` and its ``expire_at``, or ``None``; for caches in front."""

    @abstractmethod
    async def exists(self, skey: str, now: float) -> bool:
        """Whether a live row holds ``skey``."""

    @abstractmethod
    async def save(self, skey: str, payload: str, expire_at: float) -> None:
        """Insert or replace the row of ``skey``, live or not."""

    @abstractmethod
    async def create(self, skey: str, payload: str, expire_at: float, now: float) -> bool:
        """Insert the row unless a live one holds ``skey``, atomically; return whether a row was written.

        An expired row under ``skey`` is overwritten.
        """

    @abstractmethod
    async def update(self, skey: str, merge: Callable[[str | None], str], expire_at: float, now: float) -> str:
        """Rewrite the row of ``skey`` with what ``merge`` makes of it, in one atomic step; return the new payload.

        Inside one transaction that no other write to this row can interleave with (on any connection or
        process), the driver reads the live payload of ``skey`` (``None`` when the row is missing or
        expired at ``now``), calls ``merge(payload)``, stores the text it returns with ``expire_at`` and
        commits. ``merge`` is a pure function (no I/O, no clock, no awaiting) and may run on another
        thread; it may be called again when the driver retries on a fresh connection after the first
        one died before committing. When ``merge`` raises (``UpdateError``: no live session;
        ``SessionError``: over ``max_size``), nothing is written and its exception propagates unchanged.
        A retry never applies one update twice: when the connection dies while committing, the outcome
        is unknown and :class:`~asession.exceptions.BackendUnavailableError` is raised instead.
        """

    @abstractmethod
    async def delete(self, skey: str) -> None:
        """Delete the row of ``skey``; no error when there is none."""

    @abstractmethod
    async def clear_expired(self, now: float) -> int:
        """Delete the rows expired at ``now`` and return how many."""
