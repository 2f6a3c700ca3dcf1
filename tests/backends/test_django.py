"""DjangoDatabaseBackend against a real Django project (tests/djangoproject.py), on SQLite and PostgreSQL.

Each test makes the project's database (a SQLite file in ``tmp_path`` or a PostgreSQL database of its own),
runs Django's ``migrate`` on it, and then has Django (its ``SessionStore``, ``django.contrib.auth``'s
``login``, ``clearsessions``) and an ASGI app (``SessionMiddleware`` with this backend, through httpx) work
on the one table, both ways.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import shutil
import sqlite3
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session, SessionConfig, SessionMiddleware, keys, users
from asession.backends.django import INDEX_SALT, SESSION_SALT, DjangoDatabaseBackend
from asession.exceptions import ImproperlyConfigured
from tests.conftest import Clock
from tests.djangoproject import (
    SECRET_KEY,
    DjangoProject,
    create_sqlite_session_table,
    migrated,
    own_postgres_database,
    postgres_database,
    sqlite_database,
)

SECURITY = "asession.security"


@dataclass
class Project:
    """A migrated Django project and a DjangoDatabaseBackend (open) on its database."""

    django: DjangoProject
    url: str
    backend: DjangoDatabaseBackend


@pytest.fixture(scope="module", params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def migrated_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database Django's migrate ran on once, which each test copies: a SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("django") / "migrated.sqlite3"
        migrated(sqlite_database(path))
        yield str(path)
        return
    with own_postgres_database(request.getfixturevalue("postgres_url")) as url:
        migrated(postgres_database(url))
        yield url


@pytest.fixture
def database_url(migrated_database: str, tmp_path: Path) -> str:
    """The Django project's database for one test: a copy of the migrated SQLite file, or the PostgreSQL one."""
    if migrated_database.startswith("postgresql://"):
        return migrated_database  # emptied by the project fixture: copying a database costs seconds there
    return str(shutil.copyfile(migrated_database, tmp_path / "db.sqlite3"))


@pytest.fixture
async def project(database_url: str) -> AsyncIterator[Project]:
    django = DjangoProject()
    try:
        if database_url.startswith("postgresql://"):
            await django.use(postgres_database(database_url))
        else:
            await django.use(sqlite_database(Path(database_url)))
        await django.call(django_empty)
        async with DjangoDatabaseBackend(database_url, SECRET_KEY) as backend:
            yield Project(django, database_url, backend)
    finally:
        await asyncio.to_thread(django.close)


# -- what Django does, on its thread ------------------------------------------------------------------------


def django_empty() -> None:
    """Delete the sessions and users a previous test left in the database."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session as DjangoSession

    DjangoSession.objects.all().delete()
    get_user_model().objects.all().delete()


def django_login(username: str) -> tuple[str, str]:
    """Create a user and log it in with django.contrib.auth; return the session key and the user's pk."""
    from django.contrib.auth import get_user_model, login
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest

    user = get_user_model().objects.create_user(username, password="pw")
    request = HttpRequest()
    request.session = SessionStore()
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session.save()  # what SessionMiddleware does with the response
    key = request.session.session_key
    assert isinstance(key, str)
    return key, str(user.pk)


def django_user(key: str) -> str | None:
    """The pk of the user Django's get_user() finds for the session ``key``, None for an anonymous one."""
    from django.contrib.auth import get_user
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest

    request = HttpRequest()
    request.session = SessionStore(key)
    user = get_user(request)
    return None if user.is_anonymous else str(user.pk)


def django_load(key: str) -> dict[str, Any]:
    """The session Django's SessionStore loads for ``key`` ({} for a missing, expired or corrupt one)."""
    from django.contrib.sessions.backends.db import SessionStore

    return dict(SessionStore(key).load())


def django_save(key: str | None, data: dict[str, Any], expiry: int | None = None) -> str:
    """Store ``data`` with Django's SessionStore (under ``key``, or a new key) and return the key."""
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore(key)
    store.update(data)
    if expiry is not None:
        store.set_expiry(expiry)
    store.save()
    saved: str = store.session_key
    return saved


def django_rows() -> dict[str, str]:
    """Every row of the session table: session_key -> session_data."""
    from django.contrib.sessions.models import Session as DjangoSession

    return dict(DjangoSession.objects.values_list("session_key", "session_data"))


def django_set_data(key: str, session_data: str) -> None:
    from django.contrib.sessions.models import Session as DjangoSession

    assert DjangoSession.objects.filter(session_key=key).update(session_data=session_data) == 1


def django_clearsessions() -> None:
    from django.core.management import call_command

    call_command("clearsessions")


