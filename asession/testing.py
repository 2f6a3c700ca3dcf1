"""Test helpers: start a test with a session (logged in or not), or read what a request stored.

A test of a view behind :class:`~asession.SessionMiddleware` usually needs a visitor who is already
signed in, or wants to check what a request left in the session. Going through the app's login view for
that couples every test to the login flow, and reading the store by hand meets what the app never sees
(hashed keys, ``"_session_meta"``, signed payloads). These helpers use a :class:`~asession.Session`, as the
middleware does, so a session made here is exactly one a request could have made:

- :func:`make_session` stores a new session (bound to a user with :meth:`Session.login`, so the per-user
  index lists it) and returns the cookies to put on the client; :func:`read_session` returns the mapping a
  request with those cookies would see. Both are coroutines, for async tests (httpx's ``AsyncClient``
  over ``ASGITransport``, ``asgi-lifespan``), where the backend lives on the test's event loop.
- :func:`set_cookies` puts such cookies on an httpx client for its host, so that a cookie the app sets
  later replaces them instead of sitting beside them.
- :func:`login_client` and :func:`session_of` do the same for Starlette's synchronous ``TestClient``,
  which runs the app on an event loop of its own, in another thread: they run on that loop.

The cookies are named by the :class:`~asession.SessionConfig`: pass the app's ``config`` when it changes
``cookie_name`` (or ``cookie_domain``/``cookie_path``, for :func:`set_cookies`).
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from asession import expiry, users
from asession.backends.base import BackendState, SessionBackend
from asession.config import SessionConfig
from asession.exceptions import SessionError
from asession.session import Session

__all__ = [
    "ClientCookies",
    "CookieSource",
    "HTTPClient",
    "login_client",
    "make_session",
    "read_session",
    "session_of",
    "set_cookies",
]

T = TypeVar("T")

_DEFAULT_CONFIG = SessionConfig()
#: Keys the session keeps for itself. ``_auth_user_id`` is set by ``user_id=`` (through login(), which
#: also indexes the session); the other two are metadata a Session never shows to the app.
_RESERVED = {users.USER_ID_KEY: "pass user_id= instead", users.META_KEY: "", expiry.EXPIRY_KEY: ""}
_PORT = re.compile(r":\d+$", re.ASCII)


class CookieSource(Protocol):
    """What :func:`read_session` reads a cookie from: a ``dict``, an ``httpx.Cookies`` (``client.cookies``
    of httpx's clients and of Starlette's ``TestClient``), or anything else with ``get(name)``."""

    def get(self, name: str, /) -> str | None:
        """The value of the cookie ``name``, or ``None``."""


class ClientCookies(CookieSource, Protocol):
    """A client's cookie jar as httpx has it (``httpx.Cookies``): what :func:`set_cookies` writes to."""

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        """Store the cookie ``name`` for ``domain`` and ``path``."""

    def delete(self, name: str, domain: str | None = None, path: str | None = None) -> None:
        """Drop every cookie ``name`` (of ``domain`` and ``path`` when given)."""


class HTTPClient(Protocol):
    """An httpx ``Client``/``AsyncClient`` or a Starlette ``TestClient``: cookies and a base URL."""

    @property
    def cookies(self) -> ClientCookies:
        """The client's cookie jar."""

    @property
    def base_url(self) -> object:
        """The URL relative requests are sent to; its host is the one cookies are set for."""


# -- the coroutines ----------------------------------------------------------------------------------------


async def make_session(
    backend: SessionBackend,
    data: Mapping[str, Any],
    *,
    config: SessionConfig | None = None,
    user_id: str | int | None = None,
) -> dict[str, str]:
    """Store a new session holding ``data`` and return the cookies that carry it: ``{cookie_name: key}``.

    With ``user_id`` the session is signed in as that user through :meth:`Session.login`, as a login view
    would: the app sees ``session.user_id`` (always a ``str``), and :meth:`SessionBackend.user_sessions`
    lists the session (backends with a per-user index). ``config`` must be the app's when it sets another
    ``cookie_name`` or a timeout: the session is stored with its expiry.

    A backend that is not open yet is opened here and left open. SessionMiddleware then treats it as
    the caller's (it closes only a backend it opened itself), so close it at the end of the test, or use
    the ``asession_backend`` fixture, which does. Raises :class:`SessionError` for a closed backend: the
    middleware closes the backend it opened when the app shuts down (the end of ``with TestClient(app)``,
    of a lifespan manager), after which nothing can be stored in it.

    Raises ``TypeError`` naming the key when a value (or a key) cannot survive JSON, ``ValueError`` for a
    user id that :meth:`Session.login` refuses and for the keys the session keeps for itself
    (``"_auth_user_id"``: pass ``user_id`` instead); nothing is stored then.
    """
    reserved = [key for key in _RESERVED if key in data]
    if reserved:
        key = reserved[0]
        hint = _RESERVED[key]
        raise ValueError(
            f"make_session() data cannot hold {key!r}, which the session keeps for itself"
            + (f": {hint}." if hint else ".")
        )
    if user_id is not None:
        users.check_user_id(user_id)  # login() checks it too; this refuses it before the backend is opened
    await _ready(backend, "make_session")
    session = Session(backend, config=config)
    session.update(data)
    if user_id is None:
        await session.save()
    else:
        # One write: the data and the user are stored under a fresh key, then indexed.
        await session.login(user_id)
    session_key = session.session_key
    if session_key is None:  # pragma: no cover - save() and login() always leave a key
        raise SessionError(f"{backend!r} stored the session without a key.")
    return {session.config.cookie_name: session_key}


