"""Concurrent requests of one session (issue #11): merged per key, never resurrected, on every server store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asession import Session, SessionMiddleware
from asession.backends.base import SessionBackend

COOKIE = "session"


class Gate:
    """Holds every request that reaches it until ``size`` requests have, so they overlap for real.

    ``ended`` is set by a request that flushed or rotated the session, for requests told to wait for it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.arrived = 0
        self.open = asyncio.Event()
        self.ended = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.size:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), 10)


def session_of(request: Request) -> Session:
    session = request.session
    assert isinstance(session, Session)
    return session


def make_app(backend: SessionBackend, gate: Gate | None = None) -> Starlette:
    async def held(request: Request) -> None:
        if gate is not None and request.query_params.get("gate"):
            await gate.wait()
        if gate is not None and request.query_params.get("after_end"):
            await asyncio.wait_for(gate.ended.wait(), 10)

    def ended() -> None:
        if gate is not None:
            gate.ended.set()

    async def view(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    async def start(request: Request) -> JSONResponse:
        request.session.update(await request.json())
        return JSONResponse(dict(request.session))

    async def set_key(request: Request) -> Response:
        session = session_of(request)
        session.get("anything")  # loaded, read, then held while the others load too
        await held(request)
        session[request.path_params["name"]] = request.path_params["value"]
        return Response("set")

    async def delete_key(request: Request) -> Response:
        await held(request)
        del request.session[request.path_params["name"]]
        return Response("deleted")

    async def append(request: Request) -> Response:
        await held(request)
        request.session["cart"].append(request.path_params["item"])  # no mark_modified()
        return Response("appended")

    async def flush(request: Request) -> Response:
        await held(request)
        await session_of(request).flush()
        ended()
        return Response("flushed")

    async def cycle(request: Request) -> Response:
        await held(request)
        await session_of(request).cycle_key()
        ended()
        return Response("cycled")

    routes = [
        Route("/view", view),
        Route("/start", start, methods=["POST"]),
        Route("/set/{name}/{value}", set_key, methods=["POST"]),
        Route("/delete/{name}", delete_key, methods=["POST"]),
        Route("/append/{item}", append, methods=["POST"]),
        Route("/flush", flush, methods=["POST"]),
        Route("/cycle", cycle, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend)])


Send = Callable[..., Awaitable[httpx.Response]]


async def started(client: httpx.AsyncClient, data: dict[str, Any]) -> str:
    response = await client.post("/start", json=data)
    key = response.cookies.get(COOKIE)
    assert response.status_code == 200 and key
    return key


def with_key(client: httpx.AsyncClient, key: str) -> Send:
    async def send(path: str) -> httpx.Response:
        return await client.post(path, headers={"Cookie": f"{COOKIE}={key}"})

    return send


async def view(client: httpx.AsyncClient, key: str) -> Any:
    return (await client.get("/view", headers={"Cookie": f"{COOKIE}={key}"})).json()


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_24_overlapping_requests_each_keep_their_key(server_backend: SessionBackend) -> None:
    """Twenty-four requests that all loaded the session before any saved: every one of their keys is stored."""
    gate = Gate(24)
    async with client_for(make_app(server_backend, gate)) as client:
        key = await started(client, {"user": "alice"})
        send = with_key(client, key)
        responses = await asyncio.gather(*(send(f"/set/k{i}/{i}?gate=1") for i in range(24)))
        assert [r.status_code for r in responses] == [200] * 24
        assert await view(client, key) == {"user": "alice", **{f"k{i}": str(i) for i in range(24)}}


async def test_parallel_delete_and_set_both_take_effect(server_backend: SessionBackend) -> None:
    """One request deletes a key while another sets a different one: both changes are stored."""
    gate = Gate(2)
    async with client_for(make_app(server_backend, gate)) as client:
        key = await started(client, {"old": 1, "keep": 1})
        send = with_key(client, key)
        deleted, added = await asyncio.gather(send("/delete/old?gate=1"), send("/set/new/2?gate=1"))
        assert deleted.status_code == added.status_code == 200
        assert await view(client, key) == {"keep": 1, "new": "2"}


async def test_in_place_append_without_mark_modified_is_saved(server_backend: SessionBackend) -> None:
    """Appending to a nested list read from the session is saved without mark_modified()."""
    async with client_for(make_app(server_backend)) as client:
        key = await started(client, {"cart": ["a"], "other": 1})
        response = await with_key(client, key)("/append/b")
        assert response.status_code == 200 and response.cookies.get(COOKIE) == key
        assert await view(client, key) == {"cart": ["a", "b"], "other": 1}


async def test_parallel_in_place_appends_merge_per_key(server_backend: SessionBackend) -> None:
    """An in-place change of one key and a set of another by a parallel request both survive."""
    gate = Gate(2)
    async with client_for(make_app(server_backend, gate)) as client:
        key = await started(client, {"cart": ["a"]})
        send = with_key(client, key)
        await asyncio.gather(send("/append/b?gate=1"), send("/set/seen/yes?gate=1"))
        assert await view(client, key) == {"cart": ["a", "b"], "seen": "yes"}


@pytest.mark.parametrize("ender", ["/flush", "/cycle"])
async def test_request_racing_a_logout_or_rotation_gets_400(
    server_backend: SessionBackend, ender: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A save that finds its session flushed or rotated by a parallel request answers 400 and restores nothing."""
    gate = Gate(2)
    async with client_for(make_app(server_backend, gate)) as client:
        key = await started(client, {"user": "alice"})
        send = with_key(client, key)
        with caplog.at_level(logging.INFO, logger="asession.middleware"):
            # Both load the session (the gate); the writer saves only after the ender has ended it.
            ended, late = await asyncio.gather(send(f"{ender}?gate=1"), send("/set/late/1?gate=1&after_end=1"))
        assert ended.status_code == 200
        new_key = ended.cookies.get(COOKIE)
        assert late.status_code == 400
        assert late.headers["content-type"].startswith("text/plain")
        assert late.headers["cache-control"] == "no-store"
        expired = late.headers["set-cookie"]
        assert expired.startswith(f"{COOKIE}=") and "Max-Age=0" in expired and key not in expired
        assert any("answering 400" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        assert await view(client, key) == {}  # the old key stays dead
        if ender == "/cycle":
            assert new_key and new_key != key
            assert await view(client, new_key) == {"user": "alice"}
        assert not await server_backend.exists(key)
