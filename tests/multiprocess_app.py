"""A tiny JSON app for tests that run it in separate processes, and the helpers that start and stop them.

Run it with ``python -m uvicorn --factory tests.multiprocess_app:create_app`` and the backend URL in
``ASESSION_TEST_BACKEND_URL``. :class:`ServerProcess` starts any such command on a free 127.0.0.1 port,
waits until it answers ``/healthz`` and always stops it again (terminate, wait, then kill).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from asession.backends import backend_from_url
from asession.middleware import SessionMiddleware
from asession.session import Session

BACKEND_ENV = "ASESSION_TEST_BACKEND_URL"
REPO_ROOT = Path(__file__).resolve().parents[1]


# -- the app ---------------------------------------------------------------------------------------------


def _session(request: Request) -> Session:
    session: Session = request.scope["session"]
    return session


def _state(request: Request) -> JSONResponse:
    session = _session(request)
    return JSONResponse({"pid": os.getpid(), "key": session.session_key, "data": dict(session.items())})


async def show(request: Request) -> Response:
    return _state(request)


async def update(request: Request) -> Response:
    changes: dict[str, Any] = await request.json()
    _session(request).update(changes)
    return _state(request)


async def login(request: Request) -> Response:
    session = _session(request)
    await session.cycle_key()
    session["user"] = (await request.json())["user"]
    return _state(request)


async def logout(request: Request) -> Response:
    await _session(request).flush()
    return _state(request)


async def signin(request: Request) -> Response:
    """``Session.login()`` of the user in the body: the per-user index records the session."""
    await _session(request).login((await request.json())["user"])
    return _state(request)


async def devices(request: Request) -> Response:
    """The per-user index as this process sees it: the sessions of ``?user=``."""
    infos = await _session(request).backend.user_sessions(request.query_params["user"])
    return JSONResponse([{"id": info.id, "user_agent": info.user_agent} for info in infos])


async def revoke(request: Request) -> Response:
    """End one session by its SessionInfo id; answers whether it was live."""
    ended = await _session(request).backend.revoke_session((await request.json())["id"])
    return JSONResponse({"ended": ended})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    """The app on the backend named by ``$ASESSION_TEST_BACKEND_URL``, opened by the lifespan.

    With ``$ASESSION_TEST_KEY_LOG`` set, the storage keys it computes go to that file, for the test to
    delete from a shared server afterwards.
    """
    from tests.servers import KEY_LOG_ENV, log_keys_to

    if os.environ.get(KEY_LOG_ENV):
        log_keys_to(os.environ[KEY_LOG_ENV])
    backend = backend_from_url(os.environ[BACKEND_ENV])
    routes = [
        Route("/session", show),
        Route("/session", update, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/devices", devices),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/healthz", healthz),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend)])


# -- running servers in processes ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """An HTTP server in a child process on 127.0.0.1:``port``; :meth:`stop` always reaps it."""

    def __init__(self, args: Sequence[str], port: int, *, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT):
        self.args = list(args)
        self.port = port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server can never block on it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until ``/healthz`` answers 200; raise with its output otherwise."""
        self.process = subprocess.Popen(
            self.args, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args} did not answer on {self.url} within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        """Terminate the process (a graceful shutdown runs the lifespan), kill it if it lingers, reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def output(self) -> str:
        """What the process printed so far."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def close(self) -> None:
        self.stop()
        self._log.close()


def uvicorn_command(port: int) -> list[str]:
    """The command that serves this module's app with uvicorn on ``port``."""
    import sys

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.multiprocess_app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
        "--log-level",
        "warning",
    ]


@contextlib.contextmanager
def two_servers(env: Mapping[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two uvicorn processes of this module's app on free ports, with ``env``; always stopped afterwards."""
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            port = free_port()
            server = ServerProcess(uvicorn_command(port), port, env=dict(env))
            started.append(server)
            server.start()
        yield started[0], started[1]
    finally:
        for server in started:
            server.close()
