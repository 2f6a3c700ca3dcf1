"""Fixtures: one per backend, parametrised fixtures over their names, servers read from the environment.

A server that cannot be reached skips its tests with the reason, or fails them under ``CI=true``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from asession import expiry
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend

SERVER_SIDE = [
    pytest.param("memory_backend", id="memory"),
    pytest.param("sqlite_backend", id="sqlite"),
    pytest.param("file_backend", id="file"),
    pytest.param("cache_memory_backend", id="cache-memory"),
    pytest.param("cached_db_backend", id="cached-db"),
    pytest.param("postgres_backend", id="postgres", marks=pytest.mark.postgres),
    pytest.param("pgbouncer_backend", id="pgbouncer", marks=pytest.mark.postgres),
    pytest.param("redis_backend", id="redis", marks=pytest.mark.redis),
    pytest.param("memcached_backend", id="memcached", marks=pytest.mark.memcached),
]
ALL = [*SERVER_SIDE, pytest.param("signed_cookies_backend", id="signed-cookies")]

IN_CI = os.environ.get("CI", "").lower() == "true"
SECRET = "test-secret-key-with-enough-entropy-0123456789"


# -- time ----------------------------------------------------------------------------------------------


class Clock:
    """A controllable replacement for :func:`asession.expiry.now`."""

    def __init__(self) -> None:
        self.current = datetime.now(timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Freeze asession's clock; ``clock.advance(s)`` moves it."""
    fake = Clock()
    monkeypatch.setattr(expiry, "now", fake)
    return fake


# -- servers ---------------------------------------------------------------------------------------------


def _require_server(url: str, default_port: int, what: str) -> str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        reason = f"{what} is not reachable at {host}:{port} ({exc}); set the URL's environment variable or start it."
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _require_server(os.environ.get("ASESSION_REDIS_URL", "redis://127.0.0.1:6379/15"), 6379, "Redis")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _require_server(
        os.environ.get("ASESSION_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"), 5432, "PostgreSQL"
    )


@pytest.fixture(scope="session")
def memcached_url() -> str:
    return _require_server(os.environ.get("ASESSION_MEMCACHED_URL", "memcached://127.0.0.1:11211"), 11211, "memcached")


# -- one fixture per backend -------------------------------------------------------------------------------


@pytest.fixture
async def memory_backend() -> AsyncIterator[SessionBackend]:
    async with backend_from_url("memory://") as backend:
        yield backend


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.sqlite3"


@pytest.fixture
async def sqlite_backend(sqlite_path: Path) -> AsyncIterator[SessionBackend]:
    async with backend_from_url(f"sqlite:///{sqlite_path}") as backend:
        yield backend


@pytest.fixture
def session_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "sessions"
    directory.mkdir()
    return directory


@pytest.fixture
async def file_backend(session_dir: Path) -> AsyncIterator[SessionBackend]:
    async with backend_from_url(f"file://{session_dir}") as backend:
        yield backend


@pytest.fixture
async def cache_memory_backend() -> AsyncIterator[SessionBackend]:
    async with backend_from_url("cache+memory://") as backend:
        yield backend


@pytest.fixture
async def cached_db_backend(sqlite_path: Path) -> AsyncIterator[SessionBackend]:
    from asession.backends.cache import CacheBackend
    from asession.backends.cached_db import CachedDatabaseBackend
    from asession.backends.db import DatabaseBackend

    async with CachedDatabaseBackend(DatabaseBackend(f"sqlite:///{sqlite_path}"), CacheBackend("memory://")) as backend:
        yield backend


@pytest.fixture
async def postgres_backend(postgres_url: str) -> AsyncIterator[SessionBackend]:
    from tests.servers import clean_postgres

    async with backend_from_url(postgres_url) as backend:
        yield backend
    await clean_postgres(postgres_url)


@pytest.fixture(scope="session")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """PgBouncer in transaction pooling mode in front of the test PostgreSQL, for the whole test session."""
    from tests.servers import running_pgbouncer

    with running_pgbouncer(postgres_url) as bouncer:
        yield bouncer.url


@pytest.fixture
async def pgbouncer_backend(pgbouncer_url: str, postgres_url: str) -> AsyncIterator[SessionBackend]:
    """DatabaseBackend through PgBouncer, without named prepared statements (``?statement_cache_size=0``)."""
    from tests.servers import clean_postgres

    async with backend_from_url(f"{pgbouncer_url}?statement_cache_size=0") as backend:
        yield backend
    await clean_postgres(postgres_url)


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[SessionBackend]:
    from tests.servers import clean_redis

    async with backend_from_url(redis_url) as backend:
        yield backend
    await clean_redis(redis_url)


@pytest.fixture
async def memcached_backend(memcached_url: str) -> AsyncIterator[SessionBackend]:
    from tests.servers import clean_memcached

    async with backend_from_url(memcached_url) as backend:
        yield backend
    await clean_memcached(memcached_url)


@pytest.fixture
async def signed_cookies_backend() -> AsyncIterator[SessionBackend]:
    from asession.backends.signed_cookies import SignedCookieBackend

    async with SignedCookieBackend(SECRET) as backend:
        yield backend


# -- parametrised over backends ------------------------------------------------------------------------


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest) -> SessionBackend:
    """Every backend, signed cookies included."""
    backend: SessionBackend = request.getfixturevalue(request.param)
    return backend


@pytest.fixture(params=SERVER_SIDE)
def server_backend(request: pytest.FixtureRequest) -> SessionBackend:
    """Every backend that stores sessions on the server under a key."""
    backend: SessionBackend = request.getfixturevalue(request.param)
    return backend


async def let_expire(backend: SessionBackend, clock: Clock, seconds: float) -> None:
    """Move time past ``seconds``: the fake clock for stores that ask asession, real time for TTL stores."""
    import asyncio

    clock.advance(seconds + 1)
    if backend.expires_by_itself:
        await asyncio.sleep(seconds + 1.1)


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test inside an empty directory (for the ./sessions.sqlite3 default)."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
