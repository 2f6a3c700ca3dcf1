"""Clean-up of the shared test servers, so every test leaves Redis, memcached and PostgreSQL as it found them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

#: The table DatabaseBackend uses unless told otherwise.
POSTGRES_TABLE = "asession_sessions"


async def clean_postgres(url: str, table: str = POSTGRES_TABLE) -> None:
    """Empty the sessions table the tests wrote to."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DELETE FROM "{table}"')
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await connection.close()


async def clean_redis(url: str) -> None:
    """Flush the Redis database the tests used (db 15 by default, never db 0 unless configured)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def clean_memcached(url: str) -> None:
    """Flush the test memcached server."""
    import aiomcache

    parts = urlsplit(url)
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    try:
        await client.flush_all()
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
        (self.directory / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            f"[databases]\n{self.database} = host={host} port={port} dbname={self.database}\n\n"
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
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
