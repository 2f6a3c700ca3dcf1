"""The FastAPI dependency that hands an endpoint the request's loaded session."""

from __future__ import annotations

from typing import Annotated

from starlette.requests import HTTPConnection

from asession.exceptions import ImproperlyConfigured
from asession.session import Session

try:
    from fastapi import Depends
except ImportError as exc:  # pragma: no cover - exercised by tests/test_optional_extras.py in a subprocess
    raise ImportError("asession.fastapi needs FastAPI. Install it with `pip install 'asession[fastapi]'`.") from exc

__all__ = ["SessionDep", "get_session"]


async def get_session(connection: HTTPConnection) -> Session:
    """Return the request's (or WebSocket's) session, loaded.

    Raises :class:`ImproperlyConfigured` when :class:`~asession.SessionMiddleware` is not installed.
    """
    session = connection.scope.get("session")
    if not isinstance(session, Session):
        raise ImproperlyConfigured(
            "No asession Session on this request: add SessionMiddleware to the app, e.g. "
            "`app.add_middleware(SessionMiddleware, backend=...)`."
        )
    await session.load()
    return session


SessionDep = Annotated[Session, Depends(get_session)]
