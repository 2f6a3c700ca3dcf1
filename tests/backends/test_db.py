"""DatabaseBackend quirks: the SQLite file and schema, URL forms, table names, counts, and the PostgreSQL pool.

The storage contract itself runs in ``test_contract.py`` on ``[sqlite]`` and ``[postgres]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import sqlite3
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from asession import keys
from asession.backends import backend_from_url
from asession.backends._sqlite import SQLiteDriver
from asession.backends.base import SessionBackend
from asession.backends.db import DatabaseBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured
from tests.conftest import Clock

DAY = 86400


def _rows(path: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return list(connection.execute(sql, parameters).fetchall())
    finally:
        connection.close()


# -- SQLite: file, schema, URL forms ---------------------------------------------------------------------


async def test_sqlite_file_is_in_wal_mode(sqlite_backend: SessionBackend, sqlite_path: Path) -> None:
    """Opening the backend creates the file and switches it to WAL journaling."""
    assert _rows(sqlite_path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_schema_and_expiry_index_exist(sqlite_backend: SessionBackend, sqlite_path: Path) -> None:
    """open() creates asession_sessions with its three columns and an index on expire_at."""
    columns = _rows(sqlite_path, "SELECT name, type, \"notnull\", pk FROM pragma_table_info('asession_sessions')")
    assert columns == [("session_key", "TEXT", 0, 1), ("session_data", "TEXT", 1, 0), ("expire_at", "REAL", 1, 0)]
    indexed = _rows(sqlite_path, "SELECT name FROM pragma_index_info('asession_sessions_expire_at_idx')")
    assert indexed == [("expire_at",)]


async def test_sqlite_row_holds_hashed_key_json_and_expiry(
    sqlite_backend: SessionBackend, sqlite_path: Path, clock: Clock
) -> None:
    """A saved row holds the SHA-256 of the key, the JSON text and now + expiry_age in epoch seconds."""
    key = keys.new_key()
    await sqlite_backend.save(key, {"user": 42}, 600)
    [(stored_key, data, expire_at)] = _rows(sqlite_path, "SELECT * FROM asession_sessions")
    assert stored_key == keys.storage_key(key) != key
    assert isinstance(data, str) and json.loads(data) == {"user": 42}
    assert expire_at == clock.current.timestamp() + 600


async def test_sqlite_reopening_keeps_sessions(sqlite_path: Path) -> None:
    """A second backend on the same file finds the table already there and the sessions in it."""
    key = keys.new_key()
    async with DatabaseBackend(sqlite_path) as first:
        await first.save(key, {"v": 1}, DAY)
    async with DatabaseBackend(sqlite_path) as second:
        assert await second.load(key) == {"v": 1}


@pytest.mark.parametrize("form", ["path", "pathlib", "url"])
async def test_sqlite_path_forms_name_the_same_file(tmp_path: Path, form: str) -> None:
    """A plain path, a Path object and a sqlite:/// URL with an absolute path all open the given file."""
    path = tmp_path / "forms.sqlite3"
    targets: dict[str, str | Path] = {"path": str(path), "pathlib": path, "url": f"sqlite:///{path}"}
    target = targets[form]
    key = keys.new_key()
    async with DatabaseBackend(target) as backend:
        await backend.save(key, {"form": form}, DAY)
        assert repr(backend) == f"<DatabaseBackend {path}>"
    assert _rows(path, "SELECT session_key FROM asession_sessions") == [(keys.storage_key(key),)]


async def test_sqlite_relative_url_is_relative_to_the_working_directory(tmp_cwd: Path) -> None:
    """sqlite:///relative.db (three slashes) names a file under the current directory."""
    backend = backend_from_url("sqlite:///relative.db")
    assert isinstance(backend, DatabaseBackend)
    async with backend:
        await backend.save(keys.new_key(), {}, DAY)
    assert (tmp_cwd / "relative.db").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/sessions.db"])
def test_sqlite_url_without_a_path_raises_improperly_configured(url: str) -> None:
    """A sqlite URL that names no file (or names a host) is refused at construction."""
    with pytest.raises(ImproperlyConfigured, match="names no file") as info:
        DatabaseBackend(url)
    assert repr(url) in str(info.value)


