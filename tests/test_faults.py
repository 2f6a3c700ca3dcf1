"""Faults under the middleware: a store that goes away answers 503, comes back without an app restart, loses nothing.

- Redis: the test runs its own ``redis-server`` on a free port, stops it under load and starts it again.
- CachedDatabaseBackend with that Redis as its cache: a logout or a save answered while the cache is down
  must still hold once the cache is back (no logged-out session or older copy served from the cache).
- PostgreSQL: the pool's connections are killed with ``pg_terminate_backend`` (only this test's, picked by
  their ``application_name``) while requests run; the pool replaces them.
- SQLite: another connection holds the write lock; a save waits ``busy_timeout`` and answers 503, and the
  database passes ``PRAGMA integrity_check`` afterwards.
- FileBackend: a writer process is SIGKILLed at random moments; every session file is complete, the old or
  the new session. ``benchmarks/crash_file_backend.py`` runs the same with 1000 trials.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session
from asession.backends._pool import BACKOFF_MAX
from asession.backends.base import SessionBackend
from benchmarks import crash_file_backend as crash
from tests.apps import client_for, counter_app
from tests.servers import PrivateRedis, running_redis

# -- helpers -----------------------------------------------------------------------------------------------


@dataclass
class Visitor:
    """One client and what the store must hold for it: the last counter a 200 confirmed."""

    client: httpx.AsyncClient
    confirmed: int = 0
    #: 503s since the last 200. A save cut off by the fault may still have reached the store, so each of
    #: them may or may not have counted; a lost confirmed write shows up as a value below confirmed + 1.
    unsure: int = 0

    async def count(self) -> int:
        response = await self.client.post("/count")
        if response.status_code == 503:
            self.unsure += 1
        else:
            assert response.status_code == 200, response.text
            value = response.json()["n"]
            assert self.confirmed + 1 <= value <= self.confirmed + 1 + self.unsure, (value, self.confirmed)
            self.confirmed, self.unsure = value, 0
        return response.status_code

    async def count_times(self, times: int) -> list[int]:
        """Count ``times`` times in a row (one request of this visitor at a time)."""
        return [await self.count() for _ in range(times)]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("asession") and r.levelno >= logging.ERROR]


# -- (a) Redis stopped and restarted ---------------------------------------------------------------------


#: Persistence on (later arguments override PrivateRedis's defaults): a restart must keep the sessions.
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server keeping its data in an append-only file, synced on every write."""
    with running_redis(tmp_path, *PERSISTENT) as server:
        yield server


