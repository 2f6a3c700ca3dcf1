"""SessionMiddleware: pure ASGI, a drop-in for Starlette's own ``SessionMiddleware``.

Per request: read the cookie, load the session before the app runs (no backend call without a cookie),
put it at ``scope["session"]``, and when the app starts its response save it if needed and add
``Set-Cookie`` and ``Vary: Cookie``. A failing backend turns into a logged error and a 503, sent before
anything of the app's response.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asession import cookies
from asession.backends.base import BackendState, SessionBackend
from asession.config import SessionConfig
from asession.session import Session

__all__ = ["DEFAULT_SQLITE_PATH", "SessionMiddleware"]

logger = logging.getLogger(__name__)

#: Where the embedded default backend keeps its sessions when no backend is given.
DEFAULT_SQLITE_PATH = "sessions.sqlite3"

_UNAVAILABLE_BODY = b"Service Unavailable: the session store could not be reached. Please retry shortly."
_UNAVAILABLE_START: Message = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
        (b"retry-after", b"5"),
        (b"cache-control", b"no-store"),
    ],
}
_UNAVAILABLE_BODY_MESSAGE: Message = {"type": "http.response.body", "body": _UNAVAILABLE_BODY, "more_body": False}


class SessionMiddleware:
    """Attach a :class:`~asession.Session` to every HTTP and WebSocket request.

    ``backend`` defaults to SQLite in ``./sessions.sqlite3``. A backend handed over unopened is opened
    on ASGI lifespan startup (or on the first request when the server runs no lifespan) and closed on
    shutdown; a backend the caller opened is left for the caller to close.
    """

    def __init__(self, app: ASGIApp, backend: SessionBackend | None = None, *, config: SessionConfig | None = None):
        if backend is None:
            from asession.backends.db import DatabaseBackend

            backend = DatabaseBackend(DEFAULT_SQLITE_PATH)
        self.app = app
        self.backend = backend
        self.config = config if config is not None else SessionConfig()
        self._opened_here = False
        self._open_lock = asyncio.Lock()
        self._cookie_prefix = f"{self.config.cookie_name}=".encode("latin-1")
        self._cookie_attrs = cookies.attributes(self.config)
        self._expired_cookie = cookies.expired_cookie(self.config.cookie_name, self._cookie_attrs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "http":
            await self._http(scope, receive, send)
        elif scope_type == "websocket":
            await self._websocket(scope, receive, send)
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- backend life cycle -------------------------------------------------------------------------

    async def _open_backend(self) -> None:
        async with self._open_lock:
            if self.backend.state is BackendState.UNOPENED:
                await self.backend.open()
                self._opened_here = True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._open_backend()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and self._opened_here:
                self._opened_here = False
                await self.backend.close()
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    # -- requests -----------------------------------------------------------------------------------

    async def _load(self, scope: Scope) -> tuple[Session, bool]:
        """Build the request's session; load it when the request carries a well-formed cookie."""
        if not self.backend.is_open:
            await self._open_backend()
        cookie = cookies.read_cookie(scope["headers"], self._cookie_prefix)
        session = Session(self.backend, cookie, self.config)
        if session.session_key is not None:
            await session.load()
        return session, cookie is not None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            session, had_cookie = await self._load(scope)
        except Exception:
            logger.exception("Could not load the session from %r; answering 503.", self.backend)
            await send(_UNAVAILABLE_START)
            await send(_UNAVAILABLE_BODY_MESSAGE)
            return
        scope["session"] = session
        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's response was replaced by a 503; drop the rest of it
            if message["type"] == "http.response.start":
                try:
                    headers = await self._commit(session, had_cookie, message["status"])
                except Exception:
                    logger.exception("Could not save the session to %r; answering 503.", self.backend)
                    replaced = True
                    await send(_UNAVAILABLE_START)
                    await send(_UNAVAILABLE_BODY_MESSAGE)
                    return
                if headers:
                    message["headers"] = _merge_headers(message.get("headers", ()), headers)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _commit(self, session: Session, had_cookie: bool, status: int) -> list[tuple[bytes, bytes]]:
        """Save the session if the response calls for it; return the headers to add."""
        headers: list[tuple[bytes, bytes]] = []
        if session.session_key is None and not dict.__len__(session):
            # Nothing to keep. A flushed session had its data deleted by flush(); expire its cookie.
            if session.modified and had_cookie:
                headers.append((b"set-cookie", self._expired_cookie))
                headers.append((b"vary", b"Cookie"))
            elif session.accessed:
                headers.append((b"vary", b"Cookie"))
            return headers
        if session.accessed:
            headers.append((b"vary", b"Cookie"))
        if (session.modified or self.config.save_every_request) and status < 500:
            await session.save()
            headers.append((b"set-cookie", self._session_cookie(session)))
        return headers

    def _session_cookie(self, session: Session) -> bytes:
        key = session.session_key
        assert key is not None  # save() always leaves a key
        if session.get_expire_at_browser_close():
            return cookies.session_cookie(self.config.cookie_name, key, self._cookie_attrs, None, None)
        return cookies.session_cookie(
            self.config.cookie_name,
            key,
            self._cookie_attrs,
            max(session.get_expiry_age(), 0),
            session.get_expiry_date(),
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            session, _ = await self._load(scope)
        except Exception:
            logger.exception("Could not load the session from %r; closing the WebSocket.", self.backend)
            await send({"type": "websocket.close", "code": 1011, "reason": "session store unavailable"})
            return
        scope["session"] = session
        await self.app(scope, receive, send)


def _merge_headers(
    existing: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...], added: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Append ``added`` to the response headers, folding ``Vary: Cookie`` into an existing Vary header."""
    merged = list(existing)
    for name, value in added:
        if name == b"vary":
            for index, (existing_name, existing_value) in enumerate(merged):
                if existing_name.lower() == b"vary":
                    if b"cookie" not in existing_value.lower() and existing_value.strip() != b"*":
                        merged[index] = (existing_name, existing_value + b", Cookie")
                    break
            else:
                merged.append((name, value))
        else:
            merged.append((name, value))
    return merged
