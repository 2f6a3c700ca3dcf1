"""The shared test servers: each test process's own namespace on them, and removing what it stored.

PostgreSQL, Redis and memcached on 127.0.0.1 are shared by every test run on the machine (and by each
pytest-xdist worker of one run), so nothing here flushes or drops anything it did not create:

- PostgreSQL: each process gets a schema of its own, :data:`NAMESPACE`, created when ``postgres_url`` is
  first used and dropped with everything in it at the end; ``postgres_url`` carries it as
  ``?search_path=<schema>``, which asyncpg sends to the server, so every pool, subprocess and direct
  connection made from the URL works inside it.
- Redis and memcached: the backends have no key prefix option yet, so each process records the storage
  keys it computes (:func:`recorded_keys`: sessions' SHA-256 and users' index keys) and deletes those,
  under ``asession:``, after each test that used the server. Subprocesses log theirs to a file
  (:data:`KEY_LOG_ENV`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")

#: This test process's name on the shared servers: its PostgreSQL schema (a plain lowercase identifier).
#: The pid and random digits keep separate runs, xdist workers and nested runs apart.
NAMESPACE = f"asession_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}_{secrets.token_hex(3)}"

#: The table DatabaseBackend uses unless told otherwise (inside the process's schema).
POSTGRES_TABLE = "asession_sessions"

#: Environment variable naming a file where a subprocess (tests.multiprocess_app) appends its storage keys.
KEY_LOG_ENV = "ASESSION_TEST_KEY_LOG"


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code, even when called inside a running event loop."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="asession-test-servers")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` set in its query string (replacing values of the same names)."""
    parts = urlsplit(url)
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


# -- PostgreSQL: a schema per test process ------------------------------------------------------------------


async def _execute(url: str, sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def create_schema(url: str, schema: str) -> None:
    """Create ``schema`` (a new name: fails if it exists, so nobody else's schema is ever taken over)."""
    await _execute(url, f'CREATE SCHEMA "{schema}"')


async def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema``, which this process created, with every table in it."""
    await _execute(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def search_path_of(url: str) -> str | None:
    """The ``search_path`` a PostgreSQL URL sets, if any."""
    values = [value for name, value in parse_qsl(urlsplit(url).query) if name == "search_path"]
    return values[-1] if values else None


async def clean_postgres(url: str, table: str = POSTGRES_TABLE) -> None:
    """Empty the sessions table the tests wrote to, in the URL's schema (the process's own).

    Refuses a URL without a ``search_path``: that would be the shared ``public`` schema.
    """
    import asyncpg

    schema = search_path_of(url)
    if schema is None:
        raise ValueError(f"refusing to empty {table!r} outside a schema of the test run's own: {url}")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DELETE FROM "{schema}"."{table}"')
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await connection.close()


# -- Redis and memcached: the keys this process stored --------------------------------------------------------

_recorders: list[set[str]] = []


def _recording(function: Callable[[str], str]) -> Callable[[str], str]:
    def recorded(value: str) -> str:
        result = function(value)
        for found in _recorders:
            found.add(result)
        return result

    recorded.__wrapped__ = function  # type: ignore[attr-defined]
    recorded.__doc__ = function.__doc__
    return recorded


def install_key_recording() -> None:
    """Make :func:`asession.keys.storage_key` and :func:`asession.users.index_key` report what they compute.

    Both modules (and :mod:`asession.backends.base`) call them through the module, so the wrapper sees every
    key a backend of this process stores. Idempotent; the values returned are unchanged.
    """
    from asession import keys, users

    for module, name in ((keys, "storage_key"), (users, "index_key")):
        function = getattr(module, name)
        if not hasattr(function, "__wrapped__"):
            setattr(module, name, _recording(function))


@contextlib.contextmanager
def recorded_keys() -> Iterator[set[str]]:
    """The storage keys computed in this process while the block runs (see :func:`install_key_recording`)."""
    found: set[str] = set()
    _recorders.append(found)
    try:
        yield found
    finally:
        _recorders.remove(found)


def log_keys_to(path: str) -> None:
    """In a subprocess: append every storage key it computes to ``path``, one a line, for the test to delete."""
    install_key_recording()

    class _Log(set[str]):
        def add(self, element: str) -> None:
            if element not in self:
                super().add(element)
                with open(path, "a", encoding="ascii") as file:
                    file.write(element + "\n")

    _recorders.append(_Log())


def read_key_log(path: Path) -> set[str]:
    """The keys a subprocess logged to ``path`` (none if it wrote nothing)."""
    return set(path.read_text(encoding="ascii").split()) if path.exists() else set()


def _stored_names(skeys: Iterable[str]) -> list[str]:
    from asession.backends.cache import KEY_PREFIX

    return sorted(KEY_PREFIX + skey for skey in skeys)


async def clean_redis(url: str, skeys: Iterable[str]) -> None:
    """Delete what this process stored under ``skeys`` (``asession:<skey>``); never FLUSHDB, the server is shared."""
    import redis.asyncio as aioredis

    names = _stored_names(skeys)
    if not names:
        return
    client = aioredis.Redis.from_url(url)
    try:
        for start in range(0, len(names), 1000):
            await client.unlink(*names[start : start + 1000])
    finally:
        await client.aclose()


async def clean_memcached(url: str, skeys: Iterable[str]) -> None:
    """Delete what this process stored under ``skeys`` (``asession:<skey>``); never flush_all, the server is shared."""
    import aiomcache

    names = _stored_names(skeys)
    if not names:
        return
    parts = urlsplit(url)
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    try:
        for name in names:
            await client.delete(name.encode())
    finally:
        await client.close()


# -- private redis-server processes -----------------------------------------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A throw-away ``redis-server`` on 127.0.0.1 with extra arguments (passwords, ACL users, TLS).

    Like ``tests/test_faults.py``'s server, but keeping nothing on disk (``--save '' --appendonly no``).
    ``start()`` waits until the plain-text port answers (any reply: +PONG, or -NOAUTH with a password set).
    """

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import socket
        import time

        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra,
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64)[:1] in (b"+", b"-"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.directory / 'redis.log'}")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)


