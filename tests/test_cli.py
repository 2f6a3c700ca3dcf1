"""The ``asession`` command: clearsessions, demo start-up errors, exit codes, ``python -m asession``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from asession import __version__
from asession.backends import backend_from_url
from asession.backends.memory import MemoryBackend
from asession.cli import BACKEND_URL_ENV, main
from asession.exceptions import ImproperlyConfigured
from tests.conftest import Clock

KEYS = [f"expiredsession{n:04d}" for n in range(3)]
LIVE_KEY = "livesession00000"


async def _store_sessions(url: str) -> None:
    """Store three sessions that expire in 10 seconds and one that lives an hour."""
    async with backend_from_url(url) as backend:
        for key in KEYS:
            await backend.save(key, {"n": key}, 10)
        await backend.save(LIVE_KEY, {"live": True}, 3600)


async def _exists(url: str, key: str) -> bool:
    async with backend_from_url(url) as backend:
        return await backend.exists(key)


def test_clearsessions_sqlite_removes_expired_sessions(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expired sessions are removed and counted; the live one stays, and a second run finds none."""
    url = f"sqlite:///{tmp_path / 'sessions.sqlite3'}"
    asyncio.run(_store_sessions(url))
    clock.advance(60)
    assert main(["clearsessions", url]) == 0
    assert capsys.readouterr().out == "Removed 3 expired sessions.\n"
    assert asyncio.run(_exists(url, LIVE_KEY))
    assert main(["clearsessions", url]) == 0
    assert capsys.readouterr().out == "Removed 0 expired sessions.\n"


