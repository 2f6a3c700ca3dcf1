"""README-style usage that mypy --strict must accept (never run, only type-checked)."""

from __future__ import annotations

from datetime import timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session, SessionConfig, SessionMiddleware
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend
from asession.backends.db import DatabaseBackend
from asession.backends.memory import MemoryBackend


async def homepage(request: Request) -> JSONResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JSONResponse({"visits": request.session["visits"]})


app = Starlette(
    routes=[Route("/", homepage)],
    middleware=[Middleware(SessionMiddleware, backend=DatabaseBackend("sessions.db"))],
)


async def direct_use() -> str | None:
    backend: SessionBackend = backend_from_url("memory://")
    async with MemoryBackend() as memory:
        session = Session(memory, config=SessionConfig(max_age=3600))
        session["cat"] = "dog"
        session.set_expiry(timedelta(minutes=5))
        await session.save()
        again = Session(memory, session.session_key)
        await again.load()
        value: str | None = await again.aget("cat")
        await again.cycle_key()
        await again.flush()
    del backend
    return value
