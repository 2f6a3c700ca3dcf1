"""The small Starlette app several test modules drive: a per-session counter behind SessionMiddleware."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session, SessionMiddleware
from asession.backends.base import SessionBackend


async def _count(request: Request) -> JSONResponse:
    value = request.session.get("n", 0) + 1
    request.session["n"] = value
    return JSONResponse({"n": value})


async def _read(request: Request) -> JSONResponse:
    return JSONResponse({"n": request.session.get("n")})


async def _logout(request: Request) -> JSONResponse:
    session: Session = request.scope["session"]
    await session.flush()
    return JSONResponse({})


def counter_app(backend: SessionBackend) -> Starlette:
    """``POST /count`` increments ``n``, ``GET /read`` returns it, ``/logout`` flushes the session."""
    app = Starlette(
        routes=[Route("/count", _count, methods=["POST"]), Route("/read", _read), Route("/logout", _logout)]
    )
    app.add_middleware(SessionMiddleware, backend=backend)
    return app


def client_for(app: Starlette) -> httpx.AsyncClient:
    """An httpx client calling ``app`` in-process, on the test's event loop."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
