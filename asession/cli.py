"""The ``asession`` command: ``asession demo`` serves the demo app, ``asession clearsessions URL`` purges.

Exit codes: 0 on success, 1 when the session store could not be reached or failed, 2 for a usage or
configuration error (bad arguments, an unknown URL scheme, a missing extra). ``python -m asession`` runs
the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from asession import __version__
from asession.backends import backend_from_url
from asession.backends._urls import hide_password
from asession.backends.base import SessionBackend
from asession.exceptions import ImproperlyConfigured

__all__ = ["BACKEND_URL_ENV", "EXIT_CONFIG", "EXIT_OK", "EXIT_UNAVAILABLE", "main"]

#: Environment variable ``asession demo`` reads the backend URL from when ``--backend`` is not given.
BACKEND_URL_ENV = "ASESSION_BACKEND_URL"

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asession", description="Server-side sessions for Starlette and FastAPI: demo app and maintenance."
    )
    parser.add_argument("--version", action="version", version=f"asession {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="serve the demo app with uvicorn",
        description="Serve the demo app (sign in, a visit counter, a cart, sign out) with uvicorn.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
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
    clear.add_argument("url", metavar="URL", help="backend URL, e.g. sqlite:///sessions.sqlite3 or postgresql://...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asession`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if args.command == "demo":
        return _demo(args.host, args.port, args.backend or os.environ.get(BACKEND_URL_ENV) or None)
    return _clearsessions(args.url)


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
    print(f"asession demo on http://{host}:{port}/ with sessions in {hide_password(url)} (Ctrl+C to stop)")
    try:
        uvicorn.run(app, host=host, port=port)
    except SystemExit as exc:  # uvicorn exits when the port is taken or startup (opening the backend) fails
        return exc.code if isinstance(exc.code, int) else EXIT_UNAVAILABLE
    return EXIT_OK


def _clearsessions(url: str) -> int:
    try:
        backend = backend_from_url(url)
    except ImproperlyConfigured as exc:
        _error(_redact(str(exc), url))
        return EXIT_CONFIG
    missing = _missing_sqlite_file(backend)
    if missing is not None:
        # Opening would create an empty database and report success for a mistyped path.
        _error(f"There is no SQLite session database at {missing!r}. Check the path in {url!r}.")
        return EXIT_CONFIG
    try:
        removed = asyncio.run(_clear_expired(backend))
    except ImproperlyConfigured as exc:
        _error(_redact(str(exc), url))
        return EXIT_CONFIG
    except Exception as exc:  # any failure of the store: a refused connection, a timeout, a driver error
        reason = _redact(str(exc) or type(exc).__name__, url)
        where = "" if hide_password(url) in reason else f" from {hide_password(url)}"
        _error(f"could not clear expired sessions{where}: {' '.join(reason.split())}")
        return EXIT_UNAVAILABLE
    noun = "session" if removed == 1 else "sessions"
    note = f" ({hide_password(url)} expires sessions by itself.)" if backend.expires_by_itself else ""
    print(f"Removed {removed} expired {noun}.{note}")
    return EXIT_OK


def _missing_sqlite_file(backend: SessionBackend) -> str | None:
    """The path of a SQLite database file that does not exist, or ``None``."""
    path = getattr(backend, "path", None)
    if getattr(backend, "dialect", None) != "sqlite" or not isinstance(path, str) or path == ":memory:":
        return None
    return None if os.path.exists(path) else path


#: A well-formed key no session has; looking it up proves a self-expiring store is reachable.
_PROBE_KEY = "clearsessionsprobe"


async def _clear_expired(backend: SessionBackend) -> int:
    async with backend:
        if backend.expires_by_itself:
            # clear_expired() has nothing to ask such a store, so ask it something: an unreachable server
            # must fail the command rather than report success.
            await backend.exists(_PROBE_KEY)
        return await backend.clear_expired()
