"""SessionMiddleware over every backend: Starlette's own SessionMiddleware tests first, then asession's rules.

Apps are called through ``httpx.ASGITransport`` on the test's event loop; lifespan runs through
``asgi_lifespan.LifespanManager``, and WebSockets are driven by hand (the ASGI messages) on the same loop.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Lifespan, Message
from starlette.websockets import WebSocket

from asession import ImproperlyConfigured, Session, SessionConfig, SessionMiddleware
from asession.backends import backend_from_url
from asession.backends.base import BackendState, SessionBackend
from asession.backends.memory import MemoryBackend
from asession.backends.signed_cookies import SignedCookieBackend
from asession.changes import Changes
from tests.conftest import SECRET, Clock, let_expire

TWO_WEEKS = 14 * 24 * 3600
KNOWN_LOOKING_KEY = "abcdefgh12345678abcdefgh12345678"


# -- the app --------------------------------------------------------------------------------------------


def session_of(connection: Request | WebSocket) -> Session:
    """The asession Session behind ``request.session``, which Starlette types as a plain dict."""
    session = connection.scope["session"]
    assert isinstance(session, Session)
    return session


async def view_session(request: Request) -> JSONResponse:
    return JSONResponse({"session": request.session})


async def update_session(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse({"session": request.session})


async def clear_session(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"session": request.session})


async def flush_session(request: Request) -> JSONResponse:
    await session_of(request).flush()
    return JSONResponse({"session": request.session})


async def cycle_key(request: Request) -> JSONResponse:
    await session_of(request).cycle_key()
    return JSONResponse({"session": request.session})


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no session here")


async def set_expiry(request: Request) -> JSONResponse:
    session_of(request).set_expiry(int(request.path_params["seconds"]))
    request.session["expiry"] = "custom"
    return JSONResponse({"session": request.session})


async def modify_then_status(request: Request) -> Response:
    request.session["lost"] = True
    return Response("status chosen by the test", status_code=int(request.path_params["status"]))


async def modify_then_raise(request: Request) -> Response:
    request.session["lost"] = True
    raise RuntimeError("the app failed")


async def store_unserializable(request: Request) -> Response:
    request.session["when"] = {1, 2}
    return Response("set")


async def read_with_vary(request: Request) -> Response:
    request.session.get("anything")
    return Response("read", headers={"Vary": request.query_params["vary"]})


async def json_dumps(request: Request) -> PlainTextResponse:
    request.session["n"] = 1
    assert isinstance(request.session, dict)
    return PlainTextResponse(json.dumps(request.session))


async def websocket_counter(websocket: WebSocket) -> None:
    await websocket.accept()
    session = session_of(websocket)
    count = session.get("n", 0)
    session["n"] = count + 1
    await session.save()
    await websocket.send_json({"n": count, "key": session.session_key})
    await websocket.close()


ROUTES = [
    Route("/view", view_session),
    Route("/update", update_session, methods=["POST"]),
    Route("/clear", clear_session, methods=["POST"]),
    Route("/flush", flush_session, methods=["POST"]),
    Route("/cycle", cycle_key, methods=["POST"]),
    Route("/untouched", untouched),
    Route("/expiry/{seconds:int}", set_expiry, methods=["POST"]),
    Route("/status/{status:int}", modify_then_status, methods=["POST"]),
    Route("/raise", modify_then_raise, methods=["POST"]),
    Route("/unserializable", store_unserializable, methods=["POST"]),
    Route("/vary", read_with_vary),
    Route("/json", json_dumps),
    WebSocketRoute("/ws", websocket_counter),
]


def make_app(
    backend: SessionBackend | None, config: SessionConfig | None = None, *, lifespan: Lifespan[Starlette] | None = None
) -> Starlette:
    middleware = [Middleware(SessionMiddleware, backend=backend, config=config)]
    return Starlette(routes=ROUTES, middleware=middleware, lifespan=lifespan)


def client_for(
    app: ASGIApp, base_url: str = "http://testserver", *, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def client(backend: SessionBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(backend)) as client:
        yield client


def set_cookie(response: httpx.Response) -> str | None:
    """The response's only Set-Cookie header, or None."""
    values = response.headers.get_list("set-cookie")
    assert len(values) <= 1, values
    return values[0] if values else None


