"""asession: server-side HTTP sessions for Starlette and FastAPI, with Django's session semantics."""

from __future__ import annotations

from asession.config import SessionConfig
from asession.events import SessionEvent
from asession.exceptions import (
    BackendUnavailableError,
    CreateError,
    ImproperlyConfigured,
    SessionError,
    UpdateError,
)
from asession.middleware import SessionMiddleware
from asession.session import Session
from asession.users import SessionInfo

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CreateError",
    "ImproperlyConfigured",
    "Session",
    "SessionConfig",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionMiddleware",
    "UpdateError",
    "__version__",
]