def test_sqlite_url_with_query_parameters_raises_improperly_configured() -> None:
    """Query parameters of a sqlite URL would silently become part of the file name, so they are refused."""
    with pytest.raises(ImproperlyConfigured, match="query parameters") as info:
        DatabaseBackend("sqlite:///sessions.db?timeout=10")
    assert "'sqlite:///sessions.db?timeout=10'" in str(info.value)


async def test_sqlite_missing_directory_raises_improperly_configured(tmp_path: Path) -> None:
    """Opening a database in a directory that does not exist names the directory to create."""
    backend = DatabaseBackend(tmp_path / "missing" / "sessions.db")
    with pytest.raises(ImproperlyConfigured, match="doesn't exist") as info:
        await backend.open()
    assert repr(str(tmp_path / "missing")) in str(info.value)


async def test_sqlite_read_connection_is_read_only_and_memory_mapped(sqlite_backend: SessionBackend) -> None:
    """The read connection refuses writes and maps the file into memory (cheap page-cache misses on big stores)."""
    assert isinstance(sqlite_backend, DatabaseBackend) and isinstance(sqlite_backend.driver, SQLiteDriver)
    reader = sqlite_backend.driver._reader
    assert reader is not None
    assert reader.execute("PRAGMA query_only").fetchall() == [(1,)]
    assert reader.execute("PRAGMA mmap_size").fetchall() == [(256 * 1024 * 1024,)]


async def test_sqlite_in_memory_database_works_without_a_reader() -> None:
    """':memory:' keeps sessions in one private connection, read through the write thread."""
    async with DatabaseBackend(":memory:") as backend:
        assert isinstance(backend.driver, SQLiteDriver)
        assert backend.driver._reader is None
        key = keys.new_key()
        await backend.save(key, {"v": 1}, DAY)
        assert await backend.load(key) == {"v": 1}


@pytest.mark.parametrize(
    "table", ["", "1sessions", "sessions; DROP TABLE users", 'se"ss', "public.sessions", "s p", "x" * 50, None]
)
def test_bad_table_name_raises_improperly_configured(table: object) -> None:
    """A table name that is not a plain identifier of up to 49 characters is refused, and quoted in the message."""
    with pytest.raises(ImproperlyConfigured, match="not a plain SQL identifier") as info:
        DatabaseBackend("sessions.db", table=table)  # type: ignore[arg-type]
    assert repr(table) in str(info.value)


async def test_custom_table_name_is_used(tmp_path: Path) -> None:
    """table= names the table and its index; nothing is written to the default table."""
    path = tmp_path / "custom.sqlite3"
    async with DatabaseBackend(path, table="web_sessions") as backend:
        await backend.save(keys.new_key(), {"v": 1}, DAY)
    names = {name for (name,) in _rows(path, "SELECT name FROM sqlite_master")}
    assert {"web_sessions", "web_sessions_expire_at_idx"} <= names
    assert "asession_sessions" not in names
    assert _rows(path, "SELECT COUNT(*) FROM web_sessions") == [(1,)]


