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

from asession import cookies, events
from asession.backends.base import BackendState, SessionBackend
from asession.config import SessionConfig
from asession.deadline import bounded
from asession.exceptions import BackendUnavailableError, SessionError, UpdateError
from asession.failure_log import FailureLog
from asession.session import Session

__all__ = ["DEFAULT_SQLITE_PATH", "SessionMiddleware"]

logger = logging.getLogger(__name__)

#: Where the embedded default backend keeps its sessions when no backend is given.
DEFAULT_SQLITE_PATH = "sessions.sqlite3"

Headers = list[tuple[bytes, bytes]]

_UNAVAILABLE_BODY = b"Service Unavailable: the session store could not be reached. Please retry shortly."
_UNAVAILABLE_HEADERS: Headers = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
    (b"retry-after", b"5"),
    (b"cache-control", b"no-store"),
]
_INTERRUPTED_BODY = (
    b"Bad Request: this session ended while the request was running (signed out in another tab, for example). "
    b"Nothing was saved; please sign in or start again."
)
_VARY = (b"vary", b"Cookie")
_VARY_ONLY: Headers = [_VARY]


class SessionMiddleware:
    """Attach a :class:`~asession.Session` to every HTTP and WebSocket request.

    ``backend`` defaults to SQLite in ``./sessions.sqlite3``. A backend handed over unopened is opened
    on ASGI lifespan startup (or by the first request when the server runs no lifespan) and closed on
    shutdown; a backend the caller opened is left for the caller to close.

    The session is saved when the app starts its response, if it was modified (or always with
    ``save_every_request``) and the status is below 500. Every store call is bounded by
    ``config.store_timeout``. A store that fails or times out on load or save answers 503; the first
    failure of a burst is logged with its traceback on ``asession.middleware``, the others within
    10 s are counted into the next message (:mod:`asession.failure_log`). Data the store refuses because of
    what the app put in the session (``TypeError`` for values JSON cannot carry, :class:`SessionError`
    for a session over the size limit) is a bug in the app: it propagates like any exception raised by
    the app, and nothing is written.
    """

    def __init__(
        self,
        app: ASGIApp,
        backend: SessionBackend | None = None,
        *,
        config: SessionConfig | None = None,
        on_event: events.Listener | None = None,
    ) -> None:
        if backend is None:
            from asession.backends.db import DatabaseBackend

            backend = DatabaseBackend(DEFAULT_SQLITE_PATH)
        self.app = app
        self.backend = backend
        self.config = config if config is not None else SessionConfig()
        # Set once this middleware opens the backend: it then closes it on shutdown and may reopen it
        # when the lifespan starts again.
        self._owns_backend = False
        self._open_lock = asyncio.Lock()
        self._failures = FailureLog(logger)
        self._save_every_request = self.config.save_every_request
        self._cookie_name = self.config.cookie_name
        self._cookie_prefix = f"{self.config.cookie_name}=".encode("latin-1")
        self._cookie_attrs = cookies.attributes(self.config)
        self._expired_cookie = cookies.expired_cookie(self.config.cookie_name, self._cookie_attrs)
        self.on_event = on_event
        self._listener = None if on_event is None else events.dispatcher(on_event)
        self._touches = self.config.idle_timeout is not None

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
            state = self.backend.state
            if state is BackendState.UNOPENED or (state is BackendState.CLOSED and self._owns_backend):
                await bounded(self.backend.open(), self.config.store_timeout, self.backend)
                self._owns_backend = True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        open_error: Exception | None = None
        answered = False

        async def receive_wrapper() -> Message:
            nonlocal open_error
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Open before the app starts up, so its own startup code can use the backend.
                try:
                    await self._open_backend()
                except Exception as exc:
                    open_error = exc
                    raise
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal answered
            message_type = message["type"]
            if message_type in ("lifespan.startup.complete", "lifespan.startup.failed"):
                answered = True
            elif message_type in ("lifespan.shutdown.complete", "lifespan.shutdown.failed") and self._owns_backend:
                try:
                    await self.backend.close()
                except Exception:
                    logger.exception("Could not close %r on shutdown.", self.backend)
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            if exc is open_error and not answered:
                logger.error("Could not open %r on startup.", self.backend, exc_info=exc)
                await send({"type": "lifespan.startup.failed", "message": f"Could not open {self.backend!r}: {exc!r}"})
            raise

    # -- requests -----------------------------------------------------------------------------------

    async def _prepare(self, session: Session, what: str) -> bool:
        """Open the backend if nobody has (no lifespan) and load the session; ``False`` when the store failed.

        A request without a cookie needs the backend only if the app calls the store, so a failure to
        open it is logged and the request goes on; with a cookie it means a 503.
        """
        try:
            if not self.backend.is_open:
                await self._open_backend()
            if session.session_key is None:
                return True
            await session.load()
        except Exception as exc:
            if session.session_key is None:
                self._failures.failure("Could not open %r; the request goes on without it.", self.backend, exc=exc)
                return True
            self._failures.failure("Could not load the session from %r; %s.", self.backend, what, exc=exc)
            return False
        if self._failures.failing:
            self._failures.recovered(self.backend)
        return True

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        cookie = cookies.read_cookie(scope["headers"], self._cookie_prefix)
        backend = self.backend
        session = Session(backend, cookie, self.config)
        session._headers = scope["headers"]
        listener = session._listener = self._listener
        if backend.state is not BackendState.OPEN:
            if not await self._prepare(session, "answering 503"):
                await self._unavailable(send, listener)
                return
        elif session.session_key is not None:  # a request without a (well-formed) cookie skips the store
            # _prepare() inline: this runs on every request with a cookie.
            try:
                await session.load()
            except Exception as exc:
                self._failures.failure("Could not load the session from %r; answering 503.", backend, exc=exc)
                await self._unavailable(send, listener)
                return
            if self._failures.failing:
                self._failures.recovered(backend)
        scope["session"] = session
        had_cookie = cookie is not None
        save_every_request = self._save_every_request
        replaced = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's response was replaced by a 503; drop the rest of it
            if message["type"] == "http.response.start":
                if session.modified or save_every_request or session.detect_changes():
                    try:
                        headers = await self._commit(session, had_cookie, message["status"])
                    except UpdateError:
                        # Saving would bring back a session that a parallel request ended: Django's
                        # SessionInterrupted. The visitor gets a 400 and loses the cookie; nothing is written.
                        logger.info(
                            "The session ended during the request (flushed, rotated or revoked); answering 400."
                        )
                        replaced = True
                        if listener is not None:
                            await listener("interrupted", session._handle(), session.user_id)
                        await self._send_interrupted(send)
                        return
                    except Exception as exc:
                        if not _is_store_failure(exc):
                            raise
                        self._failures.failure(
                            "Could not save the session to %r; answering 503.", self.backend, exc=exc
                        )
                        replaced = True
                        await self._unavailable(send, listener)
                        return
                    if self._failures.failing:
                        self._failures.recovered(self.backend)
                    if headers:
                        message["headers"] = _merge_headers(message.get("headers", ()), headers)
                elif self._touches and session.needs_touch() and message["status"] < 500:
                    message["headers"] = _merge_headers(message.get("headers", ()), await self._touch(session))
                elif session.accessed:  # read only: nothing to save, but the response varies by cookie
                    message["headers"] = _merge_headers(message.get("headers", ()), _VARY_ONLY)
            await send(message)

        if listener is None:
            await self.app(scope, receive, send_wrapper)
        else:
            await self._serve_reporting(listener, scope, receive, send_wrapper)

    async def _serve_reporting(self, listener: events.Dispatch, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app with ``listener`` as the request's own (:data:`asession.events.in_request`): the
        revocations the app makes through the backend report their ``"revoked"`` events to it."""
        serving = events.in_request.set(listener)
        try:
            await self.app(scope, receive, send)
        finally:
            events.in_request.reset(serving)

    async def _commit(self, session: Session, had_cookie: bool, status: int) -> Headers:
        """Save the session if the response calls for it; return the headers to add."""
        headers: Headers = []
        if session.session_key is None and not dict.__len__(session):
            # Nothing to keep. A flushed session had its data deleted by flush(); expire its cookie.
            if session.modified and had_cookie:
                headers.append((b"set-cookie", self._expired_cookie))
                headers.append(_VARY)
            elif session.accessed:
                headers.append(_VARY)
            return headers
        if session.accessed:
            headers.append(_VARY)
        if (session.modified or self._save_every_request) and status < 500:
            if not self.backend.is_open:
                await self._open_backend()
            await session.save()
            headers.append((b"set-cookie", self._session_cookie(session)))
        return headers

    async def _touch(self, session: Session) -> Headers:
        """Refresh the idle expiry of a session the request only read; the headers to add.

        The cookie is sent again with the new expiry, since it would otherwise end before the session. A
        session that ended meanwhile loses its cookie; a store that fails leaves the expiry as it was (the
        request itself needed nothing written), logged like any store failure.
        """
        try:
            await session.touch()
        except UpdateError:
            return [(b"set-cookie", self._expired_cookie), _VARY]
        except Exception as exc:
            if not _is_store_failure(exc):
                raise
            self._failures.failure("Could not refresh the idle expiry in %r; answering anyway.", self.backend, exc=exc)
            return [_VARY]
        return [_VARY, (b"set-cookie", self._session_cookie(session))]

    async def _unavailable(self, send: Send, listener: events.Dispatch | None) -> None:
        if listener is not None:
            await listener("store_error", None, None)
        await _send_unavailable(send)

    async def _send_interrupted(self, send: Send) -> None:
        headers: Headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_INTERRUPTED_BODY)).encode()),
            (b"cache-control", b"no-store"),
            (b"set-cookie", self._expired_cookie),
            _VARY,
        ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": _INTERRUPTED_BODY, "more_body": False})

    def _session_cookie(self, session: Session) -> bytes:
        key = session.session_key
        if key is None:  # pragma: no cover - save() always leaves a key
            raise SessionError("The session has no key after saving.")
        lifetime = session.cookie_lifetime()
        if lifetime is None:
            return cookies.session_cookie(self._cookie_name, key, self._cookie_attrs, None, None)
        return cookies.session_cookie(self._cookie_name, key, self._cookie_attrs, *lifetime)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = Session(self.backend, cookies.read_cookie(scope["headers"], self._cookie_prefix), self.config)
        session._headers = scope["headers"]
        session._listener = self._listener
        if (session.session_key is not None or not self.backend.is_open) and not await self._prepare(
            session, "refusing the WebSocket"
        ):
            if self._listener is not None:
                await self._listener("store_error", None, None)
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send(
                    {"type": "websocket.http.response.start", "status": 503, "headers": list(_UNAVAILABLE_HEADERS)}
                )
                await send({"type": "websocket.http.response.body", "body": _UNAVAILABLE_BODY})
            else:
                await send({"type": "websocket.close", "code": 1011, "reason": "session store unavailable"})
            return
        scope["session"] = session
        if self._listener is None:
            await self.app(scope, receive, send)
        else:
            await self._serve_reporting(self._listener, scope, receive, send)


def _is_store_failure(exc: Exception) -> bool:
    """Whether ``exc`` means the store failed, rather than the app's data being unstorable."""
    return isinstance(exc, BackendUnavailableError) or not isinstance(exc, (SessionError, TypeError))


async def _send_unavailable(send: Send) -> None:
    # A fresh list each time: outer middleware may add headers to the message in place.
    await send({"type": "http.response.start", "status": 503, "headers": list(_UNAVAILABLE_HEADERS)})
    await send({"type": "http.response.body", "body": _UNAVAILABLE_BODY, "more_body": False})


def _merge_headers(existing: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...], added: Headers) -> Headers:
    """Append ``added`` to the response headers, folding ``Vary: Cookie`` into an existing Vary header."""
    merged = list(existing)
    for name, value in added:
        if name == b"vary":
            for index, (existing_name, existing_value) in enumerate(merged):
                if len(existing_name) == 4 and existing_name.lower() == b"vary":
                    tokens = {token.strip().lower() for token in existing_value.split(b",")}
                    if b"cookie" not in tokens and b"*" not in tokens:
                        merged[index] = (existing_name, existing_value + b", Cookie")
                    break
            else:
                merged.append((name, value))
        else:
            merged.append((name, value))
    return merged
