"""The exceptions asession raises.

The tree::

    SessionError                 base of everything asession raises on purpose
    ├── ImproperlyConfigured     a setting, path, URL or missing extra makes the setup unusable
    ├── CreateError              save(must_create=True) found the key already stored
    ├── UpdateError              an update found no live session to merge into (logged out meanwhile)
    └── BackendUnavailableError  the storage server could not be reached or failed mid-call

Data a visitor can tamper with (cookies, stored payloads) never raises: it is logged on the
``asession.security`` logger and loads as an empty session, as in Django.
"""

from __future__ import annotations

__all__ = ["BackendUnavailableError", "CreateError", "ImproperlyConfigured", "SessionError", "UpdateError"]


class SessionError(Exception):
    """Base class of every error asession raises on purpose."""


class ImproperlyConfigured(SessionError):
    """The configuration cannot work: a bad path, URL, cookie setting or a missing optional extra."""


class CreateError(SessionError):
    """A session could not be created because its key is already stored.

    Raised by ``save(key, ..., must_create=True)``; :meth:`Session.create` catches it and retries with a
    fresh key.
    """


class UpdateError(SessionError):
    """No live session is stored under the key a save wanted to update; nothing was written.

    A parallel request flushed or rotated the session, it was revoked, or it expired, after this request
    loaded it. Saving it anyway would bring a logged-out session back, so the save is refused (Django's
    ``SessionInterrupted``); the middleware answers 400 and expires the cookie.
    """


class BackendUnavailableError(SessionError):
    """The storage behind a backend failed: the server is down, the connection dropped, the disk is full.

    The middleware answers such a failure with a 503 and logs it; nothing already stored is touched.
    """
