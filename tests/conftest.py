"""Fixtures: one per backend, parametrised fixtures over their names, servers read from the environment.

A server that cannot be reached skips its tests with the reason, or fails them under ``CI=true``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from asession import expiry
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend

if TYPE_CHECKING:
    from tests.redis_topologies import RedisCluster
    from tests.servers import PrivateRedis

#: The server-side backends again with ``encrypt_at_rest=True`` (issue 15): the same contract, on ciphertext.
ENCRYPTED = [
    pytest.param("memory_encrypted_backend", id="memory-encrypted"),
    pytest.param("sqlite_encrypted_backend", id="sqlite-encrypted"),
    pytest.param("file_encrypted_backend", id="file-encrypted"),
    pytest.param("cache_memory_encrypted_backend", id="cache-memory-encrypted"),
    pytest.param("cached_db_encrypted_backend", id="cached-db-encrypted"),
    pytest.param("postgres_encrypted_backend", id="postgres-encrypted", marks=pytest.mark.postgres),
    pytest.param("redis_encrypted_backend", id="redis-encrypted", marks=pytest.mark.redis),
    pytest.param("memcached_encrypted_backend", id="memcached-encrypted", marks=pytest.mark.memcached),
]
SERVER_SIDE = [
    pytest.param("memory_backend", id="memory"),
    pytest.param("sqlite_backend", id="sqlite"),
    pytest.param("file_backend", id="file"),
    pytest.param("cache_memory_backend", id="cache-memory"),
    pytest.param("cached_db_backend", id="cached-db"),
    pytest.param("postgres_backend", id="postgres", marks=pytest.mark.postgres),
    pytest.param("pgbouncer_backend", id="pgbouncer", marks=pytest.mark.postgres),
    pytest.param("django_sqlite_backend", id="django-sqlite"),
    pytest.param("django_postgres_backend", id="django-postgres", marks=pytest.mark.postgres),
    pytest.param("redis_backend", id="redis", marks=pytest.mark.redis),
    pytest.param("redis_cluster_backend", id="redis-cluster", marks=pytest.mark.redis),
    pytest.param("redis_py_backend", id="redis-py-client", marks=pytest.mark.redis),
    pytest.param("memcached_backend", id="memcached", marks=pytest.mark.memcached),
    *ENCRYPTED,
]
ALL = [
    *SERVER_SIDE,
    pytest.param("signed_cookies_backend", id="signed-cookies"),
    pytest.param("encrypted_cookies_backend", id="encrypted-cookies"),
]

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


#: The shared servers: what they are called, their URL's environment variable, default URL and port.
SERVERS = {
    "redis": ("Redis", "ASESSION_REDIS_URL", "redis://127.0.0.1:6379/15", 6379),
    "postgres": ("PostgreSQL", "ASESSION_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test", 5432),
    "memcached": ("memcached", "ASESSION_MEMCACHED_URL", "memcached://127.0.0.1:11211", 11211),
}


def _server_url(name: str) -> str:
    _, variable, default, _ = SERVERS[name]
    return os.environ.get(variable, default)


def _unreachable(name: str) -> str | None:
    """Why the ``name`` server cannot be used, or ``None`` when it answers."""
    what, _, _, default_port = SERVERS[name]
    parts = urlsplit(_server_url(name))
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{what} is not reachable at {host}:{port} ({exc}); set the URL's environment variable or start it."


def _require_server(name: str) -> str:
    reason = _unreachable(name)
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return _server_url(name)


#: The shared servers this process has reached, by name (see ``_remove_stored_keys``).
REACHED: dict[str, str] = {}


def _private(name: str) -> bool:
    """Whether this process starts its own ``name`` server: no URL was given and the server's program is here.

    A server of the run's (or xdist worker's) own is the strongest namespace: parallel runs and workers, which
    bind fixed user ids such as ``alice`` to index keys, never see each other's keys, and nothing shared is
    flushed. ``ASESSION_REDIS_URL`` / ``ASESSION_MEMCACHED_URL`` point the tests at a server of your choice
    instead (then only the keys a test stored are deleted after it).
    """
    from tests.servers import MEMCACHED, REDIS_SERVER

    program = REDIS_SERVER if name == "redis" else MEMCACHED
    return SERVERS[name][1] not in os.environ and os.access(program, os.X_OK)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Redis db 15 of a redis-server this process started on a free port, or the server ``ASESSION_REDIS_URL`` names."""
    if not _private("redis"):
        REACHED["redis"] = _require_server("redis")
        yield REACHED["redis"]
        return
    from tests.servers import running_redis

    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        REACHED["redis"] = f"redis://127.0.0.1:{server.port}/15"
        yield REACHED["redis"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The shared PostgreSQL database, inside a schema of this process's own (``?search_path=``), dropped at the end."""
    from tests.servers import NAMESPACE, create_schema, drop_schema, run_sync, with_query

    url = _require_server("postgres")
    run_sync(create_schema(url, NAMESPACE))
    try:
        yield with_query(url, search_path=NAMESPACE)
    finally:
        run_sync(drop_schema(url, NAMESPACE))


@pytest.fixture(scope="session")
def memcached_url() -> Iterator[str]:
    """A memcached this process started on a free port, or the server ``ASESSION_MEMCACHED_URL`` names."""
    if not _private("memcached"):
        REACHED["memcached"] = _require_server("memcached")
        yield REACHED["memcached"]
        return
    from tests.servers import running_memcached

    with running_memcached() as port:
        REACHED["memcached"] = f"memcached://127.0.0.1:{port}"
        yield REACHED["memcached"]


@pytest.fixture(autouse=True)
def _remove_stored_keys(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the shared Redis or memcached, delete the keys it stored there, and only those.

    Without a key prefix option in CacheBackend, a run's keys are told apart by the storage keys this
    process computed during the test (tests/servers.py records them).
    """
    from tests.servers import clean_memcached, clean_redis, install_key_recording, recorded_keys, run_sync

    install_key_recording()
    with recorded_keys() as stored:
        yield
    used = set(request.fixturenames)
    if stored and "redis_url" in used and "redis" in REACHED:
        run_sync(clean_redis(REACHED["redis"], stored))
    if stored and "memcached_url" in used and "memcached" in REACHED:
        run_sync(clean_memcached(REACHED["memcached"], stored))


# -- memcached down: its tests are deselected, with the reason said once -------------------------------------


def _memcached_down(config: pytest.Config) -> str | None:
    """Why memcached's tests are left out of this run (it is down and CI is not set); decided once per run.

    The xdist controller decides and hands the answer to its workers, so all of them collect the same tests.
    """
    workerinput: dict[str, object] | None = getattr(config, "workerinput", None)
    if workerinput is not None and "asession_memcached_down" in workerinput:
        reason = workerinput["asession_memcached_down"]
        return reason if isinstance(reason, str) else None
    if not hasattr(config, "_asession_memcached_down"):
        down_now = None if IN_CI or _private("memcached") else _unreachable("memcached")
        config._asession_memcached_down = down_now  # type: ignore[attr-defined]
    down: str | None = config._asession_memcached_down  # type: ignore[attr-defined]
    return down


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: tell each worker whether memcached's tests run (the controller checked once)."""
    node.workerinput["asession_memcached_down"] = _memcached_down(node.config)


def _needs_memcached(item: pytest.Item) -> bool:
    return item.get_closest_marker("memcached") is not None or "memcached_url" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect memcached's tests when it is down outside CI: one reason line, not one skip per test."""
    if _memcached_down(config) is not None:
        deselected = [item for item in items if _needs_memcached(item)]
        if deselected:
            items[:] = [item for item in items if not _needs_memcached(item)]
            config.hook.pytest_deselected(items=deselected)


def pytest_report_header(config: pytest.Config) -> str | None:
    reason = _memcached_down(config)
    return None if reason is None else f"memcached tests deselected: {reason}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    reason = _memcached_down(config)
    if reason is not None:
        terminalreporter.write_line(f"memcached tests deselected: {reason}", yellow=True)


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
async def django_sqlite_backend(tmp_path: Path) -> AsyncIterator[SessionBackend]:
    """DjangoDatabaseBackend on a SQLite file holding Django's session table (tests/djangoproject.py)."""
    from asession.backends.django import DjangoDatabaseBackend
    from tests.djangoproject import SECRET_KEY, create_sqlite_session_table

    path = create_sqlite_session_table(tmp_path / "django.sqlite3")
    async with DjangoDatabaseBackend(path, SECRET_KEY) as backend:
        yield backend


@pytest.fixture(scope="session")
def django_postgres_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this run's own holding Django's session table, dropped at the end."""
    from tests.djangoproject import own_postgres_database

    with own_postgres_database(postgres_url, session_table=True) as url:
        yield url


@pytest.fixture
async def django_postgres_backend(django_postgres_url: str) -> AsyncIterator[SessionBackend]:
    """DjangoDatabaseBackend on that database; its session table is emptied after each test."""
    from asession.backends.django import DjangoDatabaseBackend
    from tests.djangoproject import SECRET_KEY, empty_session_table

    async with DjangoDatabaseBackend(django_postgres_url, SECRET_KEY) as backend:
        yield backend
    await empty_session_table(django_postgres_url)


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[SessionBackend]:
    """CacheBackend on the shared Redis; ``_remove_stored_keys`` deletes what the test stored."""
    async with backend_from_url(redis_url) as backend:
        yield backend


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private Redis Cluster (3 masters, 3 replicas) on free ports, for this run (or xdist worker)."""
    from tests.redis_topologies import running_cluster

    with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
async def redis_cluster_backend(redis_cluster: RedisCluster) -> AsyncIterator[SessionBackend]:
    """RedisBackend on the private cluster (redis-py's RedisCluster underneath); emptied after each test."""
    from asession.backends.redis import RedisBackend

    async with backend_from_url(redis_cluster.url) as backend:
        yield backend
        if backend.is_open:
            assert isinstance(backend, RedisBackend)
            await backend._cache.client.flushall(target_nodes="primaries")
    if not backend.is_open:
        redis_cluster.flush()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A private redis-server on a free port, for this run (or xdist worker)."""
    from tests.servers import running_redis

    with running_redis(tmp_path_factory.mktemp("private-redis")) as server:
        yield server


@pytest.fixture
async def redis_py_backend(private_redis: PrivateRedis) -> AsyncIterator[SessionBackend]:
    """RedisBackend on a redis-py client the test built and closes itself; the server is emptied after."""
    import redis.asyncio

    from asession.backends.redis import RedisBackend

    client = redis.asyncio.Redis(host="127.0.0.1", port=private_redis.port)
    async with RedisBackend(client) as backend:
        yield backend
    await client.flushall()
    await client.aclose()


@pytest.fixture
async def memcached_backend(memcached_url: str) -> AsyncIterator[SessionBackend]:
    """CacheBackend on the shared memcached; ``_remove_stored_keys`` deletes what the test stored."""
    async with backend_from_url(memcached_url) as backend:
        yield backend


@pytest.fixture
async def signed_cookies_backend() -> AsyncIterator[SessionBackend]:
    from asession.backends.signed_cookies import SignedCookieBackend

    async with SignedCookieBackend(SECRET) as backend:
        yield backend


# -- encrypted variants (issue 15) -------------------------------------------------------------------------


@pytest.fixture
async def encrypted_cookies_backend() -> AsyncIterator[SessionBackend]:
    from asession.backends.encrypted_cookies import EncryptedCookieBackend

    async with EncryptedCookieBackend(SECRET) as backend:
        yield backend


@pytest.fixture
async def memory_encrypted_backend() -> AsyncIterator[SessionBackend]:
    from asession.backends.memory import MemoryBackend

    async with MemoryBackend(encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def sqlite_encrypted_backend(sqlite_path: Path) -> AsyncIterator[SessionBackend]:
    from asession.backends.db import DatabaseBackend

    async with DatabaseBackend(f"sqlite:///{sqlite_path}", encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def file_encrypted_backend(session_dir: Path) -> AsyncIterator[SessionBackend]:
    from asession.backends.file import FileBackend

    async with FileBackend(session_dir, encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def cache_memory_encrypted_backend() -> AsyncIterator[SessionBackend]:
    from asession.backends.cache import CacheBackend

    async with CacheBackend("memory://", encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def redis_encrypted_backend(redis_url: str) -> AsyncIterator[SessionBackend]:
    """RedisBackend on the shared Redis, encrypted; ``_remove_stored_keys`` deletes what the test stored."""
    from asession.backends.redis import RedisBackend

    async with RedisBackend(redis_url, encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def memcached_encrypted_backend(memcached_url: str) -> AsyncIterator[SessionBackend]:
    """CacheBackend on the shared memcached, encrypted; ``_remove_stored_keys`` deletes what the test stored."""
    from asession.backends.cache import CacheBackend

    async with CacheBackend(memcached_url, encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def cached_db_encrypted_backend(sqlite_path: Path) -> AsyncIterator[SessionBackend]:
    from asession.backends.cache import CacheBackend
    from asession.backends.cached_db import CachedDatabaseBackend
    from asession.backends.db import DatabaseBackend

    db, cache = DatabaseBackend(f"sqlite:///{sqlite_path}"), CacheBackend("memory://")
    async with CachedDatabaseBackend(db, cache, encrypt_at_rest=True) as backend:
        yield backend


@pytest.fixture
async def postgres_encrypted_backend(postgres_url: str) -> AsyncIterator[SessionBackend]:
    from asession.backends.db import DatabaseBackend
    from tests.servers import clean_postgres

    async with DatabaseBackend(postgres_url, encrypt_at_rest=True) as backend:
        yield backend
    await clean_postgres(postgres_url)


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