@pytest.mark.redis
async def test_redis_stopped_answers_503_then_recovers_without_loss(
    redis_server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis stopped requests get 503 and an error is logged; once it is back they succeed, nothing lost."""
    from asession.backends.cache import CacheBackend

    async with CacheBackend(f"redis://127.0.0.1:{redis_server.port}/0") as backend:
        app = counter_app(backend)
        visitors = [Visitor(client_for(app)) for _ in range(8)]
        try:
            for _ in range(5):
                statuses = await asyncio.gather(*(visitor.count() for visitor in visitors))
                assert set(statuses) == {200}

            # Stop the server while the visitors keep coming.
            running = asyncio.gather(*(visitor.count_times(3) for visitor in visitors))
            await asyncio.to_thread(redis_server.stop)
            await running
            with caplog.at_level(logging.ERROR, logger="asession"):
                statuses = await asyncio.gather(*(visitor.count() for visitor in visitors))
            assert set(statuses) == {503}
            assert errors_logged(caplog), "a failing store must be logged"
            newcomer = await client_for(app).post("/count")
            assert newcomer.status_code == 503

            # Same port, same data directory; the app and its backend are not restarted. The client retries
            # its connection after a jittered backoff (at most BACKOFF_MAX), not on every request.
            await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(BACKOFF_MAX)
            for _ in range(5):
                statuses = await asyncio.gather(*(visitor.count() for visitor in visitors))
                assert set(statuses) == {200}
            for visitor in visitors:
                assert visitor.unsure == 0
                key = visitor.client.cookies["session"]
                assert await backend.load(key) == {"n": visitor.confirmed}
                assert visitor.confirmed >= 10
        finally:
            for visitor in visitors:
                await visitor.client.aclose()


@pytest.fixture
async def cached_db_over_private_redis(redis_server: PrivateRedis, tmp_path: Path) -> AsyncIterator[SessionBackend]:
    """A CachedDatabaseBackend: SQLite in tmp_path, cached in the test's own Redis."""
    from asession.backends.cache import CacheBackend
    from asession.backends.cached_db import CachedDatabaseBackend
    from asession.backends.db import DatabaseBackend

    db = DatabaseBackend(str(tmp_path / "sessions.sqlite3"))
    async with CachedDatabaseBackend(db, CacheBackend(f"redis://127.0.0.1:{redis_server.port}/0")) as backend:
        yield backend


@pytest.mark.redis
async def test_cached_db_logout_while_cache_is_down_stays_logged_out(
    cached_db_over_private_redis: SessionBackend, redis_server: PrivateRedis
) -> None:
    """A logout answered while the cache is down still ends the session once the cache is back."""
    backend = cached_db_over_private_redis

    async def logout(request: Request) -> JSONResponse:
        session: Session = request.scope["session"]
        await session.flush()
        return JSONResponse({})

    app = counter_app(backend)
    app.router.routes.append(Route("/logout", logout, methods=["POST"]))
    async with client_for(app) as client:
        assert (await client.post("/count")).json() == {"n": 1}
        key = client.cookies["session"]
        assert (await client.get("/read")).json() == {"n": 1}  # the cache holds the session now
        await asyncio.to_thread(redis_server.stop)
        response = await client.post("/logout", headers={"cookie": f"session={key}"})
        await asyncio.to_thread(redis_server.start)
        if response.status_code == 503:  # refusing the logout is safe: the visitor retries
            response = await client.post("/logout", headers={"cookie": f"session={key}"})
        assert response.status_code == 200
        replay = await client.get("/read", headers={"cookie": f"session={key}"})
        assert replay.json() == {"n": None}, "the logged-out session came back from the cache"
    assert await backend.load(key) is None


@pytest.mark.redis
async def test_cached_db_write_while_cache_is_down_is_not_shadowed(
    cached_db_over_private_redis: SessionBackend, redis_server: PrivateRedis
) -> None:
    """A save answered 200 while the cache is down is what the session reads once the cache is back."""
    backend = cached_db_over_private_redis
    async with client_for(counter_app(backend)) as client:
        visitor = Visitor(client)
        for _ in range(3):
            assert await visitor.count() == 200
        assert (await client.get("/read")).json() == {"n": 3}  # the cache holds n=3
        await asyncio.to_thread(redis_server.stop)
        await visitor.count_times(2)  # 200s mean the database took the write; 503s are fine too
        await asyncio.to_thread(redis_server.start)
        assert (await client.get("/read")).json() == {"n": visitor.confirmed}, "a stale cached copy hid a write"
        assert await backend.load(client.cookies["session"]) == {"n": visitor.confirmed}


# -- (b) PostgreSQL connections killed -------------------------------------------------------------------


@pytest.fixture
async def postgres_fault_backend(postgres_url: str) -> AsyncIterator[tuple[SessionBackend, str]]:
    """A DatabaseBackend on its own table, whose pool connections carry a unique application_name."""
    import asyncpg

    from asession.backends.db import DatabaseBackend

    tag = f"asession_fault_{secrets.token_hex(4)}"
    separator = "&" if "?" in postgres_url else "?"
    backend = DatabaseBackend(f"{postgres_url}{separator}application_name={tag}", table=tag, max_pool_size=4)
    try:
        async with backend:
            yield backend, tag
    finally:
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(f'DROP TABLE IF EXISTS "{tag}"')
        finally:
            await connection.close()


async def _terminate(postgres_url: str, application_name: str) -> int:
    """Kill the server processes of the connections named ``application_name``; return how many."""
    import asyncpg

    connection = await asyncpg.connect(postgres_url, server_settings={"application_name": "asession_fault_killer"})
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
        return len(rows)
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_postgres_killed_connections_pool_recovers_without_loss(
    postgres_fault_backend: tuple[SessionBackend, str], postgres_url: str
) -> None:
    """Pool connections killed under load give at most some 503s; then every request succeeds and nothing is lost."""
    backend, tag = postgres_fault_backend
    app = counter_app(backend)
    visitors = [Visitor(client_for(app)) for _ in range(8)]
    try:
        for visitor in visitors:
            assert await visitor.count() == 200

        stop = asyncio.Event()

        async def keep_counting(visitor: Visitor) -> list[int]:
            statuses = []
            while not stop.is_set():
                statuses.append(await visitor.count())
            return statuses

        workers = [asyncio.create_task(keep_counting(visitor)) for visitor in visitors]
        killed = 0
        for _ in range(5):
            await asyncio.sleep(0.05)
            killed += await _terminate(postgres_url, tag)
        stop.set()
        statuses = [status for worker in workers for status in await worker]
        assert killed >= 5, "the test must have killed connections of the pool"
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) > 0

        await asyncio.sleep(0.3)  # the pool notices the closed sockets and reconnects on the next acquire
        for _ in range(5):
            statuses = await asyncio.gather(*(visitor.count() for visitor in visitors))
            assert set(statuses) == {200}
        for visitor in visitors:
            assert await backend.load(visitor.client.cookies["session"]) == {"n": visitor.confirmed}
    finally:
        for visitor in visitors:
            await visitor.client.aclose()