async def read_session(
    backend: SessionBackend, cookies: CookieSource, *, config: SessionConfig | None = None
) -> dict[str, Any]:
    """Return what a request carrying ``cookies`` would find in its session, as a plain ``dict``.

    ``cookies`` is what :func:`make_session` returned, a client's ``cookies`` (httpx's clients and
    Starlette's ``TestClient`` alike) or any mapping of cookie names to values; only the cookie named by
    ``config.cookie_name`` is read. The session is loaded through a :class:`Session`, as the middleware
    does, so the result is the app's view: no ``"_session_meta"`` or expiry record, ``"_auth_user_id"``
    for a signed-in session. ``{}`` when the cookie is missing, malformed, unknown, tampered with or expired.

    Opens a backend that is not open yet, as :func:`make_session` does; raises :class:`SessionError` for a
    closed one, and when the client holds several different cookies of that name (one put there by hand
    for any host, one the app set for its host: use :func:`set_cookies`, whose cookie the app replaces).
    """
    config = config if config is not None else _DEFAULT_CONFIG
    value = _cookie_value(cookies, config.cookie_name)
    await _ready(backend, "read_session")
    if not value:
        return {}
    session = Session(backend, value, config)
    await session.load()
    return dict(dict.items(session))


# -- cookies on a client --------------------------------------------------------------------------------


def set_cookies(client: HTTPClient, cookies: Mapping[str, str], *, config: SessionConfig | None = None) -> None:
    """Put ``cookies`` (from :func:`make_session`) on ``client``, as if its app had set them.

    Why not ``client.cookies.update(cookies)`` or ``AsyncClient(cookies=...)``: those store a cookie for
    no host in particular, and when the app later sets the session cookie (a login, a rotated key, any
    change on signed cookies) the client keeps both and sends the stale one first, which the app reads.
    Here each cookie is stored for the host of ``client.base_url`` (``Domain``: ``config.cookie_domain``
    when set) and ``config.cookie_path``, where the app's ``Set-Cookie`` replaces it; cookies of the same
    names already on the client are dropped first. A client without a base URL gets host-less cookies.
    """
    config = config if config is not None else _DEFAULT_CONFIG
    domain = _cookie_domain(client, config)
    jar = client.cookies
    for name, value in cookies.items():
        jar.delete(name)
        jar.set(name, value, domain=domain, path=config.cookie_path)


# -- Starlette's TestClient: synchronous tests -----------------------------------------------------------


def login_client(
    client: HTTPClient,
    backend: SessionBackend,
    data: Mapping[str, Any] | None = None,
    *,
    config: SessionConfig | None = None,
    user_id: str | int | None = None,
) -> dict[str, str]:
    """Give a Starlette ``TestClient`` a new session holding ``data`` (signed in as ``user_id`` if given).

    :func:`make_session` then :func:`set_cookies`, for synchronous tests; returns the cookies as well.
    Use it inside ``with TestClient(app) as client:``. The ``TestClient`` runs the app on an event loop of
    its own, in another thread (its ``portal``); the session is stored on that loop, where the backend
    the middleware opened at startup lives, which matters for stores whose connections belong to one loop
    (Redis, memcached, PostgreSQL).

    A client used without ``with`` has no such loop: it starts a new one for every request. Then the
    session is stored on a new loop too, which only works for backends that hold nothing bound to a loop
    (memory, signed cookies, SQLite, files); for the others :class:`SessionError` asks for the ``with``
    block. The same errors as :func:`make_session` otherwise.
    """
    cookies = _run_for(
        client,
        backend,
        "login_client",
        lambda: make_session(backend, {} if data is None else data, config=config, user_id=user_id),
    )
    set_cookies(client, cookies, config=config)
    return cookies


def session_of(client: HTTPClient, backend: SessionBackend, *, config: SessionConfig | None = None) -> dict[str, Any]:
    """The session a Starlette ``TestClient`` carries now: :func:`read_session` of its cookies, synchronously.

    ``{}`` when the client has no session cookie (never set, or expired by a logout). Runs on the client's
    event loop, with the same rules as :func:`login_client`.
    """
    config = config if config is not None else _DEFAULT_CONFIG
    # Read here, in the test's thread: the jar is the client's, and a conflict is raised to the caller.
    value = _cookie_value(client.cookies, config.cookie_name)
    cookies = {} if value is None else {config.cookie_name: value}
    return _run_for(client, backend, "session_of", lambda: read_session(backend, cookies, config=config))