def cookie_value(header: str | None, name: str = "session") -> str:
    assert header is not None
    match = re.match(rf"{re.escape(name)}=([^;]*)", header)
    assert match is not None, header
    return match[1]


def count_calls(backend: SessionBackend, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the calls to the backend's storage coroutines."""
    calls: Counter[str] = Counter()

    def counting(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await method(*args, **kwargs)

        return counted

    for name in ("load", "save", "update", "create", "exists", "delete", "clear_expired", "open"):
        monkeypatch.setattr(backend, name, counting(name, getattr(backend, name)))
    return calls


# -- what Starlette's own SessionMiddleware tests show ----------------------------------------------------


async def test_session_persists_across_requests_and_clears(client: httpx.AsyncClient) -> None:
    """Data set in one request is there in the next; clearing empties it (Starlette's test_session)."""
    response = await client.get("/view")
    assert response.json() == {"session": {}}
    response = await client.post("/update", json={"some": "data"})
    assert response.json() == {"session": {"some": "data"}}
    max_age = re.search(r"; Max-Age=([0-9]+);", set_cookie(response) or "")
    assert max_age is not None and int(max_age[1]) == TWO_WEEKS
    response = await client.get("/view")
    assert response.json() == {"session": {"some": "data"}}
    response = await client.post("/clear")
    assert response.json() == {"session": {}}
    response = await client.get("/view")
    assert response.json() == {"session": {}}


async def test_expired_session_cookie_loads_empty(backend: SessionBackend, clock: Clock) -> None:
    """A cookie replayed after its session expired gets an empty session (Starlette's test_session_expires)."""
    async with client_for(make_app(backend, SessionConfig(max_age=1))) as client:
        response = await client.post("/update", json={"some": "data"})
        value = cookie_value(set_cookie(response))
    await let_expire(backend, clock, 1)
    async with client_for(make_app(backend, SessionConfig(max_age=1))) as client:
        response = await client.get("/view", headers={"Cookie": f"session={value}"})
    assert response.json() == {"session": {}}


async def test_secure_cookie_is_only_sent_back_over_https(backend: SessionBackend) -> None:
    """With cookie_secure the browser keeps the session over https only (Starlette's test_secure_session)."""
    app = make_app(backend, SessionConfig(cookie_secure=True))
    async with client_for(app, "https://testserver") as secure, client_for(app, "http://testserver") as insecure:
        response = await insecure.post("/update", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}
        assert "; Secure" in (set_cookie(response) or "")
        response = await insecure.get("/view")
        assert response.json() == {"session": {}}
        response = await secure.post("/update", json={"some": "data"})
        assert response.json() == {"session": {"some": "data"}}
        response = await secure.get("/view")
        assert response.json() == {"session": {"some": "data"}}
        response = await secure.post("/clear")
        response = await secure.get("/view")
        assert response.json() == {"session": {}}


async def test_cookie_path_follows_the_mounted_app(backend: SessionBackend) -> None:
    """cookie_path sets the cookie's Path (Starlette's test_session_cookie_subpath)."""
    second_app = make_app(backend, SessionConfig(cookie_path="/second_app"))
    app = Starlette(routes=[Mount("/second_app", app=second_app)])
    async with client_for(app) as client:
        response = await client.post("/second_app/update", json={"some": "data"})
        assert response.status_code == 200
        path = re.search(r"; Path=(\S+?);", set_cookie(response) or "")
        assert path is not None and path[1] == "/second_app"
        response = await client.get("/second_app/view")
        assert response.json() == {"session": {"some": "data"}}


async def test_cookie_domain_is_set(backend: SessionBackend) -> None:
    """cookie_domain sets the cookie's Domain (Starlette's test_domain_cookie)."""
    async with client_for(make_app(backend, SessionConfig(cookie_domain=".example.com"))) as client:
        response = await client.post("/update", json={"some": "data"})
    assert "; Domain=.example.com" in (set_cookie(response) or "")


async def test_invalid_session_cookie_gives_empty_session(client: httpx.AsyncClient) -> None:
    """A bogus or tampered cookie gives an empty session, not an error (Starlette's test_invalid_session_cookie)."""
    response = await client.post("/update", json={"some": "data"})
    real = cookie_value(set_cookie(response))
    middle = len(real) // 2
    tampered = real[:middle] + ("a" if real[middle] != "a" else "b") + real[middle + 1 :]
    client.cookies.clear()
    for bogus in ("invalid", tampered, KNOWN_LOOKING_KEY):
        response = await client.get("/view", headers={"Cookie": f"session={bogus}"})
        assert (response.status_code, response.json()) == (200, {"session": {}})
        assert set_cookie(response) is None


async def test_browser_session_cookie_has_no_max_age(backend: SessionBackend) -> None:
    """expire_at_browser_close gives a cookie without Max-Age or Expires (Starlette's test_session_cookie)."""
    async with client_for(make_app(backend, SessionConfig(expire_at_browser_close=True))) as client:
        response = await client.post("/update", json={"some": "data"})
        header = set_cookie(response) or ""
        assert "Max-Age" not in header and "Expires" not in header
        assert (await client.get("/view")).json() == {"session": {"some": "data"}}
        client.cookies.delete("session")
        assert (await client.get("/view")).json() == {"session": {}}


# -- cookie attributes and expiry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "present", "absent"),
    [
        ({}, ["; Path=/", "; HttpOnly", "; SameSite=Lax"], ["Secure", "Domain", "Partitioned"]),
        ({"cookie_httponly": False}, ["; SameSite=Lax"], ["HttpOnly"]),
        ({"cookie_samesite": "strict"}, ["; SameSite=Strict"], ["Lax"]),
        ({"cookie_samesite": None}, ["; HttpOnly"], ["SameSite"]),
        ({"cookie_samesite": "none", "cookie_secure": True}, ["; Secure", "; SameSite=None"], []),
        ({"cookie_secure": True, "cookie_partitioned": True}, ["; Secure", "; Partitioned"], []),
        ({"cookie_path": "/app", "cookie_domain": "example.com"}, ["; Path=/app", "; Domain=example.com"], []),
    ],
    ids=["defaults", "no-httponly", "strict", "no-samesite", "samesite-none", "partitioned", "path-domain"],
)
async def test_cookie_attributes_follow_the_config(
    backend: SessionBackend, settings: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    """Set-Cookie carries exactly the Path, Domain, Secure, HttpOnly, SameSite and Partitioned configured."""
    async with client_for(make_app(backend, SessionConfig(**settings)), "https://testserver") as client:
        header = set_cookie(await client.post("/update", json={"a": 1})) or ""
    for fragment in present:
        assert fragment in header
    for fragment in absent:
        assert fragment not in header


async def test_default_cookie_lasts_two_weeks(client: httpx.AsyncClient, clock: Clock) -> None:
    """Without set_expiry the cookie's Max-Age and Expires are the configured two weeks from now."""
    header = set_cookie(await client.post("/update", json={"a": 1})) or ""
    expires = format_datetime(clock.current + timedelta(seconds=TWO_WEEKS), usegmt=True)
    assert f"; Max-Age={TWO_WEEKS}; Expires={expires};" in header


async def test_custom_expiry_sets_max_age_and_expires(client: httpx.AsyncClient, clock: Clock) -> None:
    """set_expiry(300) in the app gives Max-Age=300 and Expires five minutes from now."""
    response = await client.post("/expiry/300")
    expires = format_datetime(clock.current + timedelta(seconds=300), usegmt=True)
    assert f"; Max-Age=300; Expires={expires};" in (set_cookie(response) or "")
    assert (await client.get("/view")).json() == {"session": {"expiry": "custom"}}


async def test_set_expiry_zero_gives_a_browser_session_cookie(client: httpx.AsyncClient) -> None:
    """set_expiry(0) makes that session's cookie last until the browser closes."""
    header = set_cookie(await client.post("/expiry/0")) or ""
    assert header.startswith("session=") and "Max-Age" not in header and "Expires" not in header
    assert (await client.get("/view")).json() == {"session": {"expiry": "custom"}}


async def test_custom_expiry_outranks_expire_at_browser_close(backend: SessionBackend, clock: Clock) -> None:
    """With expire_at_browser_close configured, set_expiry(300) still gives a cookie of five minutes."""
    async with client_for(make_app(backend, SessionConfig(expire_at_browser_close=True))) as client:
        response = await client.post("/expiry/300")
    expires = format_datetime(clock.current + timedelta(seconds=300), usegmt=True)
    assert f"; Max-Age=300; Expires={expires};" in (set_cookie(response) or "")


async def test_browser_rejected_configs_raise_improperly_configured() -> None:
    """__Host- and __Secure- names, SameSite=None and Partitioned without their requirements are refused."""
    bad: list[dict[str, Any]] = [
        {"cookie_name": "__Host-session"},
        {"cookie_name": "__Host-session", "cookie_secure": True, "cookie_domain": "example.com"},
        {"cookie_name": "__Host-session", "cookie_secure": True, "cookie_path": "/app"},
        {"cookie_name": "__Secure-session"},
        {"cookie_samesite": "none"},
        {"cookie_partitioned": True},
    ]
    for settings in bad:
        with pytest.raises(ImproperlyConfigured):
            SessionMiddleware(make_app(None), MemoryBackend(), config=SessionConfig(**settings))


async def test_host_prefixed_cookie_works_over_https(backend: SessionBackend) -> None:
    """A valid __Host- cookie (Secure, Path=/, no Domain) is set and sent back over https."""
    config = SessionConfig(cookie_name="__Host-session", cookie_secure=True, cookie_partitioned=True)
    async with client_for(make_app(backend, config), "https://testserver") as client:
        header = set_cookie(await client.post("/update", json={"a": 1})) or ""
        assert header.startswith("__Host-session=") and "; Path=/;" in header and "Domain" not in header
        assert "; Secure" in header and "; Partitioned" in header
        assert (await client.get("/view")).json() == {"session": {"a": 1}}


# -- when the middleware saves ---------------------------------------------------------------------------


async def test_request_without_cookie_makes_no_backend_call(
    backend: SessionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading, or not touching, a session without a cookie costs no backend call; a cookie costs one load."""
    async with client_for(make_app(backend)) as client:
        response = await client.post("/update", json={"a": 1})
        value = cookie_value(set_cookie(response))
        client.cookies.clear()
        calls = count_calls(backend, monkeypatch)
        assert (await client.get("/view")).json() == {"session": {}}
        assert (await client.get("/untouched")).status_code == 200
        assert sum(calls.values()) == 0
        response = await client.get("/view", headers={"Cookie": f"session={value}"})
        assert response.json() == {"session": {"a": 1}}
        assert calls == Counter(load=1)


async def test_unmodified_session_writes_nothing_and_sets_no_cookie(
    backend: SessionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a stored session loads it once, saves nothing and sends no Set-Cookie."""
    async with client_for(make_app(backend)) as client:
        await client.post("/update", json={"a": 1})
        calls = count_calls(backend, monkeypatch)
        response = await client.get("/view")
    assert response.json() == {"session": {"a": 1}}
    assert set_cookie(response) is None
    assert calls == Counter(load=1)


async def test_cleared_session_keeps_a_cookie_and_saves_empty(client: httpx.AsyncClient) -> None:
    """clear() keeps the session alive with no data, as in Django: it is saved and the cookie refreshed."""
    await client.post("/update", json={"a": 1})
    response = await client.post("/clear")
    header = set_cookie(response) or ""
    assert "Max-Age=0" not in header and f"Max-Age={TWO_WEEKS}" in header
    assert (await client.get("/view")).json() == {"session": {}}


async def test_flushed_session_deletes_data_and_expires_the_cookie(backend: SessionBackend) -> None:
    """flush() deletes the stored session and the cookie is expired with the same Path and Domain."""
    config = SessionConfig(cookie_path="/", cookie_domain="testserver.local")
    async with client_for(make_app(backend, config)) as client:
        created = set_cookie(await client.post("/update", json={"a": 1})) or ""
        key = cookie_value(created)
        response = await client.post("/flush", headers={"Cookie": f"session={key}"})
    assert response.json() == {"session": {}}
    expired = set_cookie(response) or ""
    assert expired.startswith('session=""; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT')
    assert created[created.index("; Path=") :] == expired[expired.index("; Path=") :]
    assert response.headers["vary"] == "Cookie"
    if backend.hashes_keys:
        assert await backend.load(key) is None


async def test_flush_without_cookie_sets_no_cookie(client: httpx.AsyncClient) -> None:
    """Flushing a session that never had a cookie has no cookie to expire."""
    response = await client.post("/flush")
    assert response.status_code == 200 and set_cookie(response) is None


async def test_cycle_key_sends_a_new_cookie(backend: SessionBackend) -> None:
    """cycle_key() keeps the data under a new key, sends it, and the old key no longer loads."""
    async with client_for(make_app(backend)) as client:
        old = cookie_value(set_cookie(await client.post("/update", json={"user": 42})))
        new = cookie_value(set_cookie(await client.post("/cycle")))
        assert new != old
        assert (await client.get("/view")).json() == {"session": {"user": 42}}
    if backend.hashes_keys:
        assert await backend.load(old) is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_error_response_saves_nothing(
    backend: SessionBackend, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """A response of status 500 or more writes nothing and sets no cookie, even for a modified session."""
    async with client_for(make_app(backend)) as client:
        await client.post("/update", json={"kept": True})
        calls = count_calls(backend, monkeypatch)
        response = await client.post(f"/status/{status}")
        assert response.status_code == status and set_cookie(response) is None
        assert calls["save"] == calls["update"] == calls["create"] == 0
        assert (await client.get("/view")).json() == {"session": {"kept": True}}


async def test_client_error_response_still_saves(client: httpx.AsyncClient) -> None:
    """Below 500 a modified session is saved, as in Django."""
    response = await client.post("/status/404")
    assert response.status_code == 404 and set_cookie(response) is not None
    assert (await client.get("/view")).json() == {"session": {"lost": True}}


async def test_app_exception_saves_nothing(backend: SessionBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the app raises, the 500 it turns into carries no cookie and nothing is written."""
    async with client_for(make_app(backend), raise_app_exceptions=False) as client:
        await client.post("/update", json={"kept": True})
        calls = count_calls(backend, monkeypatch)
        response = await client.post("/raise")
        assert response.status_code == 500 and set_cookie(response) is None
        assert calls["save"] == calls["update"] == calls["create"] == 0
        assert (await client.get("/view")).json() == {"session": {"kept": True}}


async def test_unserializable_value_is_an_app_error_not_a_503(backend: SessionBackend) -> None:
    """A value JSON cannot carry raises TypeError naming it (a 500, not a 503) and nothing is stored."""
    async with client_for(make_app(backend)) as client:
        with pytest.raises(TypeError, match="'when'"):
            await client.post("/unserializable")
    async with client_for(make_app(backend), raise_app_exceptions=False) as client:
        response = await client.post("/unserializable")
    assert response.status_code == 500 and set_cookie(response) is None


async def test_save_every_request_refreshes_the_cookie(backend: SessionBackend, clock: Clock) -> None:
    """With save_every_request a read-only request re-saves and re-sends the cookie with a later expiry."""
    async with client_for(make_app(backend, SessionConfig(save_every_request=True))) as client:
        assert set_cookie(await client.get("/untouched")) is None  # nothing to save for a new, empty session
        first = set_cookie(await client.post("/update", json={"a": 1})) or ""
        clock.advance(60)
        response = await client.get("/view")
        again = set_cookie(response) or ""
        assert response.json() == {"session": {"a": 1}}
        later = format_datetime(clock.current + timedelta(seconds=TWO_WEEKS), usegmt=True)
        assert f"Expires={later}" in again and f"Expires={later}" not in first


async def test_request_session_is_a_json_dumpable_dict(client: httpx.AsyncClient) -> None:
    """request.session is a dict that json.dumps serializes like any other."""
    response = await client.get("/json")
    assert response.status_code == 200 and json.loads(response.text) == {"n": 1}


async def test_hostile_cookie_headers_give_an_empty_session(client: httpx.AsyncClient) -> None:
    """Garbage, CR/LF, non-ASCII, huge or repeated session cookies give an empty session and a 200."""
    hostile = [
        b"session=",
        b'session=""',
        b"session=../../etc/passwd",
        b"session=abc\r\nSet-Cookie: evil=1",
        b"session=\xc3\xa9t\xc3\xa9" + b"a" * 30,
        b"session=\x00" * 3,
        b"session=" + b"a" * 100_000,
        b"; ".join(b"session=%d" % n for n in range(2000)),
        b"session",
        b";;;==;session==;",
    ]
    for header in hostile:
        response = await client.get("/view", headers=[(b"cookie", header)])
        assert (response.status_code, response.json()) == (200, {"session": {}}), header[:40]
        response = await client.post("/update", json={"fresh": 1}, headers=[(b"cookie", header)])
        assert response.status_code == 200, header[:40]
        assert "evil" not in (set_cookie(response) or "")
        client.cookies.clear()


# -- Vary: Cookie ------------------------------------------------------------------------------------------


async def test_vary_cookie_only_when_the_session_was_accessed(client: httpx.AsyncClient) -> None:
    """Reading the session adds Vary: Cookie; a response that never touched it gets none."""
    assert (await client.get("/view")).headers.get("vary") == "Cookie"
    assert "vary" not in (await client.get("/untouched")).headers


@pytest.mark.parametrize(
    ("existing", "merged"),
    [
        ("Accept-Encoding", "Accept-Encoding, Cookie"),
        ("cookie", "cookie"),
        ("Origin, Cookie", "Origin, Cookie"),
        ("*", "*"),
        ("X-Cookie-Thing", "X-Cookie-Thing, Cookie"),
    ],
)
async def test_vary_cookie_merges_into_an_existing_vary(client: httpx.AsyncClient, existing: str, merged: str) -> None:
    """Vary: Cookie joins the app's own Vary header once, and leaves Vary: * alone."""
    response = await client.get("/vary", params={"vary": existing})
    assert response.headers.get_list("vary") == [merged]


# -- failing backends --------------------------------------------------------------------------------------


class FailingBackend(MemoryBackend):
    """A memory backend whose store can be made to fail on load or on save."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_load = False
        self.fail_save = False

    async def _load(self, skey: str) -> str | None:
        if self.fail_load:
            raise ConnectionError("the store went away")
        return await super()._load(skey)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        if self.fail_save:
            raise ConnectionError("the store went away")
        await super()._save(skey, payload, expiry_age, must_create)

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        if self.fail_save:
            raise ConnectionError("the store went away")
        return await super()._update(skey, changes, expiry_age)


def unavailable_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("asession") and r.levelno == logging.ERROR and r.exc_info]


async def test_failing_load_answers_503_before_the_app_runs(caplog: pytest.LogCaptureFixture) -> None:
    """A store that fails to load gives a logged error with traceback and a 503; the app never runs."""
    ran: list[str] = []

    async def endpoint(request: Request) -> Response:
        ran.append("yes")
        return Response("secret app output")

    backend = FailingBackend()
    async with backend:
        app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(SessionMiddleware, backend=backend)])
        async with client_for(app) as client:
            response = await client.get("/")  # no cookie: no load, works
            assert response.status_code == 200
            backend.fail_load = True
            response = await client.get("/", headers={"Cookie": f"session={KNOWN_LOOKING_KEY}"})
    assert response.status_code == 503 and "session store" in response.text
    assert response.headers["retry-after"] and set_cookie(response) is None
    assert ran == ["yes"]
    [record] = unavailable_records(caplog)
    assert "ConnectionError" in logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]


async def test_failing_save_answers_503_instead_of_the_response(caplog: pytest.LogCaptureFixture) -> None:
    """A store that fails to save replaces the whole response by a logged 503: no app body, no cookie."""
    backend = FailingBackend()
    async with backend, client_for(make_app(backend)) as client:
        await client.post("/update", json={"a": 1})
        backend.fail_save = True
        response = await client.post("/update", json={"a": 2})
        assert response.status_code == 503 and "session store" in response.text
        assert '"session"' not in response.text
        assert set_cookie(response) is None
        backend.fail_save = False
        assert (await client.get("/view")).json() == {"session": {"a": 1}}
    assert len(unavailable_records(caplog)) == 1


async def test_failed_save_leaves_stored_data_untouched(
    server_backend: SessionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a server store fails mid-save the visitor gets a 503 and the previously stored data survives."""
    async with client_for(make_app(server_backend)) as client:
        await client.post("/update", json={"a": 1})

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr(server_backend, "_save", broken)
            patch.setattr(server_backend, "_update", broken)  # a loaded session is saved as an update
            response = await client.post("/update", json={"a": 2})
        assert response.status_code == 503
        assert (await client.get("/view")).json() == {"session": {"a": 1}}


# -- lifespan ----------------------------------------------------------------------------------------------


def unopened(kind: str, tmp_path: Path) -> SessionBackend:
    if kind == "sqlite":
        return backend_from_url(f"sqlite:///{tmp_path / 'lifespan.sqlite3'}")
    if kind == "signed-cookies":
        return SignedCookieBackend(SECRET)
    return MemoryBackend()


LIFESPAN_KINDS = ["memory", "sqlite", "signed-cookies"]


@pytest.mark.parametrize("kind", LIFESPAN_KINDS)
async def test_lifespan_opens_and_closes_an_unopened_backend(kind: str, tmp_path: Path) -> None:
    """An unopened backend is opened on startup (before the app's own startup) and closed on shutdown."""
    backend = unopened(kind, tmp_path)
    seen: list[BackendState] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append(backend.state)
        yield

    app = make_app(backend, lifespan=lifespan)
    async with LifespanManager(app):
        assert seen == [BackendState.OPEN]
        async with client_for(app) as client:
            await client.post("/update", json={"a": 1})
            assert (await client.get("/view")).json() == {"session": {"a": 1}}
    assert backend.state is BackendState.CLOSED


async def test_lifespan_leaves_a_caller_opened_backend_open(backend: SessionBackend) -> None:
    """A backend the caller opened is neither reopened nor closed by the middleware."""
    app = make_app(backend)
    async with LifespanManager(app):
        pass
    assert backend.is_open


async def test_lifespan_restart_reopens_the_backend_it_owns(tmp_path: Path) -> None:
    """A second startup of the same app reopens the backend the middleware closed on the first shutdown."""
    backend = unopened("sqlite", tmp_path)
    app = make_app(backend)
    async with LifespanManager(app):
        async with client_for(app) as client:
            await client.post("/update", json={"a": 1})
            cookies = client.cookies
    assert backend.state is BackendState.CLOSED
    async with LifespanManager(app):
        async with client_for(app) as client:
            client.cookies = cookies
            assert (await client.get("/view")).json() == {"session": {"a": 1}}
    assert backend.state is BackendState.CLOSED


async def test_lifespan_startup_fails_when_the_backend_cannot_open(caplog: pytest.LogCaptureFixture) -> None:
    """A backend that cannot open makes startup fail with lifespan.startup.failed naming the error."""

    class Unreachable(MemoryBackend):
        async def _open(self) -> None:
            raise ConnectionRefusedError("nobody listens")

    app = make_app(Unreachable())
    incoming: list[Message] = [{"type": "lifespan.startup"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(ConnectionRefusedError):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "nobody listens" in sent[0]["message"]
    assert unavailable_records(caplog)


async def test_backend_opens_on_first_request_without_lifespan() -> None:
    """When the server runs no lifespan, an unopened backend is opened by the first request, cookie or not."""
    backend = MemoryBackend()
    async with client_for(make_app(backend)) as client:
        assert backend.state is BackendState.UNOPENED
        assert (await client.get("/view")).json() == {"session": {}}
        assert backend.is_open  # so that a view calling cycle_key() or flush() finds it open
        await client.post("/update", json={"a": 1})
        assert backend.is_open
        assert (await client.get("/view")).json() == {"session": {"a": 1}}
    await backend.close()
    other = MemoryBackend()
    async with client_for(make_app(other)) as client:
        response = await client.get("/view", headers={"Cookie": f"session={KNOWN_LOOKING_KEY}"})
        assert response.json() == {"session": {}} and other.is_open
    await other.close()


async def test_backend_that_fails_to_close_still_lets_shutdown_complete(caplog: pytest.LogCaptureFixture) -> None:
    """An error while closing the backend on shutdown is logged and the shutdown still completes."""

    class Sticky(MemoryBackend):
        async def _close(self) -> None:
            raise OSError("cannot close")

    app = make_app(Sticky())
    async with LifespanManager(app):
        pass
    assert unavailable_records(caplog)


async def test_other_scope_types_pass_through_untouched() -> None:
    """Scopes other than http, websocket and lifespan reach the app unchanged, without a session."""
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    await SessionMiddleware(inner, MemoryBackend())({"type": "custom"}, _never_receive, _ignore_send)
    assert seen == [{"type": "custom"}]


async def _never_receive() -> Message:
    raise AssertionError("receive() was not expected")


async def _ignore_send(message: Message) -> None:
    raise AssertionError("send() was not expected")


async def test_default_backend_is_sqlite_in_the_working_directory(tmp_cwd: Path) -> None:
    """With no backend the middleware keeps sessions in ./sessions.sqlite3, opened on startup."""
    from asession.backends.db import DatabaseBackend

    app = make_app(None)
    async with LifespanManager(app):
        async with client_for(app) as client:
            await client.post("/update", json={"a": 1})
            assert (await client.get("/view")).json() == {"session": {"a": 1}}
    assert (tmp_cwd / "sessions.sqlite3").is_file()
    middleware = SessionMiddleware(make_app(None))
    assert isinstance(middleware.backend, DatabaseBackend)


# -- WebSockets ----------------------------------------------------------------------------------------------


async def websocket_session(
    app: ASGIApp, cookie: str | None, *, extensions: dict[str, Any] | None = None
) -> list[Message]:
    """Open /ws with ``cookie`` as the handshake's session cookie and return what the app sent."""
    headers = [(b"cookie", f"session={cookie}".encode())] if cookie else []
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": headers,
        "subprotocols": [],
        "extensions": extensions or {},
    }
    incoming: list[Message] = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def websocket_json(sent: list[Message]) -> Any:
    [text] = [m["text"] for m in sent if m["type"] == "websocket.send"]
    return json.loads(text)


async def test_websocket_session_loads_from_the_handshake_cookie(backend: SessionBackend) -> None:
    """The handshake's session cookie gives websocket.session the stored data."""
    app = make_app(backend)
    async with client_for(app) as client:
        key = cookie_value(set_cookie(await client.post("/update", json={"n": 5})))
    sent = await websocket_session(app, key)
    assert sent[0]["type"] == "websocket.accept"
    assert websocket_json(sent)["n"] == 5


async def test_websocket_session_save_persists_on_server_backends(server_backend: SessionBackend) -> None:
    """await websocket.session.save() stores the change under the same key for the next HTTP request."""
    app = make_app(server_backend)
    async with client_for(app) as client:
        key = cookie_value(set_cookie(await client.post("/update", json={"n": 5})))
        message = websocket_json(await websocket_session(app, key))
        assert message == {"n": 5, "key": key}
        assert (await client.get("/view")).json() == {"session": {"n": 6}}


async def test_websocket_revocations_are_events(memory_backend: SessionBackend) -> None:
    """A WebSocket endpoint that signs the user's other devices out reports each one to on_event, as a view does."""
    from asession import SessionEvent

    async def sign_out_others(websocket: WebSocket) -> None:
        await websocket.accept()
        session: Session = websocket.scope["session"]
        await websocket.send_json({"ended": await session.revoke_other_sessions()})
        await websocket.close()

    seen: list[SessionEvent] = []
    app = Starlette(
        routes=[WebSocketRoute("/ws", sign_out_others)],
        middleware=[Middleware(SessionMiddleware, backend=memory_backend, on_event=seen.append)],
    )
    devices = []
    for _ in range(2):
        session = Session(memory_backend)
        await session.login("carol")
        devices.append(session.session_key)
    assert websocket_json(await websocket_session(app, devices[0])) == {"ended": 1}
    assert [(event.type, event.session_id) for event in seen] == [
        ("revoked", memory_backend.handle(devices[1], "carol"))  # type: ignore[arg-type]
    ]


async def test_websocket_without_cookie_gets_a_new_session(backend: SessionBackend) -> None:
    """A handshake without cookie gets an empty session that the app can still use."""
    assert websocket_json(await websocket_session(make_app(backend), None))["n"] == 0


async def test_websocket_refused_when_the_store_fails(caplog: pytest.LogCaptureFixture) -> None:
    """A failing store refuses the handshake: a 503 where the server supports it, else a close; logged."""
    backend = FailingBackend()
    async with backend:
        backend.fail_load = True
        app = make_app(backend)
        sent = await websocket_session(app, KNOWN_LOOKING_KEY, extensions={"websocket.http.response": {}})
        assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
        assert sent[0]["status"] == 503
        sent = await websocket_session(app, KNOWN_LOOKING_KEY)
        assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1011)]
    assert len(unavailable_records(caplog)) == 1  # one burst of failures: logged once


# Starlette 1.x's TestClient prefers httpx2 and warns when it falls back to httpx, which the suite uses.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_websocket_through_starlette_test_client() -> None:
    """With Starlette's TestClient (its own loop, the backend opened by lifespan) the session reaches the socket."""
    from starlette.testclient import TestClient

    app = make_app(MemoryBackend())
    with TestClient(app) as client:
        client.post("/update", json={"n": 41})
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_json()["n"] == 41
        assert client.get("/view").json() == {"session": {"n": 42}}
