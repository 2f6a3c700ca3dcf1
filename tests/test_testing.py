"""asession.testing and the pytest plugin: sessions made for a test are the ones the app sees, and back.

Async tests drive the app with httpx's ``AsyncClient`` over ``ASGITransport`` (no lifespan: the backend
is opened by make_session or by the first request); sync tests with Starlette's ``TestClient``, inside
``with`` (the app's loop in a portal thread, the backend opened and owned by the middleware) and without.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session, SessionConfig, SessionError, SessionMiddleware
from asession.backends.base import BackendState, SessionBackend
from asession.backends.db import DatabaseBackend
from asession.backends.file import FileBackend
from asession.backends.memory import MemoryBackend
from asession.backends.signed_cookies import SignedCookieBackend
from asession.changes import Changes
from asession.testing import login_client, make_session, read_session, session_of, set_cookies
from tests.conftest import Clock

with warnings.catch_warnings():
    # Starlette 1.x's TestClient prefers httpx2 and warns when it falls back to httpx, which the suite uses.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytest_plugins = ["pytester"]

SECRET = "testing-helpers-secret-with-enough-entropy-0123456789"
KINDS = ["memory", "sqlite", "signed-cookies"]
#: The TestClient tests also run on files, the other backend used from a fresh loop without `with`.
SYNC_KINDS = [*KINDS, "file"]
BASE_URL = "http://testserver"


# -- the app -----------------------------------------------------------------------------------------------


async def _whoami(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    return JSONResponse({"user_id": session.user_id, "data": dict(session)})


async def _store(request: Request) -> JSONResponse:
    request.session["cart"] = [1, 2]
    request.session["note"] = "héllo"
    return JSONResponse({})


async def _relogin(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.login(8)  # a new key: the app sets the cookie again
    return JSONResponse({})


async def _logout(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.flush()
    return JSONResponse({})


def make_app(backend: SessionBackend, config: SessionConfig | None = None) -> Starlette:
    routes = [
        Route("/whoami", _whoami),
        Route("/store", _store, methods=["POST"]),
        Route("/relogin", _relogin, methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SessionMiddleware, backend=backend, config=config)
    return app


def async_client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


def build(kind: str, tmp_path: Path) -> SessionBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return DatabaseBackend(tmp_path / "s.sqlite3")
    if kind == "file":
        return FileBackend(tmp_path)
    return SignedCookieBackend(SECRET)


@pytest.fixture(params=KINDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionBackend]:
    """An unopened backend of each kind, closed (on the test's loop) after the test."""
    built = build(request.param, tmp_path)
    yield built
    await built.close()


@pytest.fixture(params=SYNC_KINDS)
def sync_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionBackend]:
    """An unopened backend of each kind for sync tests; closed after the test on a loop of its own if open."""
    built = build(request.param, tmp_path)
    yield built
    if built.is_open:
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(built.close)


# -- make_session / read_session with httpx's AsyncClient ------------------------------------------------


async def test_a_test_starts_logged_in(backend: SessionBackend) -> None:
    """make_session(user_id=7) opens the backend, and the app sees user "7" and the data."""
    cookies = await make_session(backend, {"cart": [1], "name": "ann"}, user_id=7)
    assert list(cookies) == ["session"]
    assert backend.state is BackendState.OPEN
    async with async_client(make_app(backend)) as client:
        set_cookies(client, cookies)
        response = await client.get("/whoami")
    assert response.json() == {"user_id": "7", "data": {"cart": [1], "name": "ann", "_auth_user_id": "7"}}
    # What the app saw is what read_session reads: no metadata, no expiry record.
    assert await read_session(backend, cookies) == {"cart": [1], "name": "ann", "_auth_user_id": "7"}


async def test_read_session_returns_what_a_request_stored(backend: SessionBackend) -> None:
    """A request stores; read_session of the client's cookies (an httpx.Cookies) returns it."""
    async with async_client(make_app(backend)) as client:
        assert (await client.post("/store")).status_code == 200
        assert "session" in client.cookies
        assert await read_session(backend, client.cookies) == {"cart": [1, 2], "note": "héllo"}