@pytest.mark.parametrize("url", ["mysql://user:s3cret@db/sessions", "redis+sqlite://x"])
def test_unsupported_scheme_raises_without_the_password(url: str) -> None:
    """A URL of another database is refused with a message that hides its password."""
    with pytest.raises(ImproperlyConfigured, match="supports SQLite and PostgreSQL") as info:
        DatabaseBackend(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("busy_timeout", [-1, True, "5"])
def test_bad_busy_timeout_raises_improperly_configured(busy_timeout: object) -> None:
    """busy_timeout must be a non-negative number of seconds."""
    with pytest.raises(ImproperlyConfigured, match="busy_timeout") as info:
        DatabaseBackend("sessions.db", busy_timeout=busy_timeout)  # type: ignore[arg-type]
    assert repr(busy_timeout) in str(info.value)


@pytest.mark.parametrize("url", ["sessions.db", "postgresql://postgres@127.0.0.1/test"])
@pytest.mark.parametrize("command_timeout", [0, -1, True, "5", None, math.nan, math.inf])
def test_bad_command_timeout_raises_improperly_configured(url: str, command_timeout: object) -> None:
    """command_timeout must be a positive, finite number of seconds, on either database."""
    with pytest.raises(ImproperlyConfigured, match="command_timeout") as info:
        DatabaseBackend(url, command_timeout=command_timeout)  # type: ignore[arg-type]
    assert repr(command_timeout) in str(info.value)


async def test_sqlite_command_timeout_is_accepted(tmp_path: Path) -> None:
    """SQLite takes command_timeout and keeps working (busy_timeout bounds its waits instead)."""
    key = keys.new_key()
    async with DatabaseBackend(tmp_path / "sessions.sqlite3", command_timeout=0.5) as backend:
        assert backend.command_timeout == 0.5
        await backend.save(key, {"v": 1}, DAY)
        assert await backend.load(key) == {"v": 1}


# -- SQLite: reads, writes, counts -------------------------------------------------------------------------


async def test_sqlite_clear_expired_counts_and_keeps_live_rows(
    sqlite_backend: SessionBackend, sqlite_path: Path, clock: Clock
) -> None:
    """Expired rows stay on disk until clear_expired(), which deletes exactly those and returns their number."""
    short = [keys.new_key() for _ in range(3)]
    live = [keys.new_key() for _ in range(2)]
    for key in short:
        await sqlite_backend.save(key, {"v": "short"}, 10)
    for key in live:
        await sqlite_backend.save(key, {"v": "live"}, DAY)
    clock.advance(10)  # expire_at <= now: expired exactly at its expiry time
    assert await sqlite_backend.load(short[0]) is None
    assert _rows(sqlite_path, "SELECT COUNT(*) FROM asession_sessions") == [(5,)]
    assert await sqlite_backend.clear_expired() == 3
    remaining = {stored for (stored,) in _rows(sqlite_path, "SELECT session_key FROM asession_sessions")}
    assert remaining == {keys.storage_key(key) for key in live}
    assert await sqlite_backend.clear_expired() == 0


async def test_sqlite_clear_expired_restores_the_page_cache_size(sqlite_backend: SessionBackend) -> None:
    """The larger page cache clear_expired() uses is given back afterwards."""
    assert isinstance(sqlite_backend, DatabaseBackend) and isinstance(sqlite_backend.driver, SQLiteDriver)
    driver = sqlite_backend.driver

    def cache_size(connection: sqlite3.Connection) -> list[tuple[object, ...]]:
        return list(connection.execute("PRAGMA cache_size").fetchall())

    before = await driver.run_on_writer(cache_size)
    await sqlite_backend.clear_expired()
    assert await driver.run_on_writer(cache_size) == before


async def test_sqlite_sees_rows_written_by_another_process(
    sqlite_backend: SessionBackend, sqlite_path: Path, clock: Clock
) -> None:
    """A row committed through another connection (another worker) is loaded and counted as existing."""
    key = keys.new_key()
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        other.execute(
            "INSERT INTO asession_sessions VALUES (?, ?, ?)",
            (keys.storage_key(key), '{"from": "worker 2"}', clock.current.timestamp() + 60),
        )
    finally:
        other.close()
    assert await sqlite_backend.load(key) == {"from": "worker 2"}
    assert await sqlite_backend.exists(key)


class _BusyReader:
    """Stands in for the read connection while SQLite reports it busy."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, sql: str, parameters: object) -> sqlite3.Cursor:
        self.calls += 1
        raise sqlite3.OperationalError("database is locked")


async def test_sqlite_busy_read_falls_back_to_the_write_thread(
    sqlite_backend: SessionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the read connection reports busy, load() and exists() still answer, through the writer thread."""
    assert isinstance(sqlite_backend, DatabaseBackend) and isinstance(sqlite_backend.driver, SQLiteDriver)
    key = keys.new_key()
    await sqlite_backend.save(key, {"v": 1}, DAY)
    busy = _BusyReader()
    monkeypatch.setattr(sqlite_backend.driver, "_reader", busy)  # undone before the backend closes
    assert await sqlite_backend.load(key) == {"v": 1}
    assert await sqlite_backend.exists(key)
    assert await sqlite_backend.load(keys.new_key()) is None
    assert busy.calls == 3


async def test_sqlite_write_waits_busy_timeout_for_a_locked_database(tmp_path: Path) -> None:
    """A save blocked by another process's write lock waits busy_timeout, then raises BackendUnavailableError."""
    path = tmp_path / "locked.sqlite3"
    async with DatabaseBackend(path, busy_timeout=0.3) as backend:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="locked"):
                await backend.save(keys.new_key(), {"v": 1}, DAY)
            assert time.monotonic() - started >= 0.25
        finally:
            other.execute("ROLLBACK")
            other.close()
        await backend.save(keys.new_key(), {"v": 2}, DAY)


