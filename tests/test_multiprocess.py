"""Two uvicorn processes of one app share sessions through Redis or PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.multiprocess_app import BACKEND_ENV, ServerProcess, free_port, uvicorn_command

pytestmark = pytest.mark.multiprocess


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a server both processes use; what the test stored is removed afterwards."""
    from tests.servers import clean_postgres, clean_redis

    url: str = request.getfixturevalue(f"{request.param}_url")
    clean = clean_redis if request.param == "redis" else clean_postgres
    yield url
    asyncio.run(clean(url))


@pytest.fixture
def servers(shared_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two uvicorn processes of tests.multiprocess_app on free ports, always stopped afterwards."""
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            port = free_port()
            server = ServerProcess(uvicorn_command(port), port, env={BACKEND_ENV: shared_url})
            started.append(server)
            server.start()
        yield started[0], started[1]
    finally:
        for server in started:
            server.close()


def test_session_created_in_one_process_is_changed_in_the_other(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """A session started through one process is read and changed through the other, and back."""
    first, second = servers
    with httpx.Client(timeout=10) as client:  # one cookie jar: cookies on 127.0.0.1 ignore the port
        created = client.post(f"{first.url}/login", json={"user": "ada"}).json()
        read = client.get(f"{second.url}/session").json()
        assert read["pid"] != created["pid"]
        assert read["key"] == created["key"]
        assert read["data"] == {"user": "ada"}
        client.post(f"{second.url}/session", json={"cart": ["apple"]})
        assert client.get(f"{first.url}/session").json()["data"] == {"user": "ada", "cart": ["apple"]}


def test_logout_in_one_process_is_seen_by_the_other(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Signing out through one process ends the session for the other, even with the old cookie."""
    first, second = servers
    with httpx.Client(timeout=10) as client:
        key = client.post(f"{first.url}/login", json={"user": "ada"}).json()["key"]
        assert client.get(f"{second.url}/session").json()["data"] == {"user": "ada"}
        response = client.post(f"{second.url}/logout")
        assert "Max-Age=0" in response.headers["set-cookie"]
    with httpx.Client(timeout=10, headers={"Cookie": f"session={key}"}) as replay:
        state = replay.get(f"{first.url}/session").json()
    assert (state["key"], state["data"]) == (None, {})
