"""SQLite group commit: queued writes share one transaction, and each caller learns exactly its own outcome.

Writes submitted in one event-loop iteration (``asyncio.gather``), or while a batch is being written,
run as one ``BEGIN IMMEDIATE ... COMMIT`` on the driver's writer thread; updates are items of those batches.
``batches`` records the size of every batch the writer thread starts; ``write_lock`` holds SQLite's write
lock from another connection (another process, as far as SQLite is concerned) so that a batch can be
caught while it runs. The tests watch the driver only through its public behaviour, that spy and the
thread's name.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from asession import keys
from asession.backends import _sqlite
from asession.backends._sqlite import MAX_BATCH, WRITER_THREAD_NAME, SQLiteDriver
from asession.backends.base import SessionBackend
from asession.backends.db import DatabaseBackend
from asession.exceptions import BackendUnavailableError, CreateError, SessionError, UpdateError

DAY = 86400


def _driver(backend: SessionBackend) -> SQLiteDriver:
    assert isinstance(backend, DatabaseBackend) and isinstance(backend.driver, SQLiteDriver)
    return backend.driver


def _stored(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        [(count,)] = connection.execute("SELECT COUNT(*) FROM asession_sessions").fetchall()
        return int(count)
    finally:
        connection.close()


def _run_sql(path: Path, script: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.executescript(script)
    finally:
        connection.close()


def _writer_threads(path: Path) -> list[threading.Thread]:
    """The live writer threads of the drivers on ``path``."""
    return [thread for thread in threading.enumerate() if thread.name == f"{WRITER_THREAD_NAME} {path}"]


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of writes of every batch the writer thread starts, in order (appended on that thread)."""
    sizes: list[int] = []
    original = _sqlite._run_batch

    def spy(connection: Any, items: list[Any], callers: list[Any]) -> Any:
        sizes.append(len(items))
        return original(connection, items, callers)

    monkeypatch.setattr(_sqlite, "_run_batch", spy)
    return sizes


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection until the block ends."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        if other.in_transaction:
            other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
async def slow_backend(sqlite_path: Path) -> AsyncIterator[DatabaseBackend]:
    """A SQLite backend that waits up to 5 s for a write lock, long enough to catch a batch while it waits."""
    async with DatabaseBackend(sqlite_path, busy_timeout=5) as backend:
        yield backend


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batch"
        await asyncio.sleep(0.005)


async def _batch_running(batches: list[int], count: int = 1) -> None:
    """Wait until the writer thread started its ``count``-th batch."""
    await _until(lambda: len(batches) >= count)
    await asyncio.sleep(0.05)  # let the thread reach BEGIN IMMEDIATE and wait on the lock


# -- grouping ------------------------------------------------------------------------------------------