def test_clearsessions_one_expired_session_is_singular(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """One removed session is reported in the singular."""
    url = f"sqlite:///{tmp_path / 'sessions.sqlite3'}"

    async def store_one() -> None:
        async with backend_from_url(url) as backend:
            await backend.save(KEYS[0], {}, 10)

    asyncio.run(store_one())
    clock.advance(60)
    assert main(["clearsessions", url]) == 0
    assert capsys.readouterr().out == "Removed 1 expired session.\n"


def test_clearsessions_missing_sqlite_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A SQLite path with no database behind it is reported, not created."""
    database = tmp_path / "typo.sqlite3"
    assert main(["clearsessions", f"sqlite:///{database}"]) == 2
    assert f"There is no SQLite session database at '{database}'" in capsys.readouterr().err
    assert not database.exists()


@pytest.fixture
def isolated_postgres_url(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` with its own schema, so rows of concurrently running tests cannot be counted."""
    import asyncpg

    schema = "asession_cli_test"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
    separator = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{separator}search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


@pytest.mark.postgres
def test_clearsessions_postgres_removes_expired_sessions(
    isolated_postgres_url: str, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """On PostgreSQL the expired sessions are removed and counted too."""
    asyncio.run(_store_sessions(isolated_postgres_url))
    clock.advance(60)
    assert main(["clearsessions", isolated_postgres_url]) == 0
    assert capsys.readouterr().out == "Removed 3 expired sessions.\n"
    assert asyncio.run(_exists(isolated_postgres_url, LIVE_KEY))


@pytest.mark.redis
def test_clearsessions_redis_reports_self_expiry(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Redis drops expired sessions by itself, so nothing is removed and the output says why."""
    assert main(["clearsessions", redis_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Removed 0 expired sessions.")
    assert "expires sessions by itself" in out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            "mongodb://admin:hunter2@127.0.0.1/sessions",
            "Unknown session backend scheme 'mongodb' in 'mongodb://admin:***@127.0.0.1/sessions'",
            id="unknown-scheme",
        ),
        pytest.param("sessions.sqlite3", "is not a session backend URL", id="not-a-url"),
        pytest.param("postgresql://admin:hunter2@[::1/sessions", "is malformed", id="unparsable"),
    ],
)
def test_clearsessions_bad_url_exits_2(url: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that names no backend is a configuration error: exit code 2, one line on stderr."""
    assert main(["clearsessions", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("asession: error: ")
    assert captured.err.count("\n") == 1
    assert message in captured.err
    assert "hunter2" not in captured.err


class _MisconfiguredBackend(MemoryBackend):
    """A backend whose store rejects the configuration when opened."""

    async def _open(self) -> None:
        raise ImproperlyConfigured("The store rejected the configuration.")


def test_clearsessions_misconfigured_at_open_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration error found while opening the backend is a usage error too, not an outage."""
    monkeypatch.setattr("asession.cli.backend_from_url", lambda url: _MisconfiguredBackend())
    assert main(["clearsessions", "memory://"]) == 2
    assert capsys.readouterr().err == "asession: error: The store rejected the configuration.\n"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://:hunter2@127.0.0.1:1/0", id="redis"),
        pytest.param("postgresql://asession:hunter2@127.0.0.1:1/sessions", id="postgres"),
    ],
)
def test_clearsessions_unreachable_server_exits_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A server nobody listens on gives exit code 1 and an error naming it, password hidden."""
    assert main(["clearsessions", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("asession: error: could not clear expired sessions")
    assert captured.err.count("\n") == 1
    assert "127.0.0.1:1" in captured.err
    assert "***" in captured.err
    assert "hunter2" not in captured.err


def test_main_without_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Running the command without a subcommand is a usage error."""
    assert main([]) == 2
    assert "usage: asession" in capsys.readouterr().err


def test_main_version_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the package version and succeeds."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"asession {__version__}\n"


def test_module_help_lists_commands() -> None:
    """``python -m asession --help`` runs in a fresh interpreter and lists both commands."""
    result = subprocess.run(
        [sys.executable, "-m", "asession", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
    assert "clearsessions" in result.stdout


def test_demo_without_uvicorn_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without uvicorn the demo explains which extra to install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["demo"]) == 2
    assert "pip install 'asession[demo]'" in capsys.readouterr().err


def test_demo_bad_backend_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown backend scheme stops the demo before it serves, password hidden."""
    assert main(["demo", "--backend", "nosuch://user:hunter2@127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "Unknown session backend scheme 'nosuch'" in err
    assert "hunter2" not in err


class _FakeUvicorn:
    """Records what ``uvicorn.run`` was called with instead of serving."""

    def __init__(self, exit_code: int | None = None) -> None:
        self.calls: list[tuple[Starlette, dict[str, Any]]] = []
        self.exit_code = exit_code

    def run(self, app: Starlette, **options: Any) -> None:
        self.calls.append((app, options))
        if self.exit_code is not None:
            sys.exit(self.exit_code)

    def backend_of(self, index: int = 0) -> object:
        return self.calls[index][0].user_middleware[0].kwargs["backend"]


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> _FakeUvicorn:
    import uvicorn

    fake = _FakeUvicorn()
    monkeypatch.setattr(uvicorn, "run", fake.run)
    return fake


def test_demo_serves_on_given_host_and_port(fake_uvicorn: _FakeUvicorn, capsys: pytest.CaptureFixture[str]) -> None:
    """``--host``, ``--port`` and ``--backend`` reach uvicorn and the app."""
    assert main(["demo", "--host", "0.0.0.0", "--port", "8123", "--backend", "memory://"]) == 0
    assert fake_uvicorn.calls[0][1] == {"host": "0.0.0.0", "port": 8123}
    assert isinstance(fake_uvicorn.backend_of(), MemoryBackend)
    assert "http://0.0.0.0:8123/" in capsys.readouterr().out


def test_demo_reads_backend_url_from_environment(fake_uvicorn: _FakeUvicorn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--backend`` the demo uses $ASESSION_BACKEND_URL."""
    monkeypatch.setenv(BACKEND_URL_ENV, "memory://")
    assert main(["demo"]) == 0
    assert fake_uvicorn.calls[0][1] == {"host": "127.0.0.1", "port": 8000}
    assert isinstance(fake_uvicorn.backend_of(), MemoryBackend)


def test_demo_defaults_to_sqlite(fake_uvicorn: _FakeUvicorn, monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither ``--backend`` nor the environment variable the demo uses the SQLite default."""
    from asession.backends.db import DatabaseBackend

    monkeypatch.delenv(BACKEND_URL_ENV, raising=False)
    assert main(["demo"]) == 0
    assert isinstance(fake_uvicorn.backend_of(), DatabaseBackend)


def test_demo_startup_failure_returns_uvicorn_exit_code(fake_uvicorn: _FakeUvicorn) -> None:
    """When uvicorn gives up (port taken, store down at startup) its exit code is returned."""
    fake_uvicorn.exit_code = 3
    assert main(["demo", "--backend", "memory://"]) == 3
