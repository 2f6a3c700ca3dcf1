"""The ``asession`` command: run the demo, purge expired sessions, list and end a user's sessions.

- ``asession demo [--host HOST] [--port PORT] [--backend URL]`` serves the demo app with uvicorn;
- ``asession clearsessions URL`` removes expired sessions and prints how many;
- ``asession sessions URL --user ID [--json]`` lists the user's live sessions, newest first;
- ``asession revoke URL (--user ID [--except-session SESSION_ID] | --session SESSION_ID)`` ends the user's
  sessions (all, or all but one) or the one session an id names.

Exit codes: 0 on success, 1 when the session store could not be reached or failed, 2 for a usage or
configuration error (bad arguments, an invalid user or session id, an unknown URL scheme, a missing extra,
a SQLite database file that does not exist, a demo port that is not one or cannot be listened on), 3 when
``asession revoke`` found no live session to end. Every error is one line on stderr.
``python -m asession`` runs the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from asession import __version__
from asession.backends import backend_from_url
from asession.backends._urls import hide_password
from asession.backends.base import SessionBackend
from asession.exceptions import ImproperlyConfigured
from asession.users import SessionInfo, check_user_id, user_of_handle

__all__ = ["BACKEND_URL_ENV", "EXIT_CONFIG", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAVAILABLE", "main"]

#: Environment variable ``asession demo`` reads the backend URL from when ``--backend`` is not given.
BACKEND_URL_ENV = "ASESSION_BACKEND_URL"

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_CONFIG = 2
#: ``asession revoke`` ended nothing: no live session matched (or the one to keep is not live).
EXIT_NOT_FOUND = 3

#: The widest user agent ``asession sessions`` prints in its table (``--json`` prints them whole).
_USER_AGENT_WIDTH = 60
_URL_HELP = "backend URL, e.g. sqlite:///sessions.sqlite3 or postgresql://..."
_USER_HELP = "the user id the app passed to login() (write --user=ID for an id that starts with '-')"
_EXIT_CODES = (
    "exit codes: 0 done, 1 the store could not be reached or failed, 2 a usage or configuration error, "
    "3 revoke found no live session to end"
)

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asession",
        description="Server-side sessions for Starlette and FastAPI: demo app and maintenance.",
        epilog=_EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"asession {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="serve the demo app with uvicorn",
        description="Serve the demo app (sign in, a visit counter, a cart, sign out) with uvicorn.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    # Checked by _port() rather than type=int, so a bad port is one line of error, not argparse's usage.
    demo.add_argument("--port", default="8000", help="port to listen on, 1 to 65535 (default: %(default)s)")
    demo.add_argument(
        "--backend",
        metavar="URL",
        help=f"session backend URL (default: ${BACKEND_URL_ENV}, else sqlite:///sessions.sqlite3)",
    )

    clear = commands.add_parser(
        "clearsessions",
        help="remove expired sessions from a backend",
        description="Remove expired sessions from the backend URL names and print how many were removed. "
        "Stores with their own expiry (Redis, memcached) have nothing to remove.",
    )
    clear.add_argument("url", metavar="URL", help=_URL_HELP)

    sessions = commands.add_parser(
        "sessions",
        help="list a user's live sessions",
        description="List the live sessions of a user (the ones login() bound to the user id), newest first: "
        "id, created, last seen, expires (UTC) and the user agent of the login. An id is what "
        "`asession revoke --session` takes.",
        epilog=_EXIT_CODES,
    )
    sessions.add_argument("url", metavar="URL", help=_URL_HELP)
    sessions.add_argument("--user", metavar="ID", required=True, help=_USER_HELP)
    sessions.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of objects (id, user_id, created_at, last_seen, expires_at, user_agent) "
        "with whole user agents instead of the table",
    )

    revoke = commands.add_parser(
        "revoke",
        help="end a user's sessions, or one session",
        description="End every live session of a user (--user), all but one (--except-session), or the one "
        "session an id names (--session); their browsers are signed out on their next request. Prints "
        "how many ended.",
        epilog=_EXIT_CODES,
    )
    revoke.add_argument("url", metavar="URL", help=_URL_HELP)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", metavar="ID", help=f"end this user's sessions: {_USER_HELP}")
    target.add_argument(
        "--session", metavar="SESSION_ID", help="end the session with this id (as `asession sessions` lists it)"
    )
    revoke.add_argument(
        "--except-session",
        metavar="SESSION_ID",
        help="with --user: keep this session of the user and end the others",
    )
    revoke.set_defaults(usage_error=revoke.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asession`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "revoke" and args.except_session is not None and args.user is None:
            args.usage_error("argument --except-session: only allowed with --user")
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        if args.command == "demo":
            return _demo(args.host, _port(args.port), args.backend or os.environ.get(BACKEND_URL_ENV) or None)
        if args.command == "sessions":
            return _sessions(args.url, args.user, as_json=args.json)
        if args.command == "revoke":
            return _revoke(args.url, args.user, args.session, args.except_session)
        return _clearsessions(args.url)
    except _Exit as exc:
        return exc.code


class _Exit(Exception):
    """Ends the command with ``code``; the reason is on stderr already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _error(message: str) -> None:
    print(f"asession: error: {message}", file=sys.stderr)