async def test_a_session_made_for_the_test_is_changed_by_the_app(backend: SessionBackend) -> None:
    """The app merges into the session the test made; the client ends with one session cookie."""
    cookies = await make_session(backend, {"a": 1})
    async with async_client(make_app(backend)) as client:
        set_cookies(client, cookies)
        await client.post("/store")
        assert [cookie.name for cookie in client.cookies.jar] == ["session"]
        assert await read_session(backend, client.cookies) == {"a": 1, "cart": [1, 2], "note": "héllo"}
        await client.post("/relogin")  # a new key, replacing the cookie set_cookies() put there
        assert [cookie.name for cookie in client.cookies.jar] == ["session"]
        assert (await client.get("/whoami")).json()["user_id"] == "8"
        # Nobody was signed in, so login() kept the data (Django's rule).
        assert await read_session(backend, client.cookies) == {
            "a": 1,
            "cart": [1, 2],
            "note": "héllo",
            "_auth_user_id": "8",
        }
        await client.post("/logout")
        assert await read_session(backend, client.cookies) == {}


async def test_cookies_put_on_a_client_by_hand_conflict_once_the_app_sets_its_own() -> None:
    """client.cookies.update() leaves a host-less cookie beside the app's: read_session says why."""
    async with MemoryBackend() as backend:
        cookies = await make_session(backend, {"a": 1}, user_id=1)
        async with async_client(make_app(backend)) as client:
            client.cookies.update(cookies)
            await client.post("/relogin")
            assert (await client.get("/whoami")).json()["user_id"] is None  # the stale cookie came first
            with pytest.raises(SessionError, match="2 different cookies named 'session'.*set_cookies"):
                await read_session(backend, client.cookies)


async def test_the_same_cookie_twice_is_read_once(backend: SessionBackend) -> None:
    """A jar holding one value for two hosts is not a conflict (httpx's own get() would raise)."""
    cookies = await make_session(backend, {"a": 1})
    jar = httpx.Cookies()
    jar.set("session", cookies["session"], domain="")
    jar.set("session", cookies["session"], domain="testserver.local")
    assert await read_session(backend, jar) == {"a": 1}


@pytest.mark.parametrize(
    "cookies",
    [{}, {"other": "x"}, {"session": ""}, {"session": "garbage!"}, {"session": "a" * 32}, {"session": "x.y"}],
    ids=["none", "other-name", "empty", "malformed", "unknown", "short-dotted"],
)
async def test_read_session_is_empty_without_a_usable_cookie(backend: SessionBackend, cookies: dict[str, str]) -> None:
    assert await read_session(backend, cookies) == {}
    assert backend.is_open


async def test_read_session_is_empty_for_a_tampered_cookie(backend: SessionBackend) -> None:
    key = (await make_session(backend, {"a": 1}))["session"]
    # The first character: the signature's last one carries padding bits that a change may leave alone.
    tampered = ("b" if key[0] == "a" else "a") + key[1:]
    assert await read_session(backend, {"session": tampered}) == {}
    assert await read_session(backend, httpx.Cookies({"session": key})) == {"a": 1}


async def test_read_session_is_empty_once_expired(backend: SessionBackend, clock: Clock) -> None:
    config = SessionConfig(max_age=60)
    cookies = await make_session(backend, {"a": 1}, config=config)
    clock.advance(30)
    assert await read_session(backend, cookies, config=config) == {"a": 1}
    clock.advance(31)
    assert await read_session(backend, cookies, config=config) == {}


async def test_read_session_takes_anything_with_get_and_quoted_values(backend: SessionBackend) -> None:
    class Jar:
        def __init__(self, value: str) -> None:
            self.value = value

        def get(self, name: str, /) -> str | None:
            return self.value if name == "session" else None

    key = (await make_session(backend, {"a": 1}))["session"]
    assert await read_session(backend, Jar(key)) == {"a": 1}
    assert await read_session(backend, {"session": f'"{key}"'}) == {"a": 1}


