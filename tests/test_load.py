"""Load through the middleware on every server-side backend: no write is lost, and the last save wins.

Many clients, each on its own session, increment a counter concurrently; afterwards every counter is exact.
Two requests of one session that run at the same time each save what they read plus their own change, so
the later save replaces the earlier one: asession does not merge or lock sessions, as Django does not.
``benchmarks/load_without_loss.py`` runs the full size (64 clients x 1000 writes).
"""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import SessionMiddleware
from asession.backends.base import SessionBackend

CLIENTS = 16
WRITES = 50


class Rendezvous:
    """Hold ``parties`` requests until all of them have arrived (asyncio.Barrier needs Python 3.11)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), timeout=10)


def make_app(backend: SessionBackend, rendezvous: Rendezvous | None = None) -> Starlette:
    async def count(request: Request) -> JSONResponse:
        value = request.session.get("n", 0)
        await asyncio.sleep(0)  # let the other clients' requests interleave with this one
        request.session["n"] = value + 1
        return JSONResponse({"n": value + 1})

    async def count_together(request: Request) -> JSONResponse:
        value = request.session.get("n", 0)
        assert rendezvous is not None
        await rendezvous.wait()  # every parallel request has read the same value before any writes
        request.session["n"] = value + 1
        return JSONResponse({"n": value + 1})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"n": request.session.get("n")})

    app = Starlette(
        routes=[
            Route("/count", count, methods=["POST"]),
            Route("/count-together", count_together, methods=["POST"]),
            Route("/read", read),
        ]
    )
    app.add_middleware(SessionMiddleware, backend=backend)
    return app


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_concurrent_clients_lose_no_write(server_backend: SessionBackend) -> None:
    """Concurrent clients each incrementing their own session end with every counter exact."""
    app = make_app(server_backend)

    async def one_client() -> str:
        async with client_for(app) as client:
            for expected in range(1, WRITES + 1):
                response = await client.post("/count")
                assert (response.status_code, response.json()) == (200, {"n": expected})
            key = client.cookies["session"]
            assert (await client.get("/read")).json() == {"n": WRITES}
            return key

    session_keys = await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    assert len(set(session_keys)) == CLIENTS
    for key in session_keys:
        assert await server_backend.load(key) == {"n": WRITES}


async def test_parallel_requests_of_one_session_last_save_wins(server_backend: SessionBackend) -> None:
    """Two requests of one session that both read before either saves end with one increment, not two."""
    rendezvous = Rendezvous(2)
    app = make_app(server_backend, rendezvous)
    async with client_for(app) as client:
        assert (await client.post("/count")).json() == {"n": 1}
        first, second = await asyncio.gather(client.post("/count-together"), client.post("/count-together"))
        assert (first.status_code, second.status_code) == (200, 200)
        # Both read n=1 and both saved n=2: the later save replaced the earlier one, one increment was lost.
        assert first.json() == second.json() == {"n": 2}
        assert first.cookies["session"] == second.cookies["session"] == client.cookies["session"]
        assert await server_backend.load(client.cookies["session"]) == {"n": 2}
        assert (await client.get("/read")).json() == {"n": 2}


async def test_sequential_requests_of_one_session_all_count(server_backend: SessionBackend) -> None:
    """Requests of one session that do not overlap each see the previous save: nothing is lost."""
    app = make_app(server_backend)
    async with client_for(app) as client:
        for expected in range(1, 11):
            assert (await client.post("/count")).json() == {"n": expected}
        assert await server_backend.load(client.cookies["session"]) == {"n": 10}
