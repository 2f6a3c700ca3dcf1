"""The ``asession`` command: clearsessions, sessions, revoke, demo start-up errors, exit codes,
``python -m asession``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from asession import __version__
from asession.backends import backend_from_url
from asession.backends.db import DatabaseBackend
from asession.backends.memory import MemoryBackend
from asession.cli import BACKEND_URL_ENV, EXIT_NOT_FOUND, main
from asession.exceptions import ImproperlyConfigured
from asession.session import Session
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
    """``postgres_url`` with a schema of the test's own, so rows of other tests cannot be counted."""
    import asyncpg

    from tests.servers import NAMESPACE, with_query

    schema = f"{NAMESPACE}_cli"

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    try:
        yield with_query(postgres_url, search_path=schema)
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
    """``python -m asession --help`` runs in a fresh interpreter and lists every command."""
    result = subprocess.run(
        [sys.executable, "-m", "asession", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
    assert "clearsessions" in result.stdout
    assert re.search(r"\n +sessions +list a user's live sessions\n", result.stdout)
    assert re.search(r"\n +revoke +end a user's sessions, or one session\n", result.stdout)


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
    """uvicorn.run replaced, and the check that the address is free skipped (port 8000 may be in use here)."""
    import uvicorn

    from asession import cli

    fake = _FakeUvicorn()
    monkeypatch.setattr(uvicorn, "run", fake.run)
    monkeypatch.setattr(cli, "_check_listen", lambda host, port: None)
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


def test_demo_defaults_to_sqlite(fake_uvicorn: _FakeUvicorn, monkeypatch: pytest.MonkeyPatch, tmp_cwd: Path) -> None:
    """With neither ``--backend`` nor the environment variable the demo uses the SQLite default."""
    from asession.backends.db import DatabaseBackend

    monkeypatch.delenv(BACKEND_URL_ENV, raising=False)
    assert main(["demo"]) == 0
    assert isinstance(fake_uvicorn.backend_of(), DatabaseBackend)
    # Checked before serving: the database opens (and is created, as the demo would create it).
    assert (tmp_cwd / "sessions.sqlite3").exists()


def test_demo_startup_failure_exits_1(fake_uvicorn: _FakeUvicorn, capsys: pytest.CaptureFixture[str]) -> None:
    """When uvicorn gives up at startup after the checks passed, the demo says so in one line and exits 1."""
    fake_uvicorn.exit_code = 3
    assert main(["demo", "--backend", "memory://"]) == 1
    assert capsys.readouterr().err == (
        "asession: error: the demo server stopped at startup (uvicorn exit code 3); see the log above.\n"
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's only output: one line on stderr, nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    return captured.err


@pytest.mark.parametrize("port", ["99999", "65536", "0", "-1", "http", "8O00", "\uff18\uff10", ""])
def test_demo_bad_port_exits_2(fake_uvicorn: _FakeUvicorn, port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A port that is not 1 to 65535 is one line of error and exit code 2, before anything is served."""
    assert main(["demo", f"--port={port}", "--backend", "memory://"]) == 2
    assert _one_error_line(capsys) == (
        f"asession: error: argument --port: {port!r} is not a port number; use one from 1 to 65535.\n"
    )
    assert fake_uvicorn.calls == []


def test_demo_port_99999_in_a_fresh_interpreter() -> None:
    """``asession demo --port 99999`` prints one line and exits 2, where it used to print a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "asession", "demo", "--port", "99999", "--backend", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "asession: error: argument --port: '99999' is not a port number; use one from 1 to 65535.\n"


def test_demo_port_in_use_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A port another process listens on is one line naming the address, exit code 2; uvicorn never starts."""
    import socket

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("uvicorn.run was called"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port), "--backend", "memory://"]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"asession: error: cannot listen on 127.0.0.1:{port}: ")
    assert err.endswith(". Choose another --host or --port.\n")


def test_demo_store_down_exits_1(fake_uvicorn: _FakeUvicorn, capsys: pytest.CaptureFixture[str]) -> None:
    """A store that cannot be reached is one line naming it (password hidden) and exit code 1, not a traceback."""
    assert main(["demo", "--backend", "postgresql://app:hunter2@127.0.0.1:1/app"]) == 1
    err = _one_error_line(capsys)
    assert err.startswith("asession: error: could not open the session store")
    assert "127.0.0.1:1" in err and "hunter2" not in err
    assert fake_uvicorn.calls == []


def test_demo_store_misconfigured_exits_2(
    fake_uvicorn: _FakeUvicorn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite file in a directory that does not exist is a configuration error: one line, exit code 2."""
    assert main(["demo", "--backend", f"sqlite:///{tmp_path}/missing/sessions.sqlite3"]) == 2
    assert "missing" in _one_error_line(capsys)
    assert fake_uvicorn.calls == []


# -- sessions and revoke -----------------------------------------------------------------------------------

#: When the first login of these tests happens (the clock fixture is set to it).
START = datetime(2026, 11, 30, 20, 7, 20, tzinfo=timezone.utc)
HEADER = ["ID", "CREATED", "LAST", "SEEN", "EXPIRES", "USER", "AGENT"]


@pytest.fixture
def url(tmp_path: Path, clock: Clock) -> str:
    """A SQLite session database that exists (empty), with the clock at ``START``."""
    clock.current = START
    database_url = f"sqlite:///{tmp_path}/s.sqlite3"

    async def create() -> None:
        async with DatabaseBackend(database_url):
            pass

    asyncio.run(create())
    return database_url


def _log_in(url: str, user_id: str, user_agent: str | None = None) -> str:
    """Sign ``user_id`` in on a new session stored at ``url`` (with ``user_agent``); return the session's id."""

    async def log_in() -> str:
        async with DatabaseBackend(url) as backend:
            session = Session(backend)
            if user_agent is not None:
                session._headers = [(b"user-agent", user_agent.encode("latin-1"))]
            await session.login(user_id)
            assert session.session_key is not None
            handle = backend.handle(session.session_key, user_id)
            assert handle is not None
            return handle

    return asyncio.run(log_in())


def _listed(url: str, user_id: str) -> list[str]:
    """The ids of ``user_id``'s live sessions, as ``asession sessions --json`` prints them."""

    async def listed() -> list[str]:
        async with DatabaseBackend(url) as backend:
            return [info.id for info in await backend.user_sessions(user_id)]

    return asyncio.run(listed())


def _json_listing(user_id: str, url: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["sessions", url, f"--user={user_id}", "--json"]) == 0
    listing: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return listing


def test_sessions_prints_a_table_newest_first(url: str, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """One row per live session of the user, newest first, times in UTC to the second, '-' for no user agent."""
    firefox = _log_in(url, "alice", "Firefox/1")
    clock.advance(90)
    plain = _log_in(url, "alice")
    _log_in(url, "bob", "Safari/2")
    assert main(["sessions", url, "--user", "alice"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].split() == HEADER
    assert lines[1:] == [
        f"{plain}  2026-11-30 20:08:50Z  2026-11-30 20:08:50Z  2026-12-14 20:08:50Z  -",
        f"{firefox}  2026-11-30 20:07:20Z  2026-11-30 20:07:20Z  2026-12-14 20:07:20Z  Firefox/1",
    ]
    # The columns line up under the header.
    assert lines[0].index("CREATED") == lines[1].index("2026") == len(plain) + 2
    assert lines[0].index("USER AGENT") == lines[2].index("Firefox/1")


def test_sessions_json_prints_every_field(url: str, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` prints a list of objects with ISO 8601 UTC times and the whole user agent."""
    agent = "Mozilla/5.0 (X11; Linux x86_64) " + "Gecko/20100101 " * 10 + "Firefox/128.0"
    first = _log_in(url, "alice", agent)
    clock.advance(2.5)
    second = _log_in(url, "alice")
    assert _json_listing("alice", url, capsys) == [
        {
            "id": second,
            "user_id": "alice",
            "created_at": "2026-11-30T20:07:22.500Z",
            "last_seen": "2026-11-30T20:07:22.500Z",
            "expires_at": "2026-12-14T20:07:22.000Z",
            "user_agent": None,
        },
        {
            "id": first,
            "user_id": "alice",
            "created_at": "2026-11-30T20:07:20.000Z",
            "last_seen": "2026-11-30T20:07:20.000Z",
            "expires_at": "2026-12-14T20:07:20.000Z",
            "user_agent": agent,
        },
    ]


def test_sessions_table_truncates_and_escapes_user_agents(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A long user agent is cut to 60 characters in the table; control characters are escaped, not printed."""
    long_agent = "Mozilla/5.0 " + "x" * 200
    _log_in(url, "alice", long_agent)
    _log_in(url, "mallory", "evil\x1b[2J\x07agent")
    assert main(["sessions", url, "--user", "alice"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith("  Mozilla/5.0 " + "x" * 45 + "...")
    assert main(["sessions", url, "--user", "mallory"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].endswith(r"  evil\x1b[2J\x07agent")
    assert "\x1b" not in out and "\x07" not in out
    assert _json_listing("mallory", url, capsys)[0]["user_agent"] == "evil\x1b[2J\x07agent"


def test_sessions_none_exits_0(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A user without live sessions gets one clear line (or an empty JSON list) and exit code 0."""
    _log_in(url, "bob")
    assert main(["sessions", url, "--user", "alice"]) == 0
    assert capsys.readouterr() == ("no live sessions for user 'alice'\n", "")
    assert main(["sessions", url, "--user", "alice", "--json"]) == 0
    assert capsys.readouterr() == ("[]\n", "")


@pytest.mark.parametrize(
    ("command", "user_id", "message"),
    [
        pytest.param("sessions", "", "argument --user: A user id cannot be empty.", id="sessions-empty"),
        pytest.param(
            "sessions", "u" * 257, "argument --user: A user id has at most 256 characters; this one has 257.", id="long"
        ),
        pytest.param("revoke", "", "argument --user: A user id cannot be empty.", id="revoke-empty"),
    ],
)
def test_invalid_user_id_exits_2(
    url: str, command: str, user_id: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id login() would refuse is a usage error: exit code 2 and the reason on stderr."""
    assert main([command, url, f"--user={user_id}"]) == 2
    assert capsys.readouterr() == ("", f"asession: error: {message}\n")


@pytest.mark.parametrize(
    ("argv", "doing"),
    [
        pytest.param(["sessions", "--user", "alice"], "list the sessions of user 'alice'", id="sessions"),
        pytest.param(["revoke", "--user", "alice"], "revoke the sessions of user 'alice'", id="revoke-user"),
        pytest.param(
            ["revoke", "--session", "YWxpY2U.0123456789abcdef0123456789abcdef"],
            "revoke session YWxpY2U.0123456789abcdef0123456789abcdef",
            id="revoke-session",
        ),
    ],
)
def test_unreachable_store_exits_1(argv: list[str], doing: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A server nobody listens on gives exit code 1 and one line naming it, password hidden."""
    assert main([argv[0], "redis://:hunter2@127.0.0.1:1/0", *argv[1:]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"asession: error: could not {doing}: ")
    assert captured.err.count("\n") == 1
    assert "redis://:***@127.0.0.1:1/0" in captured.err
    assert "hunter2" not in captured.err


@pytest.mark.parametrize("command", ["sessions", "revoke"])
def test_missing_sqlite_file_exits_2(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped SQLite path is reported, not created (as by clearsessions)."""
    database = tmp_path / "typo.sqlite3"
    assert main([command, f"sqlite:///{database}", "--user", "alice"]) == 2
    assert f"There is no SQLite session database at '{database}'" in capsys.readouterr().err
    assert not database.exists()


def test_sessions_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scheme is a configuration error, password hidden."""
    assert main(["sessions", "mongodb://admin:hunter2@127.0.0.1/s", "--user", "alice"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("asession: error: Unknown session backend scheme 'mongodb'")
    assert "hunter2" not in captured.err


def test_revoke_user_ends_every_session(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``revoke --user`` ends all the user's sessions, says how many, and leaves other users alone."""
    for agent in ("Firefox/1", "Chrome/2", None):
        _log_in(url, "alice", agent)
    bob = _log_in(url, "bob")
    assert main(["revoke", url, "--user", "alice"]) == 0
    assert capsys.readouterr() == ("revoked 3 sessions of user 'alice'\n", "")
    assert main(["sessions", url, "--user", "alice"]) == 0
    assert capsys.readouterr().out == "no live sessions for user 'alice'\n"
    assert _listed(url, "bob") == [bob]
    # Nothing left to end: exit code 3.
    assert main(["revoke", url, "--user", "alice"]) == EXIT_NOT_FOUND == 3
    assert capsys.readouterr() == ("no live sessions for user 'alice'\n", "")


def test_revoke_user_one_session_is_singular(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _log_in(url, "alice")
    assert main(["revoke", url, "--user", "alice"]) == 0
    assert capsys.readouterr().out == "revoked 1 session of user 'alice'\n"


def test_revoke_session_ends_only_that_one(url: str, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """``revoke --session`` ends the session with that id; the user's other session is still listed."""
    laptop = _log_in(url, "alice", "Firefox/1")
    clock.advance(10)
    phone = _log_in(url, "alice", "Safari/2")
    assert main(["revoke", url, "--session", laptop]) == 0
    assert capsys.readouterr() == (f"revoked session {laptop}\n", "")
    assert main(["sessions", url, "--user", "alice"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"{phone}  2026-11-30 20:07:30Z")
    assert lines[1].endswith("  Safari/2")
    # The same id again: nothing to end.
    assert main(["revoke", url, "--session", laptop]) == EXIT_NOT_FOUND
    assert capsys.readouterr() == (f"no live session {laptop}\n", "")
    assert _listed(url, "alice") == [phone]


def test_revoke_unknown_session_exits_3(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A well-formed id no live session has ends nothing: exit code 3, the other sessions stay."""
    real = _log_in(url, "alice")
    unknown = real.split(".")[0] + ".0123456789abcdef0123456789abcdef"
    assert main(["revoke", url, "--session", unknown]) == EXIT_NOT_FOUND
    assert capsys.readouterr() == (f"no live session {unknown}\n", "")
    assert _listed(url, "alice") == [real]


@pytest.mark.parametrize(
    "session_id", ["nonsense", "", "YWxpY2U.0123", ".0123456789abcdef0123456789abcdef", "x\x1b[2J.y"]
)
def test_revoke_malformed_session_id_exits_2(url: str, session_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Text that is no session id is a usage error, quoted so control characters stay harmless."""
    assert main(["revoke", url, f"--session={session_id}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"asession: error: argument --session: {session_id!r} is not a session id; "
        "`asession sessions URL --user ID` lists them\n"
    )
    assert "\x1b" not in captured.err


def test_revoke_except_session_keeps_one(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--except-session`` ends every other session of the user and keeps that one."""
    keep = _log_in(url, "alice", "Firefox/1")
    for _ in range(2):
        _log_in(url, "alice")
    bob = _log_in(url, "bob")
    assert main(["revoke", url, "--user", "alice", "--except-session", keep]) == 0
    assert capsys.readouterr() == (f"revoked 2 other sessions of user 'alice', kept {keep}\n", "")
    assert _listed(url, "alice") == [keep]
    assert _listed(url, "bob") == [bob]
    assert main(["revoke", url, "--user", "alice", "--except-session", keep]) == EXIT_NOT_FOUND
    assert capsys.readouterr() == ("no other live sessions for user 'alice'\n", "")
    assert _listed(url, "alice") == [keep]


def test_revoke_except_session_not_live_revokes_nothing(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """When the session to keep is not live (a typo, or it ended), nothing is revoked: exit code 3."""
    live = _log_in(url, "alice")
    gone = live.split(".")[0] + ".0123456789abcdef0123456789abcdef"
    assert main(["revoke", url, "--user", "alice", "--except-session", gone]) == EXIT_NOT_FOUND
    assert capsys.readouterr() == (
        "",
        f"asession: error: no live session {gone} of user 'alice' to keep; nothing was revoked\n",
    )
    assert _listed(url, "alice") == [live]


def test_revoke_except_session_of_another_user_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Keeping a session of another user is a usage error; nothing is revoked."""
    alice = _log_in(url, "alice")
    bob = _log_in(url, "bob")
    assert main(["revoke", url, "--user", "alice", "--except-session", bob]) == 2
    assert (
        capsys.readouterr().err
        == f"asession: error: argument --except-session: session {bob} is not one of user 'alice'\n"
    )
    assert _listed(url, "alice") == [alice]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param([], "one of the arguments --user --session is required", id="neither"),
        pytest.param(
            ["--user", "alice", "--session", "YWxpY2U.0123456789abcdef0123456789abcdef"],
            "argument --session: not allowed with argument --user",
            id="both",
        ),
        pytest.param(
            ["--session", "YWxpY2U.0123456789abcdef0123456789abcdef", "--except-session", "x.y"],
            "argument --except-session: only allowed with --user",
            id="except-without-user",
        ),
    ],
)
def test_revoke_needs_exactly_one_target(
    url: str, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--user`` and ``--session`` exclude each other and one is required: argparse exits with code 2."""
    _log_in(url, "alice")
    assert main(["revoke", url, *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: asession revoke ")
    assert captured.err.endswith(f"asession revoke: error: {message}\n")
    assert len(_listed(url, "alice")) == 1


def test_sessions_needs_user(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", url]) == 2
    assert capsys.readouterr().err.endswith("asession sessions: error: the following arguments are required: --user\n")


@pytest.mark.parametrize(
    "user_id",
    ["../x", "*", "%", "alice%", "a_ice", "two words", "Zoë 山田", "-dash", "a\x1b[2Jb\n", "'quoted\"", "u" * 256],
)
def test_odd_user_ids(url: str, user_id: str, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    """Any id login() accepts is listed and revoked as it is, matching no other user, printed quoted."""
    alice = _log_in(url, "alice")
    first = _log_in(url, user_id, "Firefox/1")
    clock.advance(1)
    second = _log_in(url, user_id)
    listing = _json_listing(user_id, url, capsys)
    assert [entry["id"] for entry in listing] == [second, first]
    assert {entry["user_id"] for entry in listing} == {user_id}
    assert main(["sessions", url, f"--user={user_id}"]) == 0
    table = capsys.readouterr().out
    assert [line.split()[0] for line in table.splitlines()[1:]] == [second, first]
    assert main(["revoke", url, f"--user={user_id}", f"--except-session={second}"]) == 0
    assert capsys.readouterr().out == f"revoked 1 other session of user {user_id!r}, kept {second}\n"
    assert main(["revoke", url, "--session", second]) == 0
    assert capsys.readouterr().out == f"revoked session {second}\n"
    assert main(["revoke", url, f"--user={user_id}"]) == EXIT_NOT_FOUND
    out = capsys.readouterr().out
    assert out == f"no live sessions for user {user_id!r}\n"
    assert "\x1b" not in out
    assert _listed(url, user_id) == []
    assert _listed(url, "alice") == [alice]


def test_module_lists_and_revokes_sessions(url: str) -> None:
    """``python -m asession sessions`` and ``revoke`` work in a fresh interpreter, with the same exit codes."""
    session_id = _log_in(url, "alice", "Firefox/1")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asession", *argv], capture_output=True, text=True, timeout=30, check=False
        )

    listing = run("sessions", url, "--user", "alice")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[1].startswith(f"{session_id}  ")
    assert listing.stdout.splitlines()[1].endswith("  Firefox/1")
    revoked = run("revoke", url, "--session", session_id)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked session {session_id}\n")
    again = run("revoke", url, "--session", session_id)
    assert (again.returncode, again.stdout) == (3, f"no live session {session_id}\n")


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("memcached", marks=pytest.mark.memcached),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    """The URL of a test server's store: this run's own Redis db, PostgreSQL schema or memcached."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def test_sessions_and_revoke_on_each_server_store(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI lists and ends a user's sessions on the server stores too, from the URL alone, with its exit codes."""
    user_id = f"cli-user-{id(capsys)}"

    async def log_in() -> str:
        async with backend_from_url(server_url) as backend:
            session = Session(backend)
            await session.login(user_id)
            handle = backend.handle(session.session_key, user_id)  # type: ignore[arg-type]
            assert handle is not None
            return handle

    first, second = asyncio.run(log_in()), asyncio.run(log_in())
    assert {entry["id"] for entry in _json_listing(user_id, server_url, capsys)} == {first, second}
    assert main(["revoke", server_url, "--session", first]) == 0
    assert main(["revoke", server_url, "--session", first]) == EXIT_NOT_FOUND
    capsys.readouterr()
    assert [entry["id"] for entry in _json_listing(user_id, server_url, capsys)] == [second]
    assert main(["revoke", server_url, "--user", user_id]) == 0
    assert capsys.readouterr().out == f"revoked 1 session of user {user_id!r}\n"
    assert main(["revoke", server_url, "--user", user_id]) == EXIT_NOT_FOUND
    capsys.readouterr()
    assert _json_listing(user_id, server_url, capsys) == []
