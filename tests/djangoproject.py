"""A tiny Django project for the tests of DjangoDatabaseBackend, and the session tables of its contract fixtures.

Django's settings are process-global, so they are configured once per process (each pytest-xdist worker
is a process of its own) by :func:`configure`; each test then points Django's ``default`` database at its
own SQLite file or PostgreSQL database with :meth:`DjangoProject.use`. Django's ORM refuses to run in a
thread with a running event loop, so a :class:`DjangoProject` runs every Django call on one thread of its
own, which also keeps Django to one connection per test.

PostgreSQL databases are the test run's own: ``asession_django_<random hex>``, created on the shared
server and dropped (with any connection left to them) at the end. Nothing else on the server is touched.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from tests.servers import run_sync

T = TypeVar("T")

#: The Django project's SECRET_KEY, which the backends under test are given.
SECRET_KEY = "django-test-secret-key-for-asession-interop-0123456789abcdef"

#: Django 5.2's ``sqlmigrate sessions 0001``: the table migrate creates, for the contract fixtures.
SESSION_TABLE_DDL = {
    "sqlite": [
        'CREATE TABLE "django_session" ("session_key" varchar(40) NOT NULL PRIMARY KEY, '
        '"session_data" text NOT NULL, "expire_date" datetime NOT NULL)',
        'CREATE INDEX "django_session_expire_date_a5c62663" ON "django_session" ("expire_date")',
    ],
    "postgresql": [
        'CREATE TABLE "django_session" ("session_key" varchar(40) NOT NULL PRIMARY KEY, '
        '"session_data" text NOT NULL, "expire_date" timestamp with time zone NOT NULL)',
        'CREATE INDEX "django_session_session_key_c0390e0f_like" ON "django_session" '
        '("session_key" varchar_pattern_ops)',
        'CREATE INDEX "django_session_expire_date_a5c62663" ON "django_session" ("expire_date")',
    ],
}


def configure() -> None:
    """Configure Django's settings for this process, once: contenttypes, auth and sessions, JSON sessions, UTC."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        SECRET_KEY=SECRET_KEY,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        TIME_ZONE="UTC",
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        # The fastest hasher: the tests log users in, they do not measure password hashing.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


class DjangoProject:
    """Django, on one thread of its own, using one database (``DATABASES["default"]``) given to :meth:`use`."""

    def __init__(self) -> None:
        configure()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="django")

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on Django's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: function(*args, **kwargs))

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on Django's thread, waited for: for synchronous code (fixtures)."""
        return self._thread.submit(function, *args).result()

    async def use(self, database: dict[str, Any], *, migrate: bool = False) -> None:
        """Point Django at ``database`` (a ``DATABASES`` entry), migrating it first with ``migrate``."""
        await self.call(_switch, database, migrate)

    def close(self) -> None:
        """Close Django's connection and end its thread."""
        from django.db import connections

        self.run(connections.close_all)
        self._thread.shutdown()


def _switch(database: dict[str, Any], migrate: bool) -> None:
    """On Django's thread: close the connection, point ``default`` at ``database``, and maybe migrate it."""
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    if hasattr(connections._connections, "default"):
        del connections["default"]
    connections.settings["default"] = connections.configure_settings({"default": database})["default"]
    ContentType.objects.clear_cache()  # its ids belong to the previous database
    if migrate:
        call_command("migrate", verbosity=0, interactive=False)


def migrated(database: dict[str, Any]) -> None:
    """Run Django's migrate on ``database`` (to copy it for each test afterwards), on a thread of its own."""
    project = DjangoProject()
    try:
        project.run(_switch, database, True)
    finally:
        project.close()


def sqlite_database(path: Path) -> dict[str, Any]:
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}


def postgres_database(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def create_sqlite_session_table(path: Path) -> Path:
    """A SQLite file at ``path`` holding Django's empty session table, as migrate makes it."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        for statement in SESSION_TABLE_DDL["sqlite"]:
            connection.execute(statement)
    connection.close()
    return path


@contextmanager
def own_postgres_database(server_url: str, *, session_table: bool = False) -> Iterator[str]:
    """A PostgreSQL database of this test run's own on the server of ``server_url``; yields its URL, drops it after.

    With ``session_table``, Django's session table is created in it as migrate makes it.
    """
    import asyncpg

    name = f"asession_django_{secrets.token_hex(6)}"
    parts = urlsplit(server_url)
    url = urlunsplit(parts._replace(path=f"/{name}", query=""))
    admin = urlunsplit(parts._replace(query=""))

    async def create() -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        if session_table:
            connection = await asyncpg.connect(url)
            try:
                for statement in SESSION_TABLE_DDL["postgresql"]:
                    await connection.execute(statement)
            finally:
                await connection.close()

    async def drop() -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    run_sync(create())
    try:
        yield url
    finally:
        run_sync(drop())


async def empty_session_table(url: str) -> None:
    """Delete every row of the session table in the database of ``url`` (one of the run's own)."""
    import asyncpg

    if not urlsplit(url).path.startswith("/asession_django_"):
        raise ValueError(f"refusing to empty a session table outside the test run's own databases: {url}")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute('DELETE FROM "django_session"')
    finally:
        await connection.close()