def django_encode(data: dict[str, Any], at: float) -> str:
    """What Django's SessionBase.encode writes for ``data`` at the time ``at``."""
    from django.contrib.sessions.backends.db import SessionStore

    with mock.patch("django.core.signing.time.time", return_value=at):
        encoded: str = SessionStore().encode(data)
    return encoded


def django_sign(data: object, *, salt: str = SESSION_SALT, serializer: Any = None, compress: bool = True) -> str:
    from django.core import signing

    signed: str = signing.dumps(data, salt=salt, serializer=serializer or signing.JSONSerializer, compress=compress)
    return signed


# -- the ASGI app ----------------------------------------------------------------------------------------------


async def _whoami(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.load()
    return JSONResponse({"user_id": session.user_id, "data": dict(session)})


async def _put(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.load()
    session.update(await request.json())
    return JSONResponse({})


async def _login(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.login(request.path_params["user"])
    return JSONResponse({})


async def _logout(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.logout()
    return JSONResponse({})


def client(backend: DjangoDatabaseBackend, session_key: str | None = None) -> httpx.AsyncClient:
    """An httpx client for an app with ``backend`` behind Django's cookie name, carrying ``session_key``."""
    app = Starlette(
        routes=[
            Route("/whoami", _whoami),
            Route("/put", _put, methods=["POST"]),
            Route("/login/{user}", _login, methods=["POST"]),
            Route("/logout", _logout, methods=["POST"]),
        ]
    )
    app.add_middleware(SessionMiddleware, backend=backend, config=SessionConfig(cookie_name="sessionid"))
    cookies = {} if session_key is None else {"sessionid": session_key}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", cookies=cookies)


def tampered(session_data: str) -> str:
    """``session_data`` with one character of its payload changed (its signature no longer matches)."""
    index = 3
    return session_data[:index] + ("A" if session_data[index] != "A" else "B") + session_data[index + 1 :]


# -- both directions -------------------------------------------------------------------------------------------


async def test_a_django_login_is_seen_by_the_asgi_app_and_its_changes_by_django(project: Project) -> None:
    """Django's auth login -> session.user_id in the ASGI app; what the app stores -> Django, still logged in."""
    key, pk = await project.django.call(django_login, "alice")
    async with client(project.backend, key) as http:
        seen = (await http.get("/whoami")).json()
        assert seen["user_id"] == pk
        assert seen["data"]["_auth_user_backend"] == "django.contrib.auth.backends.ModelBackend"
        assert (await http.post("/put", json={"cart": [1, 2], "name": "Zoë"})).status_code == 200
    stored = await project.django.call(django_load, key)
    assert stored["cart"] == [1, 2] and stored["name"] == "Zoë" and stored["_auth_user_id"] == pk
    assert await project.django.call(django_user, key) == pk  # _auth_user_hash survived the merge


async def test_an_asgi_logout_logs_the_user_out_of_django(project: Project) -> None:
    key, pk = await project.django.call(django_login, "bob")
    assert await project.django.call(django_user, key) == pk
    async with client(project.backend, key) as http:
        assert (await http.post("/logout")).status_code == 200
    assert await project.django.call(django_user, key) is None
    assert key not in await project.django.call(django_rows)


async def test_an_asgi_session_is_read_and_changed_by_django(project: Project) -> None:
    async with client(project.backend) as http:
        await http.post("/put", json={"n": 1, "text": "日本"})
        key = http.cookies["sessionid"]
        assert keys.is_valid_key(key)
        assert await project.django.call(django_load, key) == {"n": 1, "text": "日本"}
        await project.django.call(django_save, key, {"n": 5})
        assert (await http.get("/whoami")).json()["data"] == {"n": 5, "text": "日本"}


async def test_session_data_is_byte_for_byte_what_django_encodes(project: Project, clock: Clock) -> None:
    """Compressed and uncompressed, ASCII and not: Django's SessionBase.encode at the same second."""
    for data in ({"a": 1}, {"long": "x" * 300, "é": ["ü", 1.5, None, True]}):
        key = keys.new_key()
        await project.backend.save(key, data, 3600)
        stored = (await project.django.call(django_rows))[key]
        assert stored == await project.django.call(django_encode, data, clock.current.timestamp())
        assert stored.startswith(".") == ("long" in data)


async def test_expire_date_is_read_by_django_as_asession_wrote_it(project: Project, clock: Clock) -> None:
    """expire_date is the UTC instant now + age: Django's get_expiry_date() of the loaded row agrees."""
    from django.contrib.sessions.models import Session as DjangoSession

    key = keys.new_key()
    await project.backend.save(key, {"a": 1}, 3600)
    row = await project.django.call(lambda: DjangoSession.objects.get(session_key=key))
    expected = clock.current + timedelta(seconds=3600)
    assert abs((row.expire_date - expected).total_seconds()) < 0.002


# -- expiry and clearsessions on the shared table ----------------------------------------------------------------


async def test_django_clearsessions_and_asession_clear_expired_share_the_table(project: Project, clock: Clock) -> None:
    django = project.django
    live_django = await django.call(django_save, None, {"who": "django"})
    old_django = await django.call(django_save, None, {"who": "django, expired"}, -60)
    live_ours, old_ours = keys.new_key(), keys.new_key()
    await project.backend.save(live_ours, {"who": "asession"}, 3600)
    clock.advance(-7200)
    await project.backend.save(old_ours, {"who": "asession, expired"}, 60)  # expired an hour ago
    clock.advance(7200)
    assert await project.backend.load(old_django) is None  # an expired Django row is not live here
    assert await django.call(django_load, old_ours) == {}  # nor an expired row of ours for Django

    await django.call(django_clearsessions)
    assert set(await django.call(django_rows)) == {live_django, live_ours}

    expired_django = await django.call(django_save, None, {"who": "django, expired too"}, -60)
    clock.advance(2 * 3600)  # past live_ours' expiry, not live_django's (two weeks)
    assert await project.backend.clear_expired() == 2
    assert set(await django.call(django_rows)) == {live_django}
    assert expired_django not in await django.call(django_rows)


# -- bad input ---------------------------------------------------------------------------------------------------


async def test_a_tampered_session_data_loads_empty_on_both_sides(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    django_key = await project.django.call(django_save, None, {"role": "user"})
    ours = keys.new_key()
    await project.backend.save(ours, {"role": "user"}, 3600)
    rows = await project.django.call(django_rows)
    for key in (django_key, ours):
        await project.django.call(django_set_data, key, tampered(rows[key]))
    with caplog.at_level(logging.INFO, logger=SECURITY):
        for key in (django_key, ours):
            assert await project.backend.load(key) is None
            assert await project.django.call(django_load, key) == {}
    failures = [record for record in caplog.records if record.name == SECURITY and "signature" in record.message]
    assert len(failures) == 2
    async with client(project.backend, django_key) as http:
        assert (await http.get("/whoami")).json() == {"user_id": None, "data": {}}


async def test_pickle_is_refused_and_never_unpickled(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    """A signed PickleSerializer payload (Django < 5.0's option) loads empty, and its code never runs."""
    ran: list[str] = []

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (ran.append, ("unpickled",))

    class PickleSerializer:
        def dumps(self, obj: object) -> bytes:
            return pickle.dumps(obj)

    session_data = await project.django.call(django_sign, {"x": Exploit()}, serializer=PickleSerializer)
    key = await project.django.call(django_save, None, {"placeholder": 1})
    await project.django.call(django_set_data, key, session_data)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert await project.backend.load(key) is None
    assert ran == []
    assert any("pickle" in record.message for record in caplog.records if record.name == SECURITY)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: "not signed at all", id="unsigned"),
        pytest.param(lambda: "gAJ9cQAu", id="legacy-base64-pickle"),
        pytest.param(lambda: django_sign(["a", "list"]), id="json-not-an-object"),
        pytest.param(lambda: django_sign("x" * 5000, compress=True), id="json-string-compressed"),
        pytest.param(lambda: django_sign({"big": "x" * 2_000_000}), id="zip-bomb-over-max-size"),
    ],
)
async def test_malformed_session_data_loads_empty_and_is_logged(
    project: Project, caplog: pytest.LogCaptureFixture, make: Any
) -> None:
    session_data = await project.django.call(make)
    key = await project.django.call(django_save, None, {"placeholder": 1})
    await project.django.call(django_set_data, key, session_data)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert await project.backend.load(key) is None
    assert [record.levelno for record in caplog.records if record.name == SECURITY] == [logging.WARNING]


async def test_a_wrong_secret_key_gives_empty_sessions_and_one_warning(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = [(await project.django.call(django_login, f"user{n}"))[0] for n in range(3)]
    async with DjangoDatabaseBackend(project.url, "another-secret-key-entirely-" + "x" * 20) as wrong:
        with caplog.at_level(logging.WARNING):
            for key in sessions * 2:
                async with client(wrong, key) as http:
                    assert (await http.get("/whoami")).json() == {"user_id": None, "data": {}}
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, [record.message for record in warnings]
    assert warnings[0].name == SECURITY and "secret_key is not the Django project's SECRET_KEY" in warnings[0].message


async def test_fallback_keys_verify_sessions_signed_with_an_old_secret(project: Project) -> None:
    key, pk = await project.django.call(django_login, "carol")
    async with DjangoDatabaseBackend(project.url, "the-new-secret-key-after-rotation-" + "y" * 20,
                                     fallback_keys=[SECRET_KEY]) as rotated:  # fmt: skip
        async with client(rotated, key) as http:
            assert (await http.get("/whoami")).json()["user_id"] == pk


# -- the per-user index -------------------------------------------------------------------------------------------


async def test_index_rows_fit_djangos_column_and_are_no_django_session(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(project.backend) as http:
        await http.post("/login/alice")
        key = http.cookies["sessionid"]
    [info] = await project.backend.user_sessions("alice")
    assert info.id == project.backend.handle(key, "alice")
    index_rows = [row for row in await project.django.call(django_rows) if row != key]
    assert len(index_rows) == 1
    [index_row] = index_rows
    assert len(index_row) == 40 and index_row.startswith("asession:")
    assert not project.backend.accepts_key(index_row)
    # Another secret maps the same user elsewhere: the row's key cannot be computed from the user id alone.
    assert project.backend._row_key(users.index_key("alice")) == index_row
    assert DjangoDatabaseBackend(project.url, "x" * 50)._row_key(users.index_key("alice")) != index_row
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        assert await project.django.call(django_load, index_row) == {}  # signed with the index's own salt
    assert INDEX_SALT != SESSION_SALT
    assert await project.backend.revoke_user_sessions("alice") == 1
    assert await project.django.call(django_load, key) == {}


# -- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "message"),
    [("", "empty"), ("short", "at least 32"), (42, "str or bytes")],
)
def test_secret_key_is_checked(tmp_path: Path, secret: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        DjangoDatabaseBackend(tmp_path / "db.sqlite3", secret)


def test_fallback_keys_must_be_a_list() -> None:
    with pytest.raises(ImproperlyConfigured, match="fallback_keys=\\[old_key\\]"):
        DjangoDatabaseBackend("db.sqlite3", SECRET_KEY, fallback_keys=SECRET_KEY)


def test_time_zone_is_checked() -> None:
    with pytest.raises(ImproperlyConfigured, match="time_zone"):
        DjangoDatabaseBackend("db.sqlite3", SECRET_KEY, use_tz=False, time_zone="Mars/Olympus")


async def test_a_missing_database_or_table_asks_for_migrate(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(ImproperlyConfigured, match="manage.py migrate"):
        await DjangoDatabaseBackend(missing, SECRET_KEY).open()
    assert not missing.exists()
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    with pytest.raises(ImproperlyConfigured, match="manage.py migrate"):
        await DjangoDatabaseBackend(empty, SECRET_KEY).open()


@pytest.mark.postgres
async def test_a_missing_postgres_table_asks_for_migrate(postgres_url: str) -> None:
    with own_postgres_database(postgres_url) as url:
        with pytest.raises(ImproperlyConfigured, match="manage.py migrate"):
            await DjangoDatabaseBackend(url, SECRET_KEY).open()


def test_keys_must_fit_djangos_column() -> None:
    backend = DjangoDatabaseBackend("db.sqlite3", SECRET_KEY)
    assert backend.accepts_key("a" * 40) and backend.accepts_key("abcd1234")
    assert not backend.accepts_key("a" * 41) and not backend.accepts_key("abc") and not backend.accepts_key("A" * 32)
    assert backend.hashes_keys is False


async def test_use_tz_false_stores_the_wall_clock_of_time_zone(tmp_path: Path, clock: Clock) -> None:
    """USE_TZ=False: a naive expire_date in TIME_ZONE's wall-clock time, as Django writes and compares it."""
    from zoneinfo import ZoneInfo

    path = tmp_path / "db.sqlite3"
    create_sqlite_session_table(path)
    connection = sqlite3.connect(path)
    async with DjangoDatabaseBackend(path, SECRET_KEY, use_tz=False, time_zone="Asia/Kolkata") as backend:
        key = keys.new_key()
        await backend.save(key, {"a": 1}, 60)
        [(stored,)] = connection.execute("SELECT expire_date FROM django_session").fetchall()
        wall = (clock.current + timedelta(seconds=60)).astimezone(ZoneInfo("Asia/Kolkata")).replace(tzinfo=None)
        assert stored == wall.strftime("%Y-%m-%d %H:%M:%S.000")
        assert await backend.load(key) == {"a": 1}
        clock.advance(61)
        assert await backend.load(key) is None
        assert await backend.clear_expired() == 1
    connection.close()


def test_zlib_bomb_guard_is_bounded() -> None:
    """The decompression of a stored payload stops at max_size + 1 bytes instead of inflating it whole."""
    backend = DjangoDatabaseBackend("db.sqlite3", SECRET_KEY, max_size=1000)
    payload = zlib.compress(b"{" + b" " * 10_000_000 + b"}")
    assert len(payload) < 20_000
    signed = backend._sessions.sign("." + _b64(payload), 0)
    assert backend._open_data("a" * 32, signed) is None


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
