"""Session events: what the middleware reports to an ``on_event`` listener.

``SessionMiddleware(app, backend, on_event=listener)`` calls ``listener(event)`` (a plain function or a
coroutine function) with a :class:`SessionEvent` for each session created, signed in, rotated, signed out,
flushed, interrupted (a save met a session ended by a parallel request: 400), revoked (one for each
session ended by a revocation the request made) and for each store error (503). A listener that raises is
logged on ``asession.events`` and ignored: it never fails the request. Listeners run in the request, so a
slow one slows it down.

Revocations are made by the backend (``backend.revoke_session()``, ``backend.revoke_user_sessions()``, and
``session.revoke_other_sessions()`` through it), which knows no middleware: the middleware makes its
dispatch the request's own (:data:`in_request`, a context variable, so tasks the request starts see it
too), and the backend reports to it. A revocation made outside a request (the CLI, a script) reports to
nobody.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from asession import expiry

__all__ = [
    "EVENT_TYPES",
    "Dispatch",
    "EventType",
    "Listener",
    "SessionEvent",
    "dispatcher",
    "in_request",
    "report_revoked",
]

EventType = Literal["created", "login", "rotated", "logout", "flushed", "interrupted", "revoked", "store_error"]
EVENT_TYPES: tuple[EventType, ...] = (
    "created",
    "login",
    "rotated",
    "logout",
    "flushed",
    "interrupted",
    "revoked",
    "store_error",
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionEvent:
    """Something that happened to a session.

    ``session_id`` is the session's public handle (:attr:`SessionInfo.id <asession.users.SessionInfo.id>`,
    never the key), ``None`` when the session had no key yet; ``user_id`` the signed-in user, if any;
    ``time`` an aware UTC datetime.
    """

    type: EventType
    session_id: str | None
    user_id: str | None
    time: datetime


Listener = Callable[[SessionEvent], "Awaitable[object] | object"]


#: What the session and the middleware call: ``dispatch(kind, session_id, user_id)``.
Dispatch = Callable[[str, "str | None", "str | None"], Awaitable[None]]


#: The dispatch of the request a :class:`~asession.SessionMiddleware` with a listener is serving, if any.
in_request: ContextVar[Dispatch | None] = ContextVar("asession_events_in_request", default=None)


async def report_revoked(handles: list[str], user_id: str | None) -> None:
    """One ``"revoked"`` event per ended session, to the request being served (none outside a request)."""
    dispatch = in_request.get()
    if dispatch is not None:
        for handle in handles:
            await dispatch("revoked", handle, user_id)


def dispatcher(listener: Listener) -> Dispatch:
    """A coroutine function that builds the event and calls ``listener``, logging whatever it raises."""

    async def dispatch(kind: str, session_id: str | None, user_id: str | None) -> None:
        event = SessionEvent(kind, session_id, user_id, expiry.now())  # type: ignore[arg-type]  # a known kind
        try:
            result = listener(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("The session event listener %r failed on %r; the request goes on.", listener, event)

    return dispatch