async def test_concurrent_saves_of_many_keys_all_land_in_bounded_batches(
    sqlite_backend: SessionBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """300 simultaneous saves are written in batches of at most MAX_BATCH, and every one of them is stored."""
    saved = {keys.new_key(): n for n in range(300)}
    await asyncio.gather(*(sqlite_backend.save(key, {"n": n}, DAY) for key, n in saved.items()))
    assert sum(batches) == 300
    assert max(batches) == MAX_BATCH
    assert len(batches) == 2
    assert _stored(sqlite_path) == 300
    loaded = await asyncio.gather(*(sqlite_backend.load(key) for key in saved))
    assert loaded == [{"n": n} for n in saved.values()]


async def test_saved_session_is_visible_on_the_read_connection_once_save_returns(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """Once save() returned, the read-only connection in the event loop (no thread hop) sees the row."""
    driver = _driver(sqlite_backend)
    assert driver._reader is not None
    saved = [keys.new_key() for _ in range(20)]
    await asyncio.gather(*(sqlite_backend.save(key, {"key": key}, DAY) for key in saved))
    assert batches == [20]
    for key in saved:
        assert await sqlite_backend.load(key) == {"key": key}


async def test_saves_of_one_key_in_one_batch_apply_in_submission_order(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """Ten saves of one key submitted together are one batch, run in order: the last submitted wins."""
    key = keys.new_key()
    await asyncio.gather(*(sqlite_backend.save(key, {"n": n}, DAY) for n in range(10)))
    assert batches == [10]
    assert await sqlite_backend.load(key) == {"n": 9}


async def test_save_then_delete_in_one_batch_leaves_nothing(sqlite_backend: SessionBackend, batches: list[int]) -> None:
    """A save and a delete of one key in the same batch run in submission order."""
    key = keys.new_key()
    await asyncio.gather(sqlite_backend.save(key, {"v": 1}, DAY), sqlite_backend.delete(key))
    assert batches == [2]
    assert await sqlite_backend.load(key) is None


async def test_create_collision_in_one_batch_has_exactly_one_winner(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """Creates of one key among other writes of the same batch: the first inserts, the others raise CreateError."""
    key = keys.new_key()
    others = [keys.new_key() for _ in range(3)]
    results = await asyncio.gather(
        sqlite_backend.save(others[0], {"other": 0}, DAY),
        *(sqlite_backend.save(key, {"n": n}, DAY, must_create=True) for n in range(5)),
        sqlite_backend.save(others[1], {"other": 1}, DAY, must_create=True),
        sqlite_backend.save(others[2], {"other": 2}, DAY),
        return_exceptions=True,
    )
    assert batches == [8]
    assert results[0] is None and list(results[6:]) == [None, None]
    assert results[1] is None  # submitted first, so it is the one that inserted
    assert all(isinstance(result, CreateError) for result in results[2:6])
    assert await sqlite_backend.load(key) == {"n": 0}
    assert [await sqlite_backend.load(other) for other in others] == [{"other": n} for n in range(3)]


async def test_writes_submitted_during_a_batch_form_the_next_batch(
    slow_backend: DatabaseBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """While one batch waits for the write lock, newly submitted writes queue up and go together afterwards."""
    first, later = keys.new_key(), [keys.new_key() for _ in range(5)]
    with write_lock(sqlite_path):
        running = asyncio.create_task(slow_backend.save(first, {"v": 0}, DAY))
        await _batch_running(batches)
        queued = [asyncio.create_task(slow_backend.save(key, {"v": 1}, DAY)) for key in later]
        await asyncio.sleep(0.05)
        assert batches == [1], "a second batch never starts while one is running"
        assert not any(task.done() for task in [running, *queued])
    await asyncio.gather(running, *queued)
    assert batches == [1, 5]
    assert _stored(sqlite_path) == 6


# -- failures ------------------------------------------------------------------------------------------


async def test_a_failing_statement_fails_only_its_caller(
    sqlite_backend: SessionBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """A statement refused by a constraint fails its own caller; the rest of the batch commits."""
    _run_sql(
        sqlite_path,
        "CREATE TRIGGER refuse BEFORE INSERT ON asession_sessions WHEN NEW.session_data LIKE '%refused%' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END;",
    )
    good = [keys.new_key() for _ in range(4)]
    bad = keys.new_key()
    results = await asyncio.gather(
        sqlite_backend.save(good[0], {"v": 0}, DAY),
        sqlite_backend.save(good[1], {"v": 1}, DAY, must_create=True),
        sqlite_backend.save(bad, {"v": "refused"}, DAY),
        sqlite_backend.save(good[2], {"v": 2}, DAY, must_create=True),
        sqlite_backend.save(good[3], {"v": 3}, DAY),
        return_exceptions=True,
    )
    assert batches == [5]
    assert list(results[:2]) == [None, None] and list(results[3:]) == [None, None]
    error = results[2]
    assert isinstance(error, BackendUnavailableError) and "refused by a trigger" in str(error)
    assert isinstance(error.__cause__, sqlite3.IntegrityError)
    assert await sqlite_backend.load(bad) is None
    assert [await sqlite_backend.load(key) for key in good] == [{"v": n} for n in range(4)]


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        pytest.param("SELECT RAISE(ROLLBACK, 'rolled back by a trigger');", sqlite3.IntegrityError, id="rollback"),
        pytest.param("INSERT INTO missing_table VALUES (1);", sqlite3.OperationalError, id="operational"),
    ],
)
async def test_a_statement_that_ends_the_transaction_fails_every_caller(
    sqlite_backend: SessionBackend, sqlite_path: Path, batches: list[int], body: str, error_type: type[Exception]
) -> None:
    """An error that ends the transaction fails the whole batch: every caller gets it, nothing is stored."""
    before = [keys.new_key() for _ in range(3)]
    await asyncio.gather(*(sqlite_backend.save(key, {"v": "before"}, DAY) for key in before))
    _run_sql(
        sqlite_path,
        f"CREATE TRIGGER doom BEFORE INSERT ON asession_sessions WHEN NEW.session_data LIKE '%doom%' BEGIN {body} END;",
    )
    results = await asyncio.gather(
        sqlite_backend.save(before[0], {"v": "updated"}, DAY),
        sqlite_backend.save(keys.new_key(), {"v": "doom"}, DAY),
        sqlite_backend.save(keys.new_key(), {"v": "fine"}, DAY),
        sqlite_backend.delete(before[1]),
        return_exceptions=True,
    )
    assert batches == [3, 4]
    assert all(isinstance(result, BackendUnavailableError) for result in results)
    causes = [result.__cause__ for result in results if isinstance(result, BaseException)]
    assert all(isinstance(cause, error_type) for cause in causes)
    assert len({id(cause) for cause in causes}) == 4, "each caller gets its own copy of the error"
    assert _stored(sqlite_path) == 3
    assert [await sqlite_backend.load(key) for key in before] == [{"v": "before"}] * 3
    with write_lock(sqlite_path):
        pass  # the batch's transaction was rolled back: another process can take the lock
    await sqlite_backend.delete(before[2])  # and the connection is usable again
    assert await sqlite_backend.load(before[2]) is None


async def test_a_failed_commit_fails_every_caller(
    sqlite_backend: SessionBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """When COMMIT itself fails (here a deferred foreign key), the batch is rolled back and every caller fails."""
    _run_sql(
        sqlite_path,
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
        "CREATE TRIGGER orphan AFTER INSERT ON asession_sessions WHEN NEW.session_data LIKE '%orphan%' "
        "BEGIN INSERT INTO child VALUES (42); END;",
    )
    await _driver(sqlite_backend).run_on_writer(lambda connection: connection.execute("PRAGMA foreign_keys = ON"))
    results = await asyncio.gather(
        sqlite_backend.save(keys.new_key(), {"v": "orphan"}, DAY),
        sqlite_backend.save(keys.new_key(), {"v": "fine"}, DAY),
        return_exceptions=True,
    )
    assert batches == [2]
    assert all(isinstance(result, BackendUnavailableError) and "FOREIGN KEY" in str(result) for result in results)
    assert _stored(sqlite_path) == 0
    key = keys.new_key()
    await sqlite_backend.save(key, {"v": "after"}, DAY)
    assert await sqlite_backend.load(key) == {"v": "after"}


async def test_write_lock_held_beyond_busy_timeout_fails_the_batch_once(tmp_path: Path, batches: list[int]) -> None:
    """Another process holding the write lock: a batch of saves waits busy_timeout once, then all fail."""
    path = tmp_path / "locked.sqlite3"
    async with DatabaseBackend(path, busy_timeout=0.3) as backend:
        with write_lock(path):
            started = time.monotonic()
            results = await asyncio.gather(
                *(backend.save(keys.new_key(), {"n": n}, DAY) for n in range(10)), return_exceptions=True
            )
            waited = time.monotonic() - started
        assert batches == [10]
        assert all(isinstance(result, BackendUnavailableError) and "locked" in str(result) for result in results)
        assert 0.25 <= waited < 2.0
        assert _stored(path) == 0
        await backend.save(keys.new_key(), {"v": 2}, DAY)
        assert _stored(path) == 1


# -- cancellation and close ----------------------------------------------------------------------------


async def test_caller_cancelled_before_its_batch_starts_is_dropped(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """A save cancelled while still queued is not written, and costs no trip to the thread."""
    key = keys.new_key()
    task = asyncio.create_task(sqlite_backend.save(key, {"v": 1}, DAY))
    await asyncio.sleep(0)  # the save is queued; its batch starts on the next loop iteration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert batches == []
    assert await sqlite_backend.load(key) is None


async def test_caller_cancelled_while_its_batch_waits_for_the_lock_is_dropped(
    slow_backend: DatabaseBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """Cancelling one caller of a batch waiting for the write lock drops its write; the others commit."""
    cancelled, kept = keys.new_key(), keys.new_key()
    with write_lock(sqlite_path):
        tasks = [
            asyncio.create_task(slow_backend.save(cancelled, {"v": "cancelled"}, DAY)),
            asyncio.create_task(slow_backend.save(kept, {"v": "kept"}, DAY)),
        ]
        await _batch_running(batches)
        tasks[0].cancel()
        await asyncio.sleep(0.05)
    await tasks[1]
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert batches == [2]
    assert await slow_backend.load(kept) == {"v": "kept"}
    assert await slow_backend.load(cancelled) is None


async def test_timed_out_update_never_lands_after_a_later_one_from_another_process(
    sqlite_path: Path, batches: list[int]
) -> None:
    """An update given up while waiting for the lock is not written after the lock goes, over a later update.

    As in the soak: a request times out (503) while another process holds the lock; the client's next
    request, through another worker, stores a newer value once the lock is gone. The stale update of the
    first worker, still queued on its thread, must not overwrite it.
    """
    key = keys.new_key()
    async with DatabaseBackend(sqlite_path, busy_timeout=5) as first, DatabaseBackend(sqlite_path) as second:
        await first.save(key, {"n": 11}, DAY)
        with write_lock(sqlite_path) as other:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(first.update(key, {"n": 12}, (), DAY), timeout=0.2)
            other.execute("ROLLBACK")
        await second.update(key, {"n": 12}, (), DAY)
        await second.update(key, {"n": 13}, (), DAY)
        await first.save(keys.new_key(), {}, DAY)  # queued behind the abandoned batch: that one has run
        assert batches == [1, 1, 1, 1, 1]
        assert await first.load(key) == {"n": 13}


async def test_caller_cancelled_during_a_failing_batch_gets_no_error(tmp_path: Path, batches: list[int]) -> None:
    """The error of a failed batch goes to the callers still waiting, and to no cancelled future."""
    path = tmp_path / "locked.sqlite3"
    async with DatabaseBackend(path, busy_timeout=0.5) as backend:
        with write_lock(path):
            tasks = [asyncio.create_task(backend.save(keys.new_key(), {"n": n}, DAY)) for n in range(3)]
            await _batch_running(batches)
            tasks[1].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert batches == [3]
        assert isinstance(results[0], BackendUnavailableError) and isinstance(results[2], BackendUnavailableError)
        assert isinstance(results[1], asyncio.CancelledError)


async def test_every_caller_cancelled_during_a_batch_leaves_the_driver_working(
    slow_backend: DatabaseBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """A batch whose callers were all cancelled (a server shutting down) writes nothing; the next write works."""
    saved = [keys.new_key() for _ in range(2)]
    with write_lock(sqlite_path):
        tasks = [asyncio.create_task(slow_backend.save(key, {"n": n}, DAY)) for n, key in enumerate(saved)]
        await _batch_running(batches)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    key = keys.new_key()
    await slow_backend.save(key, {"v": "after"}, DAY)  # queued behind the abandoned batch on the thread
    assert batches == [2, 1]
    assert await slow_backend.load(key) == {"v": "after"}
    assert [await slow_backend.load(key) for key in saved] == [None, None]


async def test_close_writes_queued_batches_and_waits_for_the_running_one(sqlite_path: Path, batches: list[int]) -> None:
    """close() during a batch, with more writes queued: all are committed, and nothing is left running."""
    backend = DatabaseBackend(sqlite_path, busy_timeout=5)
    await backend.open()
    saved = [keys.new_key() for _ in range(4)]
    with write_lock(sqlite_path) as other:
        first = asyncio.create_task(backend.save(saved[0], {"n": 0}, DAY))
        await _batch_running(batches)
        queued = [asyncio.create_task(backend.save(key, {"n": n}, DAY)) for n, key in enumerate(saved[1:], 1)]
        await asyncio.sleep(0)  # queued, not yet started
        closing = asyncio.create_task(backend.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        other.execute("ROLLBACK")
        await closing
    assert await asyncio.gather(first, *queued) == [None] * 4
    assert batches == [1, 3]
    assert _writer_threads(sqlite_path) == []
    assert asyncio.all_tasks() == {asyncio.current_task()}
    async with DatabaseBackend(sqlite_path) as reopened:
        assert [await reopened.load(key) for key in saved] == [{"n": n} for n in range(4)]


async def test_close_right_after_queueing_writes_them(sqlite_path: Path, batches: list[int]) -> None:
    """Writes queued in the same loop iteration as close() are written before the connection closes."""
    backend = DatabaseBackend(sqlite_path)
    await backend.open()
    saved = [keys.new_key() for _ in range(3)]
    tasks = [asyncio.create_task(backend.save(key, {"n": n}, DAY)) for n, key in enumerate(saved)]
    await asyncio.sleep(0)
    await backend.close()
    assert await asyncio.gather(*tasks) == [None] * 3
    assert batches == [3]
    assert _stored(sqlite_path) == 3


async def test_close_with_queued_updates_commits_every_one(sqlite_path: Path, batches: list[int]) -> None:
    """close() while an update batch waits for the lock and more updates are queued: every key is merged in."""
    backend = DatabaseBackend(sqlite_path, busy_timeout=5)
    await backend.open()
    key = keys.new_key()
    await backend.save(key, {"start": True}, DAY)
    with write_lock(sqlite_path) as other:
        first = asyncio.create_task(backend.update(key, {"k0": 0}, (), DAY))
        await _batch_running(batches, 2)
        queued = [asyncio.create_task(backend.update(key, {f"k{n}": n}, (), DAY)) for n in range(1, 6)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(backend.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        other.execute("ROLLBACK")
        await closing
    assert await asyncio.gather(first, *queued) == [None] * 6
    assert batches == [1, 1, 5]
    assert _writer_threads(sqlite_path) == []
    async with DatabaseBackend(sqlite_path) as reopened:
        assert await reopened.load(key) == {"start": True, **{f"k{n}": n for n in range(6)}}


async def test_cancelled_close_fails_the_writes_not_yet_started(sqlite_path: Path, batches: list[int]) -> None:
    """close() cancelled while it waits: the running batch still finishes, queued writes fail cleanly."""
    backend = DatabaseBackend(sqlite_path, busy_timeout=5)
    await backend.open()
    driver = _driver(backend)
    running_key, queued_key = keys.new_key(), keys.new_key()
    with write_lock(sqlite_path) as other:
        running = asyncio.create_task(backend.save(running_key, {"v": "running"}, DAY))
        await _batch_running(batches)
        queued = asyncio.create_task(backend.save(queued_key, {"v": "queued"}, DAY))
        given_up = asyncio.create_task(backend.save(keys.new_key(), {"v": "given up"}, DAY))
        await asyncio.sleep(0)
        given_up.cancel()
        closing = asyncio.create_task(backend.close())
        await asyncio.sleep(0.05)
        closing.cancel()
        await asyncio.sleep(0.05)
        other.execute("ROLLBACK")
        with pytest.raises(asyncio.CancelledError):
            await closing
    with pytest.raises(BackendUnavailableError, match="closed before this write"):
        await queued
    with pytest.raises(asyncio.CancelledError):
        await given_up
    await running
    assert batches == [1]
    assert _writer_threads(sqlite_path) == []
    with pytest.raises(BackendUnavailableError, match="not open"):
        await driver.save(keys.storage_key(keys.new_key()), "{}", time.time() + DAY)
    async with DatabaseBackend(sqlite_path) as reopened:
        assert await reopened.load(running_key) == {"v": "running"}
        assert await reopened.load(queued_key) is None


async def test_driver_write_after_close_raises_backend_unavailable(sqlite_backend: SessionBackend) -> None:
    """The driver refuses a write once its connection is gone, instead of queueing it forever."""
    driver = _driver(sqlite_backend)
    await sqlite_backend.close()
    with pytest.raises(BackendUnavailableError, match="not open"):
        await driver.save(keys.storage_key(keys.new_key()), "{}", time.time() + DAY)
    with pytest.raises(BackendUnavailableError, match="not open"):
        await driver.update(keys.storage_key(keys.new_key()), lambda raw: "{}", time.time() + DAY, time.time())
    with pytest.raises(BackendUnavailableError, match="not open"):
        await driver.run_on_writer(lambda connection: None)


async def test_single_write_cancelled_before_the_thread_reaches_it_is_not_written(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """A lone save handed to the busy writer thread, then cancelled, is skipped when the thread gets to it."""
    driver = _driver(sqlite_backend)
    busy = asyncio.create_task(driver.run_on_writer(lambda connection: time.sleep(0.2)))
    key = keys.new_key()
    save = asyncio.create_task(sqlite_backend.save(key, {"v": 1}, DAY))
    await asyncio.sleep(0.05)  # the batch is queued on the thread, behind the sleeping job
    save.cancel()
    with pytest.raises(asyncio.CancelledError):
        await save
    await busy
    await sqlite_backend.save(keys.new_key(), {"v": 2}, DAY)  # runs after the skipped batch
    assert batches == [1, 1]
    assert await sqlite_backend.load(key) is None


# -- the writer thread ---------------------------------------------------------------------------------------


async def test_writer_thread_runs_while_open_and_is_stopped_by_close(sqlite_path: Path) -> None:
    """open() starts one writer thread per backend and close() ends it: no thread outlives its backend."""
    assert _writer_threads(sqlite_path) == []
    backends = [DatabaseBackend(sqlite_path) for _ in range(3)]
    for backend in backends:
        await backend.open()
        await backend.save(keys.new_key(), {"v": 1}, DAY)
    assert len(_writer_threads(sqlite_path)) == 3
    await asyncio.gather(*(backend.close() for backend in backends))
    assert _writer_threads(sqlite_path) == []
    await backends[0].open()  # a closed backend opens again, with a new thread
    assert len(_writer_threads(sqlite_path)) == 1
    await backends[0].close()
    assert _writer_threads(sqlite_path) == []


async def test_failed_open_leaves_no_writer_thread(sqlite_path: Path, tmp_path: Path) -> None:
    """open() that fails (a lock held beyond busy_timeout, a missing directory) stops the thread it started."""
    with write_lock(sqlite_path):
        with pytest.raises(BackendUnavailableError, match="busy_timeout"):
            await DatabaseBackend(sqlite_path, busy_timeout=0.1).open()
    assert _writer_threads(sqlite_path) == []
    missing = tmp_path / "missing" / "sessions.db"
    with pytest.raises(SessionError, match="doesn't exist"):
        await DatabaseBackend(missing).open()
    assert _writer_threads(missing) == []


def test_sqlite_driver_uses_no_private_aiosqlite_attribute() -> None:
    """No module of the package imports aiosqlite or reaches for its private attributes; nothing caps its version."""
    package = Path(_sqlite.__file__).parent.parent
    private = {"_execute", "_conn", "_tx", "_thread", "_connection_worker_thread"}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "aiosqlite" for alias in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "aiosqlite", path
        if path.name == "_sqlite.py":
            used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
            assert not used & private, used & private
    pyproject = (package.parent / "pyproject.toml").read_text()
    assert not re.search(r"aiosqlite[^\n]*<", pyproject), "no cap on aiosqlite for the sake of a private API"


# -- updates in batches ---------------------------------------------------------------------------------------


async def test_update_in_a_batch_sees_the_writes_queued_before_it(
    sqlite_backend: SessionBackend, batches: list[int]
) -> None:
    """Writes and updates submitted together are one batch, run in order: each update merges what precedes it."""
    created, replaced, deleted = keys.new_key(), keys.new_key(), keys.new_key()
    await asyncio.gather(sqlite_backend.save(replaced, {"old": True}, DAY), sqlite_backend.save(deleted, {"v": 1}, DAY))
    assert batches == [2]
    results = await asyncio.gather(
        sqlite_backend.save(created, {"a": 1}, DAY, must_create=True),
        sqlite_backend.update(created, {"b": 2}, (), DAY),
        sqlite_backend.save(replaced, {"new": True}, DAY),
        sqlite_backend.update(replaced, {"c": 3}, (), DAY),
        sqlite_backend.update(created, {"d": 4}, ["a"], DAY),
        sqlite_backend.delete(deleted),
        sqlite_backend.update(deleted, {"e": 5}, (), DAY),
        return_exceptions=True,
    )
    assert batches == [2, 7]
    assert list(results[:6]) == [None] * 6
    assert isinstance(results[6], UpdateError)
    assert await sqlite_backend.load(created) == {"b": 2, "d": 4}
    assert await sqlite_backend.load(replaced) == {"new": True, "c": 3}
    assert await sqlite_backend.load(deleted) is None


async def test_update_whose_merge_fails_fails_only_its_caller(
    sqlite_backend: SessionBackend, sqlite_path: Path, batches: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Merges that raise (no session, over max_size, corrupt) fail their own callers; the batch commits the rest."""
    live, big, corrupt, saved = keys.new_key(), keys.new_key(), keys.new_key(), keys.new_key()
    await asyncio.gather(
        sqlite_backend.save(live, {"v": 1}, DAY),
        sqlite_backend.save(big, {"blob": "x" * 600}, DAY),
        sqlite_backend.save(corrupt, {"v": 1}, DAY),
    )
    _run_sql(
        sqlite_path,
        f"UPDATE asession_sessions SET session_data = '{{\"tru' WHERE session_key = '{keys.storage_key(corrupt)}'",
    )
    sqlite_backend.max_size = 1000
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        results = await asyncio.gather(
            sqlite_backend.update(keys.new_key(), {"a": 1}, (), DAY),
            sqlite_backend.update(big, {"more": "y" * 600}, (), DAY),
            sqlite_backend.update(live, {"w": 2}, (), DAY),
            sqlite_backend.update(corrupt, {"a": 1}, (), DAY),
            sqlite_backend.save(saved, {"s": 1}, DAY),
            return_exceptions=True,
        )
    assert batches == [3, 5]
    assert isinstance(results[0], UpdateError)
    assert isinstance(results[1], SessionError) and "bytes once serialized" in str(results[1])
    assert results[2] is None and results[4] is None
    assert isinstance(results[3], UpdateError)
    assert [r for r in caplog.records if r.name == "asession.security"]
    assert await sqlite_backend.load(live) == {"v": 1, "w": 2}
    assert await sqlite_backend.load(big) == {"blob": "x" * 600}
    assert await sqlite_backend.load(saved) == {"s": 1}
    assert _stored(sqlite_path) == 4


async def test_update_alone_waits_busy_timeout_then_fails_and_writes_nothing(
    tmp_path: Path, batches: list[int]
) -> None:
    """An update blocked by another process's write lock waits busy_timeout, then raises; the session is intact."""
    path = tmp_path / "locked.sqlite3"
    async with DatabaseBackend(path, busy_timeout=0.3) as backend:
        key = keys.new_key()
        await backend.save(key, {"v": 1}, DAY)
        with write_lock(path):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="locked"):
                await backend.update(key, {"w": 2}, (), DAY)
            assert time.monotonic() - started >= 0.25
        assert batches == [1, 1]
        assert await backend.load(key) == {"v": 1}
        await backend.update(key, {"w": 2}, (), DAY)
        assert await backend.load(key) == {"v": 1, "w": 2}


async def test_update_reads_the_row_another_process_committed_while_it_waited(
    slow_backend: DatabaseBackend, sqlite_path: Path, batches: list[int]
) -> None:
    """An update waiting for the write lock merges into what the lock holder committed, not into an older copy."""
    key = keys.new_key()
    await slow_backend.save(key, {"v": 1}, DAY)
    with write_lock(sqlite_path) as other:
        update = asyncio.create_task(slow_backend.update(key, {"mine": True}, (), DAY))
        await _batch_running(batches, 2)
        other.execute(
            "UPDATE asession_sessions SET session_data = ? WHERE session_key = ?",
            ('{"v": 1, "theirs": true}', keys.storage_key(key)),
        )
        other.execute("COMMIT")
        await update
    assert await slow_backend.load(key) == {"v": 1, "theirs": True, "mine": True}