# -- helpers --------------------------------------------------------------------------------------------


def _closed(backend: SessionBackend, caller: str) -> SessionError:
    return SessionError(
        f"{caller}() was given {backend!r}, which is closed. SessionMiddleware closes a backend it opened "
        "itself when the app shuts down (at the end of `with TestClient(app)`, of a lifespan manager): call "
        f"{caller}() before that, or open the backend before the app starts (`async with backend:`, or the "
        "asession_backend fixture), so that it stays yours until you close it."
    )


async def _ready(backend: SessionBackend, caller: str) -> None:
    """Open ``backend`` if nobody has (it is then the caller's to close); refuse a closed one."""
    state = backend.state
    if state is BackendState.OPEN:
        return
    if state is BackendState.CLOSED:
        raise _closed(backend, caller)
    await backend.open()


def _cookie_value(cookies: CookieSource, name: str) -> str | None:
    """The value of the cookie ``name``; ``None`` when absent. Several different ones raise SessionError.

    An httpx jar may hold one cookie per host and path, and its ``get()`` then raises ``CookieConflict``
    even when they agree; the jar is read directly instead, to accept the same value twice and to name
    the cause otherwise.
    """
    value: str | None
    jar = getattr(cookies, "jar", None)
    if isinstance(jar, http.cookiejar.CookieJar):
        values = {cookie.value for cookie in jar if cookie.name == name and cookie.value is not None}
        if len(values) > 1:
            raise SessionError(
                f"The client holds {len(values)} different cookies named {name!r}, for different hosts or paths, "
                "and sends them all: the app reads the first. One was probably put there for no host "
                "(client.cookies.update(), AsyncClient(cookies=...)) and the other set by the app: put the "
                "cookies of make_session() on the client with asession.testing.set_cookies() instead."
            )
        value = next(iter(values), None)
    else:
        value = cookies.get(name)
    if value is not None and len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]  # a quoted cookie value, as the middleware reads it
    return value


def _cookie_domain(client: HTTPClient, config: SessionConfig) -> str:
    """The domain http.cookiejar gives a cookie the app sets for ``client``'s host, so that it replaces ours.

    ``Domain=example.com`` is stored as ``.example.com``; without a Domain the cookie belongs to the
    request's host, to which the jar appends ``.local`` when it has no dot (``testserver.local``).
    """
    if config.cookie_domain is not None:
        domain = config.cookie_domain
        return domain if domain.startswith(".") else f".{domain}"
    netloc = urllib.parse.urlsplit(str(client.base_url)).netloc.rpartition("@")[2]
    host = _PORT.sub("", netloc).lower()
    if not host:
        return ""
    return host if "." in host else f"{host}.local"


def _run_for(client: HTTPClient, backend: SessionBackend, caller: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call()`` on the event loop of ``client`` (a TestClient inside ``with``), or a fresh one when safe."""
    portal = getattr(client, "portal", None)
    if portal is not None:
        result: T = portal.call(call)
        return result
    if backend.state is BackendState.CLOSED:
        raise _closed(backend, caller)
    if not _loop_independent(backend):
        raise SessionError(
            f"{caller}() needs the event loop the app runs on, because {backend!r} holds connections that belong "
            "to one loop; this client has none (a TestClient starts one per request when used without `with`). "
            "Use `with TestClient(app) as client:` around the test, or in an async test "
            "`await asession.testing.make_session(...)` / `read_session(...)`."
        )
    import anyio.from_thread  # Starlette's dependency, as TestClient uses it

    # What a TestClient without `with` does for each request: a new loop in a thread of its own.
    options: dict[str, Any] = dict(getattr(client, "async_backend", None) or {"backend": "asyncio"})
    with anyio.from_thread.start_blocking_portal(**options) as fresh:
        return fresh.call(call)


def _loop_independent(backend: SessionBackend) -> bool:
    """Whether ``backend`` may be used from one event loop after another: it keeps no loop's connections,
    futures or timers between calls. Known backends only; any other is assumed bound to its loop."""
    from asession.backends.db import DatabaseBackend
    from asession.backends.memory import MemoryBackend
    from asession.backends.signed_cookies import SignedCookieBackend

    if isinstance(backend, DatabaseBackend):
        return backend.dialect == "sqlite"  # a writer thread of its own, each call answered on its caller's loop
    known: list[type[SessionBackend]] = [MemoryBackend, SignedCookieBackend]
    try:
        from asession.backends.file import FileBackend  # worker threads only
    except ImportError:  # pragma: no cover - no fcntl (Windows), so no FileBackend either
        pass
    else:
        known.append(FileBackend)
    return isinstance(backend, tuple(known))