def _redact(text: str, url: str) -> str:
    """Hide the URL's password in ``text`` (a message a driver may have built from the URL)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    if password:
        for secret in {password, unquote(password)}:
            text = text.replace(secret, "***")
    return text


def _port(text: str) -> int:
    """``--port`` as a number from 1 to 65535; anything else exits with code 2."""
    port = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= port <= 65535:
        _error(f"argument --port: {text!r} is not a port number; use one from 1 to 65535.")
        raise _Exit(EXIT_CONFIG)
    return port


def _demo(host: str, port: int, backend_url: str | None) -> int:
    try:
        import uvicorn
    except ImportError:
        _error("The demo needs uvicorn. Install it with `pip install 'asession[demo]'`.")
        return EXIT_CONFIG
    from asession.demo import DEFAULT_BACKEND_URL, create_app

    url = backend_url or DEFAULT_BACKEND_URL
    try:
        app = create_app(url)
    except ImproperlyConfigured as exc:
        _error(_redact(str(exc), url))
        return EXIT_CONFIG
    # What makes uvicorn give up at startup, checked first so that it is one line rather than its log and a
    # traceback: an address it cannot listen on, a store it cannot open (the app's own backend stays
    # unopened, for the app's lifespan to open on uvicorn's event loop).
    _check_listen(host, port)
    _run(url, backend_from_url(url), "open the session store", _nothing)
    print(f"asession demo on http://{host}:{port}/ with sessions in {hide_password(url)} (Ctrl+C to stop)")
    try:
        uvicorn.run(app, host=host, port=port)
    except SystemExit as exc:  # uvicorn exits when startup fails after all (e.g. the port was taken since)
        if exc.code in (None, 0):
            return EXIT_OK
        _error(f"the demo server stopped at startup (uvicorn exit code {exc.code}); see the log above.")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (``SO_REUSEADDR``) and let it go; exit with code 2 when that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:  # socket.gaierror (an unknown host) included
        _error(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --host or --port.")
        raise _Exit(EXIT_CONFIG) from None


async def _nothing(backend: SessionBackend) -> None:
    """Nothing to do with the store: opening it was the check."""


# -- opening a backend and running a call against it ------------------------------------------------------


def _backend(url: str) -> SessionBackend:
    """The backend ``url`` names, unopened; a bad URL or a missing SQLite file exits with code 2."""
    try:
        backend = backend_from_url(url)
    except ImproperlyConfigured as exc:
        _error(_redact(str(exc), url))
        raise _Exit(EXIT_CONFIG) from None
    missing = _missing_sqlite_file(backend)
    if missing is not None:
        # Opening would create an empty database and report success for a mistyped path.
        _error(f"There is no SQLite session database at {missing!r}. Check the path in {url!r}.")
        raise _Exit(EXIT_CONFIG)
    return backend


def _missing_sqlite_file(backend: SessionBackend) -> str | None:
    """The path of a SQLite database file that does not exist, or ``None``."""
    path = getattr(backend, "path", None)
    if getattr(backend, "dialect", None) != "sqlite" or not isinstance(path, str) or path == ":memory:":
        return None
    return None if os.path.exists(path) else path


def _run(url: str, backend: SessionBackend, doing: str, call: Callable[[SessionBackend], Awaitable[T]]) -> T:
    """Open ``backend``, await ``call(backend)`` and close it again.

    A configuration error found on the way exits with code 2, any failure of the store (a refused
    connection, a timeout, a driver error) with code 1 and ``could not <doing>`` on stderr; passwords in
    ``url`` are hidden.
    """

    async def run() -> T:
        async with backend:
            return await call(backend)

    try:
        return asyncio.run(run())
    except (ImproperlyConfigured, NotImplementedError) as exc:  # NotImplementedError: a backend without an index
        _error(_redact(str(exc), url))
        raise _Exit(EXIT_CONFIG) from None
    except Exception as exc:
        reason = _redact(str(exc) or type(exc).__name__, url)
        where = "" if hide_password(url) in reason else f" from {hide_password(url)}"
        _error(f"could not {doing}{where}: {' '.join(reason.split())}")
        raise _Exit(EXIT_UNAVAILABLE) from None


# -- clearsessions -----------------------------------------------------------------------------------------


def _clearsessions(url: str) -> int:
    backend = _backend(url)
    removed = _run(url, backend, "clear expired sessions", _clear_expired)
    noun = "session" if removed == 1 else "sessions"
    note = f" ({hide_password(url)} expires sessions by itself.)" if backend.expires_by_itself else ""
    print(f"Removed {removed} expired {noun}.{note}")
    return EXIT_OK


#: A well-formed key no session has; looking it up proves a self-expiring store is reachable.
_PROBE_KEY = "clearsessionsprobe"


async def _clear_expired(backend: SessionBackend) -> int:
    if backend.expires_by_itself:
        # clear_expired() has nothing to ask such a store, so ask it something: an unreachable server
        # must fail the command rather than report success.
        await backend.exists(_PROBE_KEY)
    return await backend.clear_expired()


# -- sessions and revoke -----------------------------------------------------------------------------------


def _user_id(text: str, option: str = "--user") -> str:
    """``text`` checked as a user id (as login() stores it); an invalid one exits with code 2."""
    try:
        return check_user_id(text)
    except ValueError as exc:
        _error(f"argument {option}: {exc}")
        raise _Exit(EXIT_CONFIG) from None


def _session_id(text: str, option: str) -> str:
    """``text`` checked as a session id (:attr:`SessionInfo.id`); a malformed one exits with code 2.

    A well-formed id is base64url, a dot and hex digits, safe to print as it is.
    """
    if user_of_handle(text) is None:
        _error(f"argument {option}: {_quote(text)} is not a session id; `asession sessions URL --user ID` lists them")
        raise _Exit(EXIT_CONFIG)
    return text


def _quote(text: str) -> str:
    """``text`` quoted as ``repr`` quotes it: control characters cannot reach the terminal."""
    return repr(text)


def _printable(text: str) -> str:
    """``text`` with each unprintable character (control, format, surrogate) escaped as ``repr`` does."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _when(moment: datetime) -> str:
    """``2026-11-30 20:07:20Z``: UTC, to the second."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(moment: datetime) -> str:
    """``2026-11-30T20:07:20.123Z``: ISO 8601 in UTC, to the millisecond (what the store keeps)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _agent_cell(agent: str | None) -> str:
    if agent is None:
        return "-"
    text = _printable(agent)
    return text if len(text) <= _USER_AGENT_WIDTH else text[: _USER_AGENT_WIDTH - 3] + "..."