# -- SQLite: file permissions, opening ------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _create_database(path: Path, *, mode: int) -> None:
    sqlite3.connect(path).close()
    path.chmod(mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which files are created readable by everyone unless asked otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
async def test_sqlite_new_database_files_are_private(umask_022: None, sqlite_path: Path) -> None:
    """A database file open() creates, and the -wal and -shm files SQLite adds, are readable by their owner only."""
    async with DatabaseBackend(sqlite_path) as backend:
        await backend.save(keys.new_key(), {"secret": 1}, DAY)
        files = [sqlite_path, Path(f"{sqlite_path}-wal"), Path(f"{sqlite_path}-shm")]
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
async def test_sqlite_existing_database_file_keeps_its_mode(umask_022: None, sqlite_path: Path) -> None:
    """open() leaves the permissions of a database file that already exists as they are."""
    _create_database(sqlite_path, mode=0o640)
    async with DatabaseBackend(sqlite_path) as backend:
        await backend.save(keys.new_key(), {"v": 1}, DAY)
    assert _mode(sqlite_path) == 0o640


@contextlib.contextmanager
def _write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the write lock of ``path`` (in rollback mode, as a fresh file is) from another connection."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_sqlite_open_waits_for_a_write_lock_on_a_fresh_file(sqlite_path: Path) -> None:
    """Switching a fresh file to WAL while another connection writes waits for it instead of failing at once."""
    with _write_locked(sqlite_path) as other:
        asyncio.get_running_loop().call_later(0.2, other.execute, "ROLLBACK")
        started = time.monotonic()
        async with DatabaseBackend(sqlite_path, busy_timeout=5) as backend:
            assert time.monotonic() - started >= 0.15
            await backend.save(keys.new_key(), {"v": 1}, DAY)
    assert _rows(sqlite_path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_open_fails_after_busy_timeout_when_the_lock_stays(sqlite_path: Path) -> None:
    """A write lock held beyond busy_timeout makes open() raise BackendUnavailableError after about busy_timeout."""
    backend = DatabaseBackend(sqlite_path, busy_timeout=0.3)
    with _write_locked(sqlite_path):
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=r"longer than busy_timeout=0\.3 seconds"):
            await backend.open()
        waited = time.monotonic() - started
    assert 0.25 <= waited < 1.5, f"gave up after {waited:.3f}s"
    assert not backend.is_open
    await backend.open()  # the lock gone, the same backend opens
    await backend.close()


async def test_sqlite_backends_opening_a_fresh_file_together_all_open(tmp_path: Path) -> None:
    """Eight workers opening one fresh file at the same moment all open, round after round (no WAL switch race)."""
    for round_ in range(40):
        path = tmp_path / f"fresh{round_}.sqlite3"
        backends = [DatabaseBackend(path) for _ in range(8)]
        try:
            results = await asyncio.gather(*(backend.open() for backend in backends), return_exceptions=True)
            assert [result for result in results if result is not None] == [], f"round {round_}"
        finally:
            await asyncio.gather(*(backend.close() for backend in backends))


# -- both databases ----------------------------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite_backend", id="sqlite"),
        pytest.param("postgres_backend", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_backend(request: pytest.FixtureRequest) -> SessionBackend:
    """SQLite and PostgreSQL, for the quirks they share."""
    backend: SessionBackend = request.getfixturevalue(request.param)
    return backend


async def test_concurrent_must_create_lets_exactly_one_win(db_backend: SessionBackend) -> None:
    """Twenty simultaneous must_create saves of one key: one is stored, the nineteen others raise CreateError."""
    key = keys.new_key()
    results = await asyncio.gather(
        *(db_backend.save(key, {"n": n}, DAY, must_create=True) for n in range(20)), return_exceptions=True
    )
    winners = [n for n, result in enumerate(results) if result is None]
    assert len(winners) == 1
    assert all(isinstance(result, CreateError) for result in results if result is not None)
    assert await db_backend.load(key) == {"n": winners[0]}


async def test_clear_expired_counts_many_rows(db_backend: SessionBackend, clock: Clock) -> None:
    """clear_expired() returns the number of rows deleted, not a status flag."""
    for _ in range(25):
        await db_backend.save(keys.new_key(), {}, 5)
    live = keys.new_key()
    await db_backend.save(live, {"live": True}, DAY)
    clock.advance(6)
    assert await db_backend.clear_expired() == 25
    assert await db_backend.load(live) == {"live": True}


# -- PostgreSQL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_pool_size", "max_pool_size", "fragment"),
    [
        (-1, 10, "min_pool_size must be an int of at least 0, not -1"),
        (1, 0, "max_pool_size must be an int of at least 1, not 0"),
        (1, True, "max_pool_size must be an int of at least 1, not True"),
        (5, 2, "min_pool_size (5) must not exceed max_pool_size (2)"),
    ],
)
def test_postgres_bad_pool_sizes_raise_improperly_configured(
    min_pool_size: int, max_pool_size: int, fragment: str
) -> None:
    """Pool sizes must be ints, max at least 1 and min at most max; each mistake is named."""
    pytest.importorskip("asyncpg")
    with pytest.raises(ImproperlyConfigured) as info:
        DatabaseBackend(
            "postgresql://postgres@127.0.0.1/test", min_pool_size=min_pool_size, max_pool_size=max_pool_size
        )
    assert fragment in str(info.value)


def test_postgres_malformed_port_raises_improperly_configured() -> None:
    """A port that is not a number is refused at construction, password hidden."""
    with pytest.raises(ImproperlyConfigured, match="malformed") as info:
        DatabaseBackend("postgresql://user:s3cret@127.0.0.1:port/db")
    assert "s3cret" not in str(info.value)


def test_postgres_without_asyncpg_raises_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without asyncpg, constructing a PostgreSQL backend says which extra to install."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ImproperlyConfigured) as info:
        DatabaseBackend("postgresql://u@127.0.0.1/db")
    assert str(info.value) == (
        "DatabaseBackend needs asyncpg for PostgreSQL. Install it with `pip install 'asession[postgres]'`."
    )
    assert isinstance(info.value.__cause__, ImportError)


def test_postgres_repr_hides_the_password() -> None:
    """repr() of a PostgreSQL backend shows the URL with its password replaced by ***."""
    pytest.importorskip("asyncpg")
    backend = DatabaseBackend("postgres://app:s3cret@db.example:5432/web")
    assert repr(backend) == "<DatabaseBackend postgres://app:***@db.example:5432/web>"


async def test_postgres_unreachable_server_names_url_without_password() -> None:
    """open() against a closed port raises BackendUnavailableError naming host and port but not the password."""
    pytest.importorskip("asyncpg")
    backend = DatabaseBackend("postgresql://app:s3cret@127.0.0.1:1/sessions")
    with pytest.raises(BackendUnavailableError) as info:
        await backend.open()
    message = str(info.value)
    assert "postgresql://app:***@127.0.0.1:1/sessions" in message
    assert "s3cret" not in message
    assert not backend.is_open


@pytest.fixture
def pg_tag() -> str:
    """A fresh name, used both as table name and as the pool's application_name."""
    return f"asession_test_{secrets.token_hex(4)}"


@pytest.fixture
async def pg_cleanup(postgres_url: str, pg_tag: str) -> AsyncIterator[None]:
    """Drop the test's own table afterwards."""
    yield
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(f'DROP TABLE IF EXISTS "{pg_tag}"')
    finally:
        await connection.close()


@pytest.fixture
async def pg_own_backend(postgres_url: str, pg_tag: str, pg_cleanup: None) -> AsyncIterator[DatabaseBackend]:
    """A PostgreSQL backend on its own table whose connections are named ``pg_tag``."""
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}application_name={pg_tag}"
    async with DatabaseBackend(url, table=pg_tag, min_pool_size=2, max_pool_size=3) as backend:
        yield backend