async def test_data_json_cannot_carry_raises_naming_the_key(backend: SessionBackend) -> None:
    with pytest.raises(TypeError, match="'when'"):
        await make_session(backend, {"ok": 1, "when": datetime.now(timezone.utc)})
    with pytest.raises(TypeError, match="'tags'"):
        await make_session(backend, {"tags": {"a", "b"}}, user_id=7)
    with pytest.raises(TypeError, match="keys must be strings"):
        await make_session(backend, {(1, 2): "pair"})  # type: ignore[dict-item]


@pytest.mark.parametrize("user_id", ["", True, 1.5, "x" * 257])
async def test_a_bad_user_id_is_refused_before_anything_is_opened(backend: SessionBackend, user_id: Any) -> None:
    with pytest.raises(ValueError, match="user id"):
        await make_session(backend, {"a": 1}, user_id=user_id)
    assert backend.state is BackendState.UNOPENED


@pytest.mark.parametrize("key", ["_auth_user_id", "_session_meta", "_session_expiry"])
async def test_keys_the_session_keeps_for_itself_are_refused(backend: SessionBackend, key: str) -> None:
    with pytest.raises(ValueError, match=f"cannot hold '{key}'"):
        await make_session(backend, {key: "7"})
    assert backend.state is BackendState.UNOPENED


async def test_user_sessions_lists_a_session_made_with_a_user(backend: SessionBackend) -> None:
    key = (await make_session(backend, {"a": 1}, user_id=7))["session"]
    if not backend.indexes:
        with pytest.raises(NotImplementedError, match="no per-user index"):
            await backend.user_sessions(7)
        return
    sessions = await backend.user_sessions(7)
    assert [(info.id, info.user_id) for info in sessions] == [(backend.handle(key, "7"), "7")]
    assert await backend.user_sessions(8) == []
    assert await backend.revoke_user_sessions(7) == 1
    assert await read_session(backend, {"session": key}) == {}


async def test_a_custom_cookie_name_is_used_both_ways(backend: SessionBackend) -> None:
    config = SessionConfig(cookie_name="sid")
    cookies = await make_session(backend, {"a": 1}, config=config, user_id="ann")
    assert list(cookies) == ["sid"]
    async with async_client(make_app(backend, config)) as client:
        set_cookies(client, cookies, config=config)
        assert (await client.get("/whoami")).json()["user_id"] == "ann"
        await client.post("/store")
        assert await read_session(backend, client.cookies, config=config) == {
            "a": 1,
            "cart": [1, 2],
            "note": "héllo",
            "_auth_user_id": "ann",
        }
    assert await read_session(backend, cookies) == {}  # the default name is not there


async def test_an_empty_session_can_be_made(backend: SessionBackend) -> None:
    cookies = await make_session(backend, {})
    assert cookies["session"]
    assert await read_session(backend, cookies) == {}


async def test_a_closed_backend_is_refused(backend: SessionBackend) -> None:
    await backend.open()
    await backend.close()
    with pytest.raises(SessionError, match="closed.*SessionMiddleware closes a backend it opened"):
        await make_session(backend, {"a": 1})
    with pytest.raises(SessionError, match="closed"):
        await read_session(backend, {"session": "a" * 32})


async def test_a_backend_opened_by_the_middleware_is_used_as_it_is(backend: SessionBackend) -> None:
    """Once the first request opened the backend (no lifespan), make_session uses it without reopening."""
    async with async_client(make_app(backend)) as client:
        await client.get("/whoami")
        assert backend.is_open
        set_cookies(client, await make_session(backend, {"a": 1}, user_id=3))
        assert (await client.get("/whoami")).json() == {"user_id": "3", "data": {"a": 1, "_auth_user_id": "3"}}


