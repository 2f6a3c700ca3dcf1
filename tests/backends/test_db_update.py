"""DatabaseBackend updates across connections and processes, and the driver protocol module.

``test_update.py`` holds the update contract every store meets with one backend. These tests add what
only a database shows: two backends (two processes, as far as the database is concerned) updating one
session at once, an update waiting for another connection's lock, a PostgreSQL connection dying in the
middle of an update, and the stored text itself. PostgreSQL tests use a table of their own, dropped
afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from asession import expiry, keys, serializers
from asession.backends.db import DatabaseBackend
from asession.exceptions import BackendUnavailableError, UpdateError

DAY = 86400
ROOT = Path(__file__).resolve().parents[2]


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_pair(sqlite_path: Path) -> AsyncIterator[tuple[DatabaseBackend, DatabaseBackend]]:
    """Two backends on one SQLite file, as two worker processes would have."""
    async with DatabaseBackend(sqlite_path) as first, DatabaseBackend(sqlite_path) as second:
        yield first, second


@pytest.fixture
def pg_table() -> str:
    """A fresh table name, also the application_name of the pools that use it."""
    return f"asession_update_{secrets.token_hex(4)}"


@pytest.fixture
async def pg_url(postgres_url: str, pg_table: str) -> AsyncIterator[str]:
    """The PostgreSQL URL with the test's application_name; the test's table is dropped afterwards."""
    separator = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{separator}application_name={pg_table}"
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(f'DROP TABLE IF EXISTS "{pg_table}"')
    finally:
        await connection.close()


@pytest.fixture
async def pg_pair(pg_url: str, pg_table: str) -> AsyncIterator[tuple[DatabaseBackend, DatabaseBackend]]:
    """Two backends, each with its own pool, on the test's own PostgreSQL table."""
    async with (
        DatabaseBackend(pg_url, table=pg_table, max_pool_size=4) as first,
        DatabaseBackend(pg_url, table=pg_table, max_pool_size=4) as second,
    ):
        yield first, second


@pytest.fixture(
    params=[
        pytest.param("sqlite_pair", id="sqlite"),
        pytest.param("pg_pair", id="postgres", marks=pytest.mark.postgres),
    ]
)
def pair(request: pytest.FixtureRequest) -> tuple[DatabaseBackend, DatabaseBackend]:
    """Two backends on one database, SQLite or PostgreSQL."""
    backends: tuple[DatabaseBackend, DatabaseBackend] = request.getfixturevalue(request.param)
    return backends


# -- two backends, one session ---------------------------------------------------------------------------------


async def test_two_backends_updating_one_session_keep_all_48_keys(
    pair: tuple[DatabaseBackend, DatabaseBackend],
) -> None:
    """Two backends each run 24 concurrent updates of distinct keys of one session: all 48 keys are stored."""
    first, second = pair
    key = keys.new_key()
    await first.save(key, {"start": True}, DAY)
    await asyncio.gather(
        *(first.update(key, {f"a{n}": n}, (), DAY) for n in range(24)),
        *(second.update(key, {f"b{n}": n}, (), DAY) for n in range(24)),
    )
    expected = {"start": True, **{f"a{n}": n for n in range(24)}, **{f"b{n}": n for n in range(24)}}
    assert await first.load(key) == expected
    assert await second.load(key) == expected


async def test_update_racing_a_delete_from_another_backend_never_resurrects(
    pair: tuple[DatabaseBackend, DatabaseBackend],
) -> None:
    """Updates on one backend racing a delete on the other land before it or fail: the session stays deleted."""
    first, second = pair
    for _ in range(5):
        key = keys.new_key()
        await first.save(key, {"user": "alice"}, DAY)
        outcomes = await asyncio.gather(
            *(first.update(key, {f"k{n}": n}, (), DAY) for n in range(8)),
            second.delete(key),
            *(first.update(key, {f"late{n}": n}, (), DAY) for n in range(8)),
            return_exceptions=True,
        )
        assert all(outcome is None or isinstance(outcome, UpdateError) for outcome in outcomes), outcomes
        assert await first.load(key) is None
        assert await second.load(key) is None