# -- (c) SQLite locked by another writer -----------------------------------------------------------------


async def test_sqlite_locked_waits_busy_timeout_then_503_and_stays_intact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A save blocked by another writer waits busy_timeout, answers 503; after the lock the database is intact."""
    from asession.backends.db import DatabaseBackend

    path = tmp_path / "sessions.sqlite3"
    busy_timeout = 0.3
    async with DatabaseBackend(str(path), busy_timeout=busy_timeout) as backend:
        app = counter_app(backend)
        async with client_for(app) as client:
            visitor = Visitor(client)
            for _ in range(3):
                assert await visitor.count() == 200

            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN EXCLUSIVE")
                with caplog.at_level(logging.ERROR, logger="asession"):
                    started = time.monotonic()
                    assert await visitor.count() == 503
                    waited = time.monotonic() - started
                    async with client_for(app) as newcomer:
                        assert (await newcomer.post("/count")).status_code == 503
                assert waited >= busy_timeout * 0.9, f"gave up after {waited:.3f}s, before the busy timeout"
                assert waited < busy_timeout + 3
                assert errors_logged(caplog)
                # Readers are not blocked by a writer in WAL mode: the stored session is still served.
                assert (await client.get("/read")).json() == {"n": 3}
            finally:
                other.execute("ROLLBACK")
                other.close()

            for _ in range(3):
                assert await visitor.count() == 200
            assert visitor.confirmed == 6
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()


# -- (d) FileBackend writer SIGKILLed mid-write -----------------------------------------------------------

CRASH_TRIALS = 30


def test_file_backend_sigkill_leaves_only_complete_sessions(tmp_path: Path) -> None:
    """A writer process SIGKILLed at random moments leaves every session file the old or the new session."""
    summary = crash.run_trials(tmp_path, trials=CRASH_TRIALS, seed=secrets.randbits(32))
    assert summary.failures == [], "\n".join(summary.failures)
    assert summary.trials == summary.killed_mid_run == CRASH_TRIALS, "every writer must be killed while saving"
    assert summary.saves_checked >= CRASH_TRIALS
    # Leftover temporary files prove some kills landed inside a write (about half of them do).
    assert summary.temp_files_left > 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "missing", id="missing"),
        pytest.param(b"1e12", "no expiry line", id="no-newline"),
        pytest.param(b'1e12\n{"session": 0, "seq": 3, "pad": "xx', "not JSON", id="truncated"),
        pytest.param(b'1e12\n{"session": 1, "seq": 3, "pad": "", "pad_sha256": ""}', "another session", id="other"),
        pytest.param(b'1e12\n{"session": 0, "seq": 9, "pad": "", "pad_sha256": "%s"}', "sequence 9", id="stale"),
    ],
)
def test_file_backend_crash_check_rejects_damaged_files(tmp_path: Path, content: bytes | None, problem: str) -> None:
    """The crash check reports a missing, cut, foreign or out-of-sequence session file (so it can fail)."""
    path = tmp_path / "session"
    if content is not None:
        path.write_bytes(content.replace(b"%s", hashlib.sha256(b"").hexdigest().encode()))
    failure, _ = crash.check_file(path, index=0, confirmed=3)
    assert failure is not None and problem in failure
    path.write_bytes(
        b'1e12\n{"session": 0, "seq": 4, "pad": "", "pad_sha256": "%s"}' % hashlib.sha256(b"").hexdigest().encode()
    )
    assert crash.check_file(path, index=0, confirmed=3) == (None, True)
