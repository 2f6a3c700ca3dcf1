"""Idle and absolute timeouts, enforced by the store; touches of read-only sessions; session events (issue #12)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asession import ImproperlyConfigured, Session, SessionConfig, SessionEvent, SessionMiddleware
from asession.backends.base import SessionBackend
from asession.backends.memory import MemoryBackend
from asession.users import META_KEY
from tests.conftest import Clock, let_expire

# -- SessionConfig ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": 0},
        {"idle_timeout": -5},
        {"idle_timeout": 1.5},
        {"idle_timeout": True},
        {"absolute_timeout": 0},
        {"absolute_timeout": "60"},
        {"touch_interval": 10},  # without idle_timeout
        {"idle_timeout": 60, "touch_interval": 60},
        {"idle_timeout": 60, "touch_interval": 0},
    ],
)
def test_bad_timeouts_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured):
        SessionConfig(**options)


def test_touch_interval_defaults_to_a_tenth_of_the_idle_timeout() -> None:
    assert SessionConfig().effective_touch_interval is None
    assert SessionConfig(idle_timeout=1800).effective_touch_interval == 180
    assert SessionConfig(idle_timeout=5).effective_touch_interval == 1
    assert SessionConfig(idle_timeout=60, touch_interval=7).effective_touch_interval == 7


# -- enforced by the store -------------------------------------------------------------------------------------


async def test_idle_timeout_ends_an_untouched_session(server_backend: SessionBackend, clock: Clock) -> None:
    config = SessionConfig(idle_timeout=2)
    session = Session(server_backend, None, config)
    session["a"] = 1
    await session.save()
    assert session.cookie_lifetime() is not None and session.cookie_lifetime()[0] <= 2  # type: ignore[index]
    await let_expire(server_backend, clock, 2)
    assert await server_backend.load(session.session_key) is None  # type: ignore[arg-type]


@pytest.mark.slow
async def test_touches_keep_an_active_session_alive_until_the_absolute_timeout(
    server_backend: SessionBackend, clock: Clock
) -> None:
    """Activity every 1.5 s keeps a 3 s idle session alive, but never past its 6 s absolute timeout.

    Steps of 1.5 s keep half a second from every boundary: memcached counts TTLs in whole seconds.
    """
    config = SessionConfig(idle_timeout=3, absolute_timeout=6, touch_interval=1)
    session = Session(server_backend, None, config)
    await session.login("alice")
    key = session.session_key
    assert key is not None
    alive = 0
    for _ in range(5):
        clock.advance(1.5)
        if server_backend.expires_by_itself:
            await asyncio.sleep(1.5)
        reader = Session(server_backend, key, config)
        await reader.load()
        if reader.session_key is None:
            break
        alive += 1
        assert reader.needs_touch()
        await reader.touch()
    # Alive at 1.5, 3 and 4.5 s (past the idle timeout thanks to the touches), ended at 6 s by the absolute one.
    assert alive == 3
    assert await server_backend.load(key) is None
    assert await server_backend.user_sessions("alice") == []


async def test_absolute_timeout_restarts_at_login(memory_backend: SessionBackend, clock: Clock) -> None:
    config = SessionConfig(absolute_timeout=100)
    session = Session(memory_backend, None, config)
    session["a"] = 1
    await session.save()
    clock.advance(90)
    await session.login("alice")
    clock.advance(50)  # 140 s after creation, 50 s after the login
    reader = Session(memory_backend, session.session_key, config)
    await reader.load()
    assert reader.user_id == "alice"
    clock.advance(51)
    reader = Session(memory_backend, session.session_key, config)
    await reader.load()
    assert reader.session_key is None


async def test_saves_cannot_extend_a_session_past_its_absolute_timeout(
    memory_backend: SessionBackend, clock: Clock
) -> None:
    config = SessionConfig(absolute_timeout=10, max_age=3600)
    session = Session(memory_backend, None, config)
    session["n"] = 0
    await session.save()
    for n in range(1, 4):
        clock.advance(3)
        session["n"] = n
        await session.save()
    lifetime = session.cookie_lifetime()
    assert lifetime is not None and lifetime[0] == 1  # 10 s after creation, 9 s have passed
    clock.advance(1.5)
    assert await memory_backend.load(session.session_key) is None  # type: ignore[arg-type]


async def test_metadata_is_not_part_of_the_mapping(memory_backend: SessionBackend) -> None:
    config = SessionConfig(idle_timeout=60)
    session = Session(memory_backend, None, config)
    session["a"] = 1
    await session.save()
    stored = await memory_backend.load(session.session_key)  # type: ignore[arg-type]
    assert stored is not None and META_KEY in stored
    reader = Session(memory_backend, session.session_key, config)
    await reader.load()
    assert dict(reader) == {"a": 1} and META_KEY not in reader
    reader.clear()  # replacing the whole session keeps its metadata
    reader["b"] = 2
    await reader.save()
    stored = await memory_backend.load(session.session_key)  # type: ignore[arg-type]
    assert stored is not None and stored["b"] == 2 and "a" not in stored and META_KEY in stored


async def test_without_timeouts_anonymous_sessions_carry_no_metadata(memory_backend: SessionBackend) -> None:
    session = Session(memory_backend)
    session["a"] = 1
    await session.save()
    assert await memory_backend.load(session.session_key) == {"a": 1}  # type: ignore[arg-type]


# -- through the middleware: touch, cookie refresh, events --------------------------------------------------


def _s(request: Request) -> Session:
    session: Session = request.scope["session"]
    return session


async def _read(request: Request) -> Response:
    return PlainTextResponse(str(request.session.get("n")))


async def _write(request: Request) -> Response:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))


async def _login(request: Request) -> Response:
    await _s(request).login(request.query_params["user"])
    return PlainTextResponse("in")


async def _logout(request: Request) -> Response:
    await _s(request).logout()
    return PlainTextResponse("out")


async def _flush(request: Request) -> Response:
    await _s(request).flush()
    return PlainTextResponse("flushed")


async def _rotate(request: Request) -> Response:
    await _s(request).cycle_key()
    return PlainTextResponse("rotated")


async def _others(request: Request) -> Response:
    return PlainTextResponse(str(await _s(request).revoke_other_sessions()))


def _app(backend: SessionBackend, config: SessionConfig, on_event: Any = None) -> Starlette:
    from starlette.middleware import Middleware

    routes = [
        Route("/read", _read),
        Route("/write", _write),
        Route("/login", _login),
        Route("/logout", _logout),
        Route("/flush", _flush),
        Route("/rotate", _rotate),
        Route("/others", _others),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend, config=config, on_event=on_event)]
    )


def _end_before_writes(backend: SessionBackend, client: httpx.AsyncClient) -> None:
    """Make the client's session end behind its request's back: deleted just before each write reaches it."""
    original = backend.apply

    async def ended_first(*args: Any, **kwargs: Any) -> None:
        await backend.delete(client.cookies["session"])
        await original(*args, **kwargs)

    backend.apply = ended_first  # type: ignore[method-assign]


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_read_only_requests_touch_once_per_interval_and_refresh_the_cookie(clock: Clock) -> None:
    backend = MemoryBackend()
    config = SessionConfig(idle_timeout=100, touch_interval=10)
    async with _client(_app(backend, config)) as client:
        assert (await client.get("/write")).headers.get("set-cookie")
        key = client.cookies["session"]
        clock.advance(5)
        response = await client.get("/read")
        assert response.text == "1" and "set-cookie" not in response.headers  # within the interval: nothing
        clock.advance(6)
        response = await client.get("/read")  # 11 s after the save: touched, the cookie sent again
        cookie = response.headers["set-cookie"]
        assert f"session={key}" in cookie and "Max-Age=100" in cookie
        assert response.headers["vary"] == "Cookie"
        clock.advance(95)  # 95 s after the touch, 106 s after the save: alive thanks to the touch
        assert (await client.get("/read")).text == "1"
        clock.advance(101)
        response = await client.get("/read")
        assert response.text == "None"


async def test_a_touch_of_a_revoked_session_expires_the_cookie(clock: Clock) -> None:
    backend = MemoryBackend()
    config = SessionConfig(idle_timeout=100, touch_interval=10)
    async with _client(_app(backend, config)) as client:
        await client.get("/write")
        _end_before_writes(backend, client)  # between the request's load and its touch
        clock.advance(11)
        response = await client.get("/read")
        assert response.status_code == 200
        assert 'session=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]


async def test_events_reach_a_sync_listener(clock: Clock) -> None:
    backend = MemoryBackend()
    seen: list[SessionEvent] = []
    async with _client(_app(backend, SessionConfig(), seen.append)) as client:
        await client.get("/write")
        await client.get("/login", params={"user": "alice"})
        await client.get("/rotate")
        other = _client(_app(backend, SessionConfig()))
        async with other:
            await other.get("/login", params={"user": "alice"})
        await client.get("/others")
        await client.get("/logout")
        await client.get("/write")
        await client.get("/flush")
    assert [event.type for event in seen] == ["created", "login", "rotated", "revoked", "logout", "created", "flushed"]
    login, revoked, logout = seen[1], seen[3], seen[4]
    assert revoked.user_id == "alice" and revoked.session_id == backend.handle(other.cookies["session"], "alice")
    assert login.user_id == "alice" and login.session_id and login.session_id.startswith("YWxpY2U.")
    assert logout.user_id == "alice" and logout.session_id == seen[2].session_id  # the rotated key's handle
    assert all(event.time.tzinfo is not None for event in seen)
    assert all(len(event.session_id or "") < 64 or "." in (event.session_id or "") for event in seen)


async def test_revocations_a_view_makes_through_the_backend_are_events(clock: Clock) -> None:
    """backend.revoke_session() and revoke_user_sessions() called by a view report one "revoked" event per
    session ended, with its id; a revocation that ends nothing, or one made outside any request, reports none."""
    backend = MemoryBackend()
    seen: list[SessionEvent] = []

    async def revoke_one(request: Request) -> Response:
        return PlainTextResponse(str(await backend.revoke_session(request.query_params["id"])))

    async def revoke_all(request: Request) -> Response:
        return PlainTextResponse(str(await backend.revoke_user_sessions(request.query_params["user"])))

    app = _app(backend, SessionConfig(), seen.append)
    app.router.routes.extend([Route("/revoke-one", revoke_one), Route("/revoke-all", revoke_all)])
    async with backend:
        devices = [await _logged_in_key(backend, "bob") for _ in range(3)]
        handles = [backend.handle(key, "bob") for key in devices]
        async with _client(app) as admin:
            assert (await admin.get("/revoke-one", params={"id": handles[0]})).text == "True"
            assert (await admin.get("/revoke-one", params={"id": handles[0]})).text == "False"
            assert (await admin.get("/revoke-all", params={"user": "bob"})).text == "2"
            assert (await admin.get("/revoke-all", params={"user": "bob"})).text == "0"
        reported = [(event.type, event.session_id, event.user_id) for event in seen]
        assert reported[0] == ("revoked", handles[0], "bob")
        assert sorted(reported[1:]) == sorted(("revoked", handle, "bob") for handle in handles[1:])
        await _logged_in_key(backend, "bob")
        assert await backend.revoke_user_sessions("bob") == 1  # no request: nobody to tell
        assert len(seen) == 3


async def _logged_in_key(backend: SessionBackend, user: str) -> str:
    session = Session(backend, None, SessionConfig())
    await session.login(user)
    assert session.session_key is not None
    return session.session_key


async def test_async_listener_interrupted_and_store_error_events(clock: Clock) -> None:
    backend = MemoryBackend()
    seen: list[str] = []

    async def listener(event: SessionEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.type)

    app = _app(backend, SessionConfig(), listener)
    async with _client(app) as client:
        await client.get("/write")
        _end_before_writes(backend, client)  # between the request's load and its save
        assert (await client.get("/write")).status_code == 400
        del backend.apply

        async def failing_load(*args: Any) -> None:
            raise ConnectionError("down")

        client.cookies.set("session", "a" * 32)
        backend._load = failing_load  # type: ignore[method-assign,assignment]
        assert (await client.get("/read")).status_code == 503
    assert seen == ["created", "interrupted", "store_error"]


async def test_a_failing_listener_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: SessionEvent) -> None:
        raise RuntimeError("listener bug")

    async with _client(_app(MemoryBackend(), SessionConfig(), broken)) as client:
        with caplog.at_level(logging.ERROR, logger="asession.events"):
            response = await client.get("/login", params={"user": "alice"})
    assert response.status_code == 200 and response.text == "in"
    assert "listener bug" in caplog.text and "failed" in caplog.text


async def test_expiry_age_and_date_include_the_timeouts(memory_backend: SessionBackend, clock: Clock) -> None:
    session = Session(memory_backend, None, SessionConfig(idle_timeout=1800, absolute_timeout=3600))
    await session.login("alice")
    assert session.get_expiry_age() == 1800
    clock.advance(3000)
    assert session.get_expiry_age() == 600  # the absolute timeout comes first now
    assert session.get_expiry_date() == clock.current + timedelta(seconds=600)
    plain = Session(memory_backend)
    assert plain.get_expiry_age() == SessionConfig().max_age  # no timeouts: Django's rule alone