# -- set_cookies: the host the app sets its cookie for -------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "domain"),
    [
        ("http://testserver", "testserver.local"),
        ("http://TEST:8000/api", "test.local"),
        ("https://user@app.example.com", "app.example.com"),
        ("http://127.0.0.1:8000", "127.0.0.1"),
        ("", ""),
    ],
)
def test_set_cookies_uses_the_domain_the_app_would_get(base_url: str, domain: str) -> None:
    client = httpx.Client(base_url=base_url)
    client.cookies.set("session", "old")
    set_cookies(client, {"session": "new"})
    assert [(cookie.name, cookie.value, cookie.domain, cookie.path) for cookie in client.cookies.jar] == [
        ("session", "new", domain, "/")
    ]
    client.close()


def test_set_cookies_follows_the_configured_domain_and_path() -> None:
    client = httpx.Client(base_url="http://app.example.com")
    set_cookies(client, {"sid": "v"}, config=SessionConfig(cookie_name="sid", cookie_domain="example.com"))
    set_cookies(client, {"id": "w"}, config=SessionConfig(cookie_domain=".example.org", cookie_path="/app"))
    assert sorted((cookie.name, cookie.domain, cookie.path) for cookie in client.cookies.jar) == [
        ("id", ".example.org", "/app"),
        ("sid", ".example.com", "/"),
    ]
    client.close()


async def test_a_configured_domain_is_replaced_by_the_apps_cookie() -> None:
    config = SessionConfig(cookie_domain="example.com")
    async with MemoryBackend() as backend:
        app = make_app(backend, config)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app.example.com"
        ) as client:
            set_cookies(client, await make_session(backend, {"a": 1}, config=config, user_id=1), config=config)
            await client.post("/relogin")
            assert len(client.cookies.jar) == 1
            assert (await client.get("/whoami")).json()["user_id"] == "8"


# -- Starlette's TestClient: login_client / session_of ----------------------------------------------------


def test_testclient_starts_logged_in_and_reads_back(sync_backend: SessionBackend) -> None:
    """Inside `with`, the helpers run on the app's loop; the middleware owns the backend and closes it."""
    with TestClient(make_app(sync_backend)) as client:
        assert sync_backend.is_open  # opened by the middleware on lifespan startup
        cookies = login_client(client, sync_backend, {"cart": [1]}, user_id=7)
        assert client.cookies.get("session") == cookies["session"]
        assert client.get("/whoami").json() == {"user_id": "7", "data": {"cart": [1], "_auth_user_id": "7"}}
        client.post("/store")
        assert session_of(client, sync_backend) == {"cart": [1, 2], "note": "héllo", "_auth_user_id": "7"}
        client.post("/relogin")
        assert session_of(client, sync_backend) == {"_auth_user_id": "8"}
        client.post("/logout")
        assert session_of(client, sync_backend) == {}
    assert sync_backend.state is BackendState.CLOSED
    with pytest.raises(SessionError, match="session_of\\(\\) was given .* which is closed"):
        session_of(client, sync_backend)
    with pytest.raises(SessionError, match="closed"):
        login_client(client, sync_backend)


def test_testclient_without_with_runs_on_a_fresh_loop(sync_backend: SessionBackend) -> None:
    """Without `with` (a new loop per request), backends bound to no loop still work."""
    client = TestClient(make_app(sync_backend))
    assert session_of(client, sync_backend) == {}
    assert sync_backend.is_open  # opened by the helper: the test's to close (the fixture does)
    login_client(client, sync_backend, user_id="ann")
    assert client.get("/whoami").json() == {"user_id": "ann", "data": {"_auth_user_id": "ann"}}
    client.post("/store")
    assert session_of(client, sync_backend) == {"cart": [1, 2], "note": "héllo", "_auth_user_id": "ann"}
    client.close()


