"""Two uvicorn processes of one app share sessions through Redis or PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.multiprocess_app import BACKEND_ENV, ServerProcess, two_servers

pytestmark = pytest.mark.multiprocess


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_url(request: pytest.FixtureRequest, key_log: Path) -> Iterator[str]:
    """The URL of a server both processes use; what the test stored is removed afterwards.

    PostgreSQL: the run's own schema, emptied. Redis: the keys the processes logged to ``key_log``, deleted.
    """
    from tests.servers import clean_postgres, clean_redis, read_key_log

    url: str = request.getfixturevalue(f"{request.param}_url")
    yield url
    if request.param == "redis":
        asyncio.run(clean_redis(url, read_key_log(key_log)))
    else:
        asyncio.run(clean_postgres(url))


@pytest.fixture
def key_log(tmp_path: Path) -> Path:
    """The file where the server processes write the storage keys they compute (see tests/servers.py)."""
    return tmp_path / "stored-keys.txt"


@pytest.fixture
def servers(shared_url: str, key_log: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two uvicorn processes of tests.multiprocess_app on free ports, always stopped afterwards."""
    from tests.servers import KEY_LOG_ENV

    with two_servers({BACKEND_ENV: shared_url, KEY_LOG_ENV: str(key_log)}) as servers:
        yield servers


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


def test_overlapping_writes_through_two_processes_all_survive(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Forty-eight concurrent requests of one session, split over both processes, each keep their own key."""
    first, second = servers

    async def run() -> dict[str, object]:
        async with httpx.AsyncClient(timeout=20) as client:
            key = (await client.post(f"{first.url}/login", json={"user": "ada"})).json()["key"]
            headers = {"Cookie": f"session={key}"}
            responses = await asyncio.gather(
                *(
                    client.post(f"{(first, second)[i % 2].url}/session", json={f"k{i}": i}, headers=headers)
                    for i in range(48)
                )
            )
            assert [r.status_code for r in responses] == [200] * 48
            data: dict[str, object] = (await client.get(f"{second.url}/session", headers=headers)).json()["data"]
            return data

    assert asyncio.run(run()) == {"user": "ada", **{f"k{i}": i for i in range(48)}}


def test_writes_racing_a_logout_in_the_other_process_never_restore_it(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Writes racing a logout through the other process get 200 (before it) or 400 (after it), never a comeback."""
    first, second = servers

    async def run() -> tuple[list[int], dict[str, object]]:
        async with httpx.AsyncClient(timeout=20) as client:
            key = (await client.post(f"{first.url}/login", json={"user": "ada"})).json()["key"]
            headers = {"Cookie": f"session={key}"}
            writes = [client.post(f"{first.url}/session", json={f"k{i}": i}, headers=headers) for i in range(24)]
            logout = client.post(f"{second.url}/logout", headers=headers)
            *answers, out = await asyncio.gather(*writes[:12], logout, *writes[12:])
            statuses = [r.status_code for r in answers]
            after = (await client.get(f"{first.url}/session", headers=headers)).json()
            return statuses, after

    statuses, after = asyncio.run(run())
    assert set(statuses) <= {200, 400}
    assert (after["key"], after["data"]) == (None, {})


def test_login_through_one_process_is_listed_and_revoked_through_the_other(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """The per-user index lives in the shared store: what one worker records, the other lists and ends."""
    first, second = servers
    with (
        httpx.Client(timeout=10, headers={"user-agent": "Device/A"}) as device_a,
        httpx.Client(timeout=10, headers={"user-agent": "Device/B"}) as device_b,
    ):
        device_a.post(f"{first.url}/signin", json={"user": "ada"})
        device_b.post(f"{second.url}/signin", json={"user": "ada"})
        listed = device_a.get(f"{second.url}/devices", params={"user": "ada"}).json()
        assert sorted(item["user_agent"] for item in listed) == ["Device/A", "Device/B"]
        target = next(item["id"] for item in listed if item["user_agent"] == "Device/B")
        assert device_a.post(f"{first.url}/revoke", json={"id": target}).json() == {"ended": True}
        assert device_b.get(f"{first.url}/session").json()["data"] == {}  # signed out, through either worker
        assert device_b.get(f"{second.url}/session").json()["data"] == {}
        assert [item["user_agent"] for item in device_a.get(f"{first.url}/devices", params={"user": "ada"}).json()] == [
            "Device/A"
        ]
        assert device_a.get(f"{second.url}/session").json()["data"] == {"_auth_user_id": "ada"}