MEMCACHED = "/usr/bin/memcached"


@contextlib.contextmanager
def running_memcached() -> Iterator[int]:
    """A memcached of this process's own on a free 127.0.0.1 port (its port), stopped when the block ends."""
    import socket
    import time

    require_executable(MEMCACHED, MEMCACHED)
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []  # memcached refuses root unless told which user to be
    process = subprocess.Popen(
        [MEMCACHED, *user, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"memcached did not start on port {port}")
            time.sleep(0.02)
        yield port
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``process`` and reap it, killing it when it has not ended within 10 s."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def require_executable(path: str | None, what: str) -> str:
    """``path`` if it is an executable; otherwise skip the test, or fail it under ``CI=true``."""
    import pytest

    from tests.conftest import IN_CI

    if path is None or not os.access(path, os.X_OK):
        reason = f"{what} is not installed; these tests start their own."
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return path


@contextlib.contextmanager
def running_redis(directory: Path, *extra: str) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis` (skipping without redis-server), stopped when the block ends."""
    require_executable(REDIS_SERVER, REDIS_SERVER)
    server = PrivateRedis(directory, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- PgBouncer in front of the test PostgreSQL ---------------------------------------------------------------

PGBOUNCER = "/usr/sbin/pgbouncer"


class PgBouncer:
    """Debian's ``pgbouncer`` in transaction pooling mode on a free 127.0.0.1 port, in front of ``postgres_url``.

    Transaction pooling hands each transaction whatever server connection is free, so nothing that lives
    on a connection between transactions (named prepared statements, session ``SET``, advisory locks held
    past a transaction) may be relied on: what asession's PostgreSQL backend must cope with behind it.
    PgBouncer refuses to run as root, so as root it is started as the ``postgres`` user, on a directory
    that user can read.
    """

    def __init__(self, postgres_url: str) -> None:
        parts = urlsplit(postgres_url)
        self.database = parts.path.lstrip("/") or "postgres"
        self.user = parts.username or "postgres"
        self.server = (parts.hostname or "127.0.0.1", parts.port or 5432)
        # PgBouncer refuses a search_path startup parameter, and a SET on its server connections would not
        # survive asyncpg's RESET ALL: with one in the URL, it logs in as a role whose default it is.
        self.search_path = search_path_of(postgres_url)
        self.server_user = f"{self.search_path}_bouncer" if self.search_path else None
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="asession-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> None:
        import socket
        import time

        host, port = self.server
        server_user = f" user={self.server_user}" if self.server_user else ""
        (self.directory / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            f"[databases]\n{self.database} = host={host} port={port} dbname={self.database}{server_user}\n\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'userlist.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\npidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        command = [PGBOUNCER, str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            import shutil

            os.chmod(self.directory, 0o755)
            for path in [self.directory, *self.directory.iterdir()]:
                shutil.chown(path, "postgres", "postgres")
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        log = self.directory / "pgbouncer.log"
        details = log.read_text()[-2000:] if log.exists() else "no log"
        self.stop()
        raise RuntimeError(f"pgbouncer did not start on port {self.port}: {details}")

    def stop(self) -> None:
        import shutil

        process, self.process = self.process, None
        stop_process(process)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_pgbouncer(postgres_url: str) -> Iterator[PgBouncer]:
    """A started :class:`PgBouncer` (skipping, or failing under ``CI=true``, without pgbouncer), always stopped."""
    require_executable(PGBOUNCER, PGBOUNCER)
    bouncer = PgBouncer(postgres_url)
    role = bouncer.server_user
    if role is not None:  # a throw-away superuser whose search_path is the URL's, dropped again below
        run_sync(
            _execute(
                postgres_url,
                f'CREATE ROLE "{role}" LOGIN SUPERUSER; ALTER ROLE "{role}" SET search_path TO "{bouncer.search_path}"',
            )
        )
    try:
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()
    finally:
        if role is not None:
            run_sync(_execute(postgres_url, f'REASSIGN OWNED BY "{role}" TO CURRENT_USER; DROP ROLE "{role}"'))