async def _fetch(postgres_url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        return [tuple(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_postgres_schema_and_expiry_index_exist(
    pg_own_backend: DatabaseBackend, postgres_url: str, pg_tag: str
) -> None:
    """open() creates the table with TEXT key and data, a DOUBLE PRECISION expiry, and an index on it."""
    columns = await _fetch(
        postgres_url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = $1 ORDER BY ordinal_position",
        pg_tag,
    )
    assert columns == [
        ("session_key", "text", "NO"),
        ("session_data", "text", "NO"),
        ("expire_at", "double precision", "NO"),
    ]
    indexes = await _fetch(postgres_url, "SELECT indexdef FROM pg_indexes WHERE tablename = $1", pg_tag)
    assert any(
        f"{pg_tag}_expire_at_idx" in str(definition) and "(expire_at)" in str(definition) for (definition,) in indexes
    )


@pytest.mark.postgres
async def test_postgres_pool_sizes_are_applied(pg_own_backend: DatabaseBackend, postgres_url: str, pg_tag: str) -> None:
    """min_pool_size connections are open after open(), and the pool never grows past max_pool_size."""
    count_sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1"
    assert await _fetch(postgres_url, count_sql, pg_tag) == [(2,)]
    await asyncio.gather(*(pg_own_backend.save(keys.new_key(), {"n": n}, DAY) for n in range(30)))
    [(count,)] = await _fetch(postgres_url, count_sql, pg_tag)
    assert isinstance(count, int) and 2 <= count <= 3


@pytest.mark.postgres
async def test_postgres_pool_recovers_after_connections_are_killed(
    pg_own_backend: DatabaseBackend, postgres_url: str, pg_tag: str
) -> None:
    """Calls made right after the server killed every pooled connection still succeed, on fresh connections."""
    key = keys.new_key()
    await pg_own_backend.save(key, {"v": 0}, DAY)
    for round_ in range(3):
        killed = await _fetch(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1 AND pid <> pg_backend_pid()",
            pg_tag,
        )
        assert killed, "the test must have killed connections of its pool"
        results = await asyncio.gather(*(pg_own_backend.load(key) for _ in range(3)))
        assert results == [{"v": round_}] * 3
        await pg_own_backend.save(key, {"v": round_ + 1}, DAY)


@pytest.mark.postgres
async def test_postgres_backends_opening_together_create_the_table_once(
    postgres_url: str, pg_tag: str, pg_cleanup: None
) -> None:
    """Several workers opening on a missing table at the same moment all succeed (no CREATE TABLE race)."""
    backends = [DatabaseBackend(postgres_url, table=pg_tag, min_pool_size=1, max_pool_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(backend.open() for backend in backends))
        key = keys.new_key()
        await backends[0].save(key, {"v": 1}, DAY)
        assert await backends[-1].load(key) == {"v": 1}
    finally:
        await asyncio.gather(*(backend.close() for backend in backends))


@pytest.mark.postgres
async def test_postgres_missing_database_raises_improperly_configured(postgres_url: str) -> None:
    """A URL naming a database that does not exist is a configuration error, not an outage."""
    url = postgres_url.split("?", 1)[0].rsplit("/", 1)[0] + "/asession_no_such_database"
    with pytest.raises(ImproperlyConfigured, match="asession_no_such_database"):
        await DatabaseBackend(url).open()


# -- PostgreSQL: command_timeout ---------------------------------------------------------------------------

#: A short command_timeout, so that the tests that run into it stay fast.
PG_TIMEOUT = 0.3


@pytest.fixture
async def pg_timeout_backend(postgres_url: str, pg_tag: str, pg_cleanup: None) -> AsyncIterator[DatabaseBackend]:
    """A PostgreSQL backend on its own table with one pooled connection and command_timeout=PG_TIMEOUT."""
    async with DatabaseBackend(
        postgres_url, table=pg_tag, min_pool_size=1, max_pool_size=1, command_timeout=PG_TIMEOUT
    ) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _table_locked(postgres_url: str, table: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``table`` from another connection, in an open transaction."""
    import asyncpg

    connection = await asyncpg.connect(postgres_url)
    try:
        async with connection.transaction():
            await connection.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            yield
    finally:
        await connection.close()


async def _fails_in_time(call: Awaitable[object], match: str) -> float:
    """Await ``call``, which must raise BackendUnavailableError matching ``match``; return the seconds it took."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=match):
        # The guard turns a hang into a failure (TimeoutError) instead of a stuck test run.
        await asyncio.wait_for(call, timeout=5)
    return time.monotonic() - started


_LOCKED_CALLS: dict[str, Callable[[DatabaseBackend, str], Awaitable[object]]] = {
    "load": lambda backend, key: backend.load(key),
    "save": lambda backend, key: backend.save(key, {"v": 2}, DAY),
    "create": lambda backend, key: backend.save(keys.new_key(), {"v": 2}, DAY, must_create=True),
    "update": lambda backend, key: backend.update(key, {"w": 2}, (), DAY),
    "clear_expired": lambda backend, key: backend.clear_expired(),
}


@pytest.mark.postgres
@pytest.mark.parametrize("operation", list(_LOCKED_CALLS))
async def test_postgres_locked_table_fails_within_command_timeout(
    pg_timeout_backend: DatabaseBackend, postgres_url: str, pg_tag: str, operation: str
) -> None:
    """With the table locked by another transaction, a call raises BackendUnavailableError after command_timeout."""
    key = keys.new_key()
    await pg_timeout_backend.save(key, {"v": 1}, DAY)
    async with _table_locked(postgres_url, pg_tag):
        waited = await _fails_in_time(_LOCKED_CALLS[operation](pg_timeout_backend, key), "timeout")
    assert PG_TIMEOUT * 0.9 <= waited < PG_TIMEOUT + 1, f"gave up after {waited:.3f}s"


@pytest.mark.postgres
async def test_postgres_timed_out_connection_serves_the_next_calls(
    pg_timeout_backend: DatabaseBackend, postgres_url: str, pg_tag: str
) -> None:
    """After timed-out load and save on its only connection, the pool answers as soon as the lock is released."""
    key = keys.new_key()
    await pg_timeout_backend.save(key, {"v": 1}, DAY)
    async with _table_locked(postgres_url, pg_tag):
        await _fails_in_time(pg_timeout_backend.load(key), "did not finish within command_timeout=0.3 seconds")
        await _fails_in_time(pg_timeout_backend.save(key, {"v": 2}, DAY), "was cancelled")
    assert await pg_timeout_backend.load(key) == {"v": 1}
    await pg_timeout_backend.save(key, {"v": 3}, DAY)
    assert await pg_timeout_backend.load(key) == {"v": 3}
    assert await pg_timeout_backend.clear_expired() == 0


@pytest.mark.postgres
async def test_postgres_exhausted_pool_fails_within_command_timeout(pg_timeout_backend: DatabaseBackend) -> None:
    """With the pool's only connection held elsewhere, load and save raise after command_timeout instead of waiting."""
    from asession.backends._postgres import PostgresDriver

    assert isinstance(pg_timeout_backend.driver, PostgresDriver)
    key = keys.new_key()
    await pg_timeout_backend.save(key, {"v": 1}, DAY)
    async with pg_timeout_backend.driver.pool.acquire():
        waits = [
            await _fails_in_time(pg_timeout_backend.load(key), r"max_pool_size=1\)"),
            await _fails_in_time(pg_timeout_backend.save(key, {"v": 2}, DAY), r"max_pool_size=1\)"),
        ]
    assert all(PG_TIMEOUT * 0.9 <= waited < PG_TIMEOUT + 1 for waited in waits), waits
    assert await pg_timeout_backend.load(key) == {"v": 1}