def _table(found: Sequence[SessionInfo]) -> str:
    rows = [("ID", "CREATED", "LAST SEEN", "EXPIRES", "USER AGENT")]
    rows += [
        (info.id, _when(info.created_at), _when(info.last_seen), _when(info.expires_at), _agent_cell(info.user_agent))
        for info in found
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in rows
    )


def _as_json(info: SessionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "user_id": info.user_id,
        "created_at": _iso(info.created_at),
        "last_seen": _iso(info.last_seen),
        "expires_at": _iso(info.expires_at),
        "user_agent": info.user_agent,
    }


def _sessions(url: str, user: str, *, as_json: bool) -> int:
    user_id = _user_id(user)
    backend = _backend(url)
    found = _run(url, backend, f"list the sessions of user {_quote(user_id)}", lambda b: b.user_sessions(user_id))
    if as_json:
        # ensure_ascii: escapes every non-ASCII character too, so none can act on the terminal.
        print(json.dumps([_as_json(info) for info in found], indent=2))
    elif found:
        print(_table(found))
    else:
        print(f"no live sessions for user {_quote(user_id)}")
    return EXIT_OK


def _revoke(url: str, user: str | None, session: str | None, keep: str | None) -> int:
    if session is not None:
        session_id = _session_id(session, "--session")
        backend = _backend(url)
        if _run(url, backend, f"revoke session {session_id}", lambda b: b.revoke_session(session_id)):
            print(f"revoked session {session_id}")
            return EXIT_OK
        print(f"no live session {session_id}")
        return EXIT_NOT_FOUND
    assert user is not None  # the parser requires --user or --session
    user_id = _user_id(user)
    keep_id = None if keep is None else _session_id(keep, "--except-session")
    if keep_id is not None and user_of_handle(keep_id) != user_id:
        _error(f"argument --except-session: session {keep_id} is not one of user {_quote(user_id)}")
        raise _Exit(EXIT_CONFIG)
    backend = _backend(url)
    ended = _run(
        url, backend, f"revoke the sessions of user {_quote(user_id)}", lambda b: _revoke_user(b, user_id, keep_id)
    )
    if ended is None:
        _error(f"no live session {keep_id} of user {_quote(user_id)} to keep; nothing was revoked")
        return EXIT_NOT_FOUND
    others = "" if keep_id is None else " other"
    if not ended:
        print(f"no{others} live sessions for user {_quote(user_id)}")
        return EXIT_NOT_FOUND
    noun = "session" if ended == 1 else "sessions"
    kept = "" if keep_id is None else f", kept {keep_id}"
    print(f"revoked {ended}{others} {noun} of user {_quote(user_id)}{kept}")
    return EXIT_OK


async def _revoke_user(backend: SessionBackend, user_id: str, keep_id: str | None) -> int | None:
    """End ``user_id``'s sessions but ``keep_id``; how many ended, ``None`` when ``keep_id`` is not live."""
    if keep_id is None:
        return await backend.revoke_user_sessions(user_id)
    # The backend's except_key takes a session key, which an operator does not have: list and end one by one.
    ids = [info.id for info in await backend.user_sessions(user_id)]
    if keep_id not in ids:
        return None
    ended = 0
    for session_id in ids:
        if session_id != keep_id and await backend.revoke_session(session_id):
            ended += 1
    return ended