def test_testclient_helpers_pass_errors_on(sync_backend: SessionBackend) -> None:
    with TestClient(make_app(sync_backend)) as client:
        with pytest.raises(TypeError, match="'when'"):
            login_client(client, sync_backend, {"when": datetime.now(timezone.utc)})
        with pytest.raises(ValueError, match="user id"):
            login_client(client, sync_backend, user_id="")
        assert "session" not in client.cookies


class _LoopBound(SessionBackend):
    """Stands for a store whose connections belong to one event loop (Redis, PostgreSQL, memcached)."""

    async def _load(self, skey: str) -> str | None:
        raise AssertionError("never reached")

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        raise AssertionError("never reached")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None:
        raise AssertionError("never reached")

    async def _exists(self, skey: str) -> bool:
        raise AssertionError("never reached")

    async def _delete(self, skey: str) -> None:
        raise AssertionError("never reached")

    async def _clear_expired(self) -> int:
        raise AssertionError("never reached")


def test_testclient_without_with_refuses_a_loop_bound_backend() -> None:
    backend = _LoopBound()
    client = TestClient(make_app(backend))
    with pytest.raises(SessionError, match="with TestClient\\(app\\) as client"):
        login_client(client, backend, {"a": 1})
    with pytest.raises(SessionError, match="needs the event loop the app runs on"):
        session_of(client, backend)
    assert backend.state is BackendState.UNOPENED
    client.close()


def test_a_postgres_database_backend_is_loop_bound() -> None:
    """Only SQLite's DatabaseBackend is used from a fresh loop; nothing is connected to find out."""
    pytest.importorskip("asyncpg")
    backend = DatabaseBackend("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(SessionError, match="needs the event loop"):
        login_client(TestClient(make_app(backend)), backend)


# -- the pytest plugin -----------------------------------------------------------------------------------


def test_the_fixture_in_a_sync_test(asession_backend: MemoryBackend) -> None:
    """asession_backend is open before the app starts, so the middleware leaves it open at shutdown."""
    assert type(asession_backend) is MemoryBackend and asession_backend.is_open
    with TestClient(make_app(asession_backend)) as client:
        login_client(client, asession_backend, {"a": 1}, user_id=7)
        client.post("/store")
    assert asession_backend.is_open
    assert session_of(client, asession_backend) == {"a": 1, "cart": [1, 2], "note": "héllo", "_auth_user_id": "7"}


async def test_the_fixture_in_an_async_test(asession_backend: MemoryBackend) -> None:
    assert asession_backend.is_open
    cookies = await make_session(asession_backend, {"a": 1}, user_id=7)
    async with async_client(make_app(asession_backend)) as client:
        set_cookies(client, cookies)
        assert (await client.get("/whoami")).json()["user_id"] == "7"
    assert [info.user_id for info in await asession_backend.user_sessions(7)] == ["7"]


def test_the_plugin_is_registered_and_closes_the_backend(pytester: pytest.Pytester) -> None:
    """Through the pytest11 entry point, in a project on pytest-asyncio's strict mode: sync and async
    tests get a fresh open backend each, closed after the test."""
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import pytest
        from asession.testing import make_session, read_session

        seen = []

        def test_sync(asession_backend):
            assert asession_backend.is_open
            seen.append(asession_backend)

        @pytest.mark.asyncio
        async def test_async(asession_backend):
            assert asession_backend is not seen[0] and seen[0].state.name == "CLOSED"
            cookies = await make_session(asession_backend, {"a": 1})
            assert await read_session(asession_backend, cookies) == {"a": 1}
            seen.append(asession_backend)

        def test_after():
            assert [backend.state.name for backend in seen] == ["CLOSED", "CLOSED"]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    disabled = pytester.runpytest("-p", "no:asession", "-p", "no:cacheprovider", "-k", "test_sync")
    disabled.stdout.fnmatch_lines(["*fixture 'asession_backend' not found*"])


def test_the_plugin_refuses_a_coroutine_that_waits() -> None:
    import asyncio
    import inspect

    from asession import pytest_plugin

    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="waited for an event loop"):
        pytest_plugin._run_at_once(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # closed, not left suspended
