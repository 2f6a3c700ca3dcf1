"""The FastAPI dependency: ``get_session`` and ``SessionDep`` through FastAPI's own routing and injection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, WebSocket

from asession import ImproperlyConfigured, Session, SessionMiddleware
from asession.backends.base import SessionBackend
from asession.fastapi import SessionDep, get_session


async def current_user(session: Annotated[Session, Depends(get_session)]) -> str | None:
    """A sub-dependency, module-level so FastAPI can resolve the string annotations that refer to it."""
    user: str | None = session.get("user")
    return user


def make_app(backend: SessionBackend | None) -> FastAPI:
    app = FastAPI()

    @app.post("/count")
    async def count(session: SessionDep) -> dict[str, int]:
        session["visits"] = session.get("visits", 0) + 1
        return {"visits": session["visits"]}

    @app.get("/same")
    async def same(request: Request, session: SessionDep) -> dict[str, bool]:
        return {"same": session is request.scope["session"], "is_session": isinstance(session, Session)}

    @app.post("/login/{name}")
    async def login(name: str, session: SessionDep) -> dict[str, str]:
        await session.cycle_key()
        session["user"] = name
        return {"user": name}

    @app.get("/me")
    async def me(user: Annotated[str | None, Depends(current_user)]) -> dict[str, Any]:
        return {"user": user}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        await websocket.send_json({"visits": session.get("visits")})
        await websocket.close()

    if backend is not None:
        app.add_middleware(SessionMiddleware, backend=backend)
    return app


@pytest.fixture
async def client(backend: SessionBackend) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_session_dep_counter_persists_across_requests(client: httpx.AsyncClient) -> None:
    """A counter kept through SessionDep goes up by one per request of the same visitor."""
    assert [(await client.post("/count")).json()["visits"] for _ in range(3)] == [1, 2, 3]
    client.cookies.clear()
    assert (await client.post("/count")).json() == {"visits": 1}


async def test_session_dep_is_the_request_session(client: httpx.AsyncClient) -> None:
    """The injected session is the middleware's Session at request.scope['session']."""
    assert (await client.get("/same")).json() == {"same": True, "is_session": True}


async def test_get_session_works_in_sub_dependencies(client: httpx.AsyncClient) -> None:
    """A dependency that itself depends on get_session sees what an endpoint stored after cycle_key()."""
    assert (await client.get("/me")).json() == {"user": None}
    response = await client.post("/login/ada")
    assert response.json() == {"user": "ada"} and "set-cookie" in response.headers
    assert (await client.get("/me")).json() == {"user": "ada"}


async def test_session_dep_reaches_websocket_endpoints(backend: SessionBackend) -> None:
    """A FastAPI WebSocket endpoint gets the handshake's session through SessionDep."""
    from tests.test_middleware import websocket_json, websocket_session

    app = make_app(backend)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.post("/count")
        await client.post("/count")
        key = client.cookies["session"]
    assert websocket_json(await websocket_session(app, key)) == {"visits": 2}


async def test_get_session_without_middleware_raises_improperly_configured() -> None:
    """Without SessionMiddleware the dependency raises ImproperlyConfigured saying to add it."""
    transport = httpx.ASGITransport(app=make_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(ImproperlyConfigured, match="add SessionMiddleware"):
            await client.post("/count")