async def test_update_stores_the_serializer_text_in_key_order(pair: tuple[DatabaseBackend, DatabaseBackend]) -> None:
    """The merged row holds exactly what the serializer writes, stored keys first in their order (no jsonb rewrite)."""
    first, _ = pair
    key = keys.new_key()
    await first.save(key, {"zeta": 1, "alpha": [1.5, "x"], "mid": None}, DAY)
    await first.update(key, {"new": {"b": 1, "a": 2}, "zeta": 3}, ["mid"], DAY)
    entry = await first.driver.load_entry(keys.storage_key(key), expiry.timestamp())
    assert entry is not None
    assert entry[0] == serializers.dumps({"zeta": 3, "alpha": [1.5, "x"], "new": {"b": 1, "a": 2}})


async def test_update_reads_the_clock_in_the_event_loop(
    pair: tuple[DatabaseBackend, DatabaseBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DatabaseBackend takes ``now`` in the event loop's thread, never on a driver's thread, and stores now + age."""
    first, _ = pair
    key = keys.new_key()
    await first.save(key, {"v": 1}, DAY)
    frozen = expiry.now()
    threads: list[threading.Thread] = []

    def clock() -> datetime:
        threads.append(threading.current_thread())
        return frozen

    monkeypatch.setattr(expiry, "now", clock)
    await first.update(key, {"w": 2}, (), 600)
    assert threads and set(threads) == {threading.main_thread()}
    entry = await first.driver.load_entry(keys.storage_key(key), frozen.timestamp())
    assert entry is not None and entry[1] == frozen.timestamp() + 600


# -- PostgreSQL: row locks and dead connections ------------------------------------------------------------------


async def _pid_waiting_for_a_lock(postgres_url: str, application_name: str) -> int:
    """The server process of ``application_name`` that waits for a lock, once there is one."""
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        deadline = time.monotonic() + 5
        while True:
            pid = await connection.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application_name,
            )
            if pid is not None:
                return int(pid)
            assert time.monotonic() < deadline, "the update never waited for the row lock"
            await asyncio.sleep(0.01)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _row_locked(postgres_url: str, table: str, key: str) -> AsyncIterator[Any]:
    """A connection of another process holding the row of ``key`` with FOR UPDATE, in an open transaction."""
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        row = await connection.fetchval(
            f'SELECT session_data FROM "{table}" WHERE session_key = $1 FOR UPDATE', keys.storage_key(key)
        )
        assert row is not None
        yield connection
        if connection.is_in_transaction():
            await transaction.commit()
    finally:
        await connection.close()


def _counting_merge(backend: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> list[str | bytes | None]:
    """Record every payload the backend's merge is given."""
    calls: list[str | bytes | None] = []
    merge: Callable[..., str] = backend._merge

    def counting(raw: str | bytes | None, changes: Any) -> str:
        calls.append(raw)
        return merge(raw, changes)

    monkeypatch.setattr(backend, "_merge", counting)
    return calls


@pytest.mark.postgres
async def test_postgres_update_merges_into_the_row_the_lock_holder_committed(
    pg_pair: tuple[DatabaseBackend, DatabaseBackend], postgres_url: str, pg_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update waits for another transaction's row lock, then merges into what it committed (SELECT FOR UPDATE)."""
    backend, _ = pg_pair
    key = keys.new_key()
    await backend.save(key, {"v": 1}, DAY)
    calls = _counting_merge(backend, monkeypatch)
    async with _row_locked(postgres_url, pg_table, key) as other:
        update = asyncio.create_task(backend.update(key, {"mine": True}, (), DAY))
        await _pid_waiting_for_a_lock(postgres_url, pg_table)
        assert not calls, "the merge waits for the lock"
        await other.execute(
            f'UPDATE "{pg_table}" SET session_data = $2 WHERE session_key = $1',
            keys.storage_key(key),
            '{"v":1,"theirs":true}',
        )
    await update
    assert await backend.load(key) == {"v": 1, "theirs": True, "mine": True}
    assert calls == ['{"v":1,"theirs":true}']


@pytest.mark.postgres
async def test_postgres_update_retried_after_its_connection_died_applies_once(
    pg_pair: tuple[DatabaseBackend, DatabaseBackend], postgres_url: str, pg_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection of a waiting update is killed: the update runs again on another connection, merged once."""
    backend, _ = pg_pair
    key = keys.new_key()
    await backend.save(key, {"v": 1}, DAY)
    calls = _counting_merge(backend, monkeypatch)
    async with _row_locked(postgres_url, pg_table, key) as other:
        update = asyncio.create_task(backend.update(key, {"mine": True}, (), DAY))
        pid = await _pid_waiting_for_a_lock(postgres_url, pg_table)
        assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.05)  # the killed transaction is gone; the retry now waits for the lock in its turn
        await other.execute(
            f'UPDATE "{pg_table}" SET session_data = $2 WHERE session_key = $1',
            keys.storage_key(key),
            '{"v":1,"theirs":true}',
        )
    await update
    assert await backend.load(key) == {"v": 1, "theirs": True, "mine": True}
    assert len(calls) == 1


@pytest.mark.postgres
async def test_postgres_update_losing_its_connection_while_committing_is_not_retried(
    pg_pair: tuple[DatabaseBackend, DatabaseBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost during COMMIT leaves the outcome unknown: BackendUnavailableError, and no second run."""
    import asyncpg
    from asyncpg.connection import Connection

    backend, _ = pg_pair
    key = keys.new_key()
    await backend.save(key, {"v": 1}, DAY)
    calls = _counting_merge(backend, monkeypatch)
    original = Connection.execute
    lost: list[str] = []

    async def execute(self: Connection, query: str, *args: Any, **kwargs: Any) -> str:
        status = await original(self, query, *args, **kwargs)
        if query == "COMMIT" and not lost:
            lost.append(query)  # the server committed; the answer is lost with the connection
            self.terminate()
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return status

    monkeypatch.setattr(Connection, "execute", execute)
    with pytest.raises(BackendUnavailableError, match="whether it was stored is unknown"):
        await backend.update(key, {"w": 2}, (), DAY)
    assert lost == ["COMMIT"] and len(calls) == 1
    assert await backend.load(key) == {"v": 1, "w": 2}


@pytest.mark.postgres
async def test_postgres_update_of_a_locked_row_fails_within_command_timeout(
    pg_url: str, postgres_url: str, pg_table: str
) -> None:
    """A row held by another transaction beyond command_timeout: the update raises and the pool answers next."""
    async with DatabaseBackend(pg_url, table=pg_table, max_pool_size=1, command_timeout=0.3) as backend:
        key = keys.new_key()
        await backend.save(key, {"v": 1}, DAY)
        async with _row_locked(postgres_url, pg_table, key):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="command_timeout"):
                await asyncio.wait_for(backend.update(key, {"w": 2}, (), DAY), timeout=5)
            waited = time.monotonic() - started
        assert 0.27 <= waited < 1.3, waited
        await backend.update(key, {"w": 3}, (), DAY)  # the only pooled connection is usable again
        assert await backend.load(key) == {"v": 1, "w": 3}


# -- the driver protocol module ----------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dialects_import_the_driver_protocol_without_the_backend() -> None:
    """Each dialect imports on its own, from the protocol module, without importing db.py (no import loop)."""
    for dialect in ("_sqlite", "_postgres"):
        result = _python(
            f"import sys; import asession.backends.{dialect}; print('asession.backends.db' in sys.modules)"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "False", dialect


def test_db_module_reexports_the_driver_protocol() -> None:
    """The names users and tests imported from db.py still come from there, and are the protocol's own."""
    from asession.backends import _driver, db
    from asession.backends.db import DEFAULT_BUSY_TIMEOUT, DEFAULT_TABLE, Driver, Statements

    assert Statements is _driver.Statements and Driver is _driver.Driver
    assert DEFAULT_TABLE == "asession_sessions" and DEFAULT_BUSY_TIMEOUT == 5.0
    assert {"Driver", "Statements", "DatabaseBackend"} <= set(db.__all__)


def test_sqlite_backend_works_without_aiosqlite(tmp_path: Path) -> None:
    """SQLite needs nothing beyond the standard library: with aiosqlite unimportable, sessions save and merge."""
    path = tmp_path / "plain.sqlite3"
    result = _python(
        "import asyncio, sys\n"
        "sys.modules['aiosqlite'] = None\n"
        "from asession.backends.db import DatabaseBackend\n"
        "async def main():\n"
        f"    async with DatabaseBackend({str(path)!r}) as backend:\n"
        "        await backend.save('k' * 32, {'a': 1}, 60)\n"
        "        await backend.update('k' * 32, {'b': 2}, (), 60)\n"
        "        print(await backend.load('k' * 32))\n"
        "asyncio.run(main())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'a': 1, 'b': 2}"
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM asession_sessions").fetchone() == (1,)
