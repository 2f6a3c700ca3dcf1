"""The app ``benchmarks/soak.py`` runs in two uvicorn processes: a per-session counter behind SessionMiddleware.

``uvicorn --factory benchmarks.soak_app:create_app``, configured by the environment the soak sets:

``SOAK_BACKEND_URL``    the backend URL (through the fault proxy for Redis, PostgreSQL and memcached)
``SOAK_TABLE``          the PostgreSQL/SQLite table (``DatabaseBackend(table=...)``), when set
``SOAK_STORE_TIMEOUT``  seconds, passed as ``SessionConfig(store_timeout=...)`` when this asession has that field
``SOAK_MAX_AGE``        session lifetime in seconds (default 900), so that whatever the soak leaves expires
``SOAK_PARENT_PID``     the soak's pid: if that process goes away, this one stops itself

Endpoints (JSON, every answer carries the serving ``pid``):

``GET /healthz``  no session; says whether ``store_timeout`` is in force
``POST /start``   ``{"id": ...}``: a new session holding that id and ``n = 0``
``POST /incr``    ``n + 1`` stored in the session; answers the session's id and the new ``n``
``GET /read``     the session's id and ``n``, nothing saved
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import Session, SessionConfig, SessionMiddleware
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend

__all__ = ["create_app", "session_config"]

DEFAULT_MAX_AGE = 900


def _session(request: Request) -> Session:
    session: Session = request.scope["session"]
    return session


def _answer(session: Session) -> JSONResponse:
    return JSONResponse({"pid": os.getpid(), "id": session.get("id"), "n": session.get("n")})


async def start(request: Request) -> JSONResponse:
    ident = (await request.json())["id"]
    session = _session(request)
    session["id"] = ident
    session["n"] = 0
    return _answer(session)


async def incr(request: Request) -> JSONResponse:
    session = _session(request)
    session["n"] = (session.get("n") or 0) + 1
    return _answer(session)


async def read(request: Request) -> JSONResponse:
    return _answer(_session(request))


def session_config() -> SessionConfig:
    """The config from the environment; ``store_timeout`` only if SessionConfig has the field."""
    options: dict[str, Any] = {"max_age": int(os.environ.get("SOAK_MAX_AGE", DEFAULT_MAX_AGE))}
    timeout = os.environ.get("SOAK_STORE_TIMEOUT")
    if timeout and "store_timeout" in SessionConfig.__dataclass_fields__:
        options["store_timeout"] = float(timeout)
    return SessionConfig(**options)


def _backend() -> SessionBackend:
    url = os.environ["SOAK_BACKEND_URL"]
    table = os.environ.get("SOAK_TABLE")
    if table:
        from asession.backends.db import DatabaseBackend

        return DatabaseBackend(url, table=table)
    return backend_from_url(url)


def _watch_parent(parent: int) -> None:
    """Stop this process (SIGTERM, then exit hard) once ``parent`` is no longer its parent."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(1)


def create_app() -> Starlette:
    """The counter app on ``$SOAK_BACKEND_URL``; the backend opens on lifespan startup."""
    config = session_config()
    store_timeout = getattr(config, "store_timeout", None)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"pid": os.getpid(), "store_timeout": store_timeout})

    parent = os.environ.get("SOAK_PARENT_PID")
    if parent:
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()
    routes = [
        Route("/healthz", healthz),
        Route("/start", start, methods=["POST"]),
        Route("/incr", incr, methods=["POST"]),
        Route("/read", read),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=_backend(), config=config)])
