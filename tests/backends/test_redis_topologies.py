"""RedisBackend on real topologies: Sentinel failovers under two uvicorn processes, a cluster losing a master,
clients handed in, and the URLs of both.

The contract, update, users and concurrency suites run on a cluster and on a redis-py client handed in through
``tests/conftest.py`` (``redis-cluster``, ``redis-py-client``); this module holds what only topologies have.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from asession import SessionConfig, SessionMiddleware
from asession.backends import backend_from_url
from asession.backends._redis_py import parse_topology_url
from asession.backends.cache import CacheBackend
from asession.backends.redis import RedisBackend
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured
from tests.multiprocess_app import BACKEND_ENV, ServerProcess, show, two_servers, update
from tests.redis_topologies import RedisCluster, RedisSentinel, command, running_sentinel, wait_replicated

pytestmark = pytest.mark.redis

DAY = 86400


# -- URLs ------------------------------------------------------------------------------------------------------


def test_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    options = parse_topology_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3"
        "?socket_timeout=0.5&sentinel_password=s3&max_connections=8"
    )
    assert options.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (options.service, options.db, options.username, options.password) == ("mymaster", 3, "app", "p@ss")
    assert (options.socket_timeout, options.sentinel_password, options.max_connections) == (0.5, "s3", 8)


def test_cluster_url_names_seed_nodes() -> None:
    options = parse_topology_url("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001?client_name=web")
    assert options.hosts == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert (options.password, options.client_name, options.service) == ("pw", "web", None)


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("redis+sentinel://127.0.0.1:26379", "master the sentinels watch"),
        ("redis+sentinel://127.0.0.1:26379/", "master the sentinels watch"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/x", "database number"),
        ("redis+sentinel://127.0.0.1:26379/mymaster?retry=1", "unknown option 'retry'"),
        ("redis+sentinel://127.0.0.1:notaport/mymaster", "'127.0.0.1:notaport'"),
        ("redis+sentinel://127.0.0.1:26379,,127.0.0.2/mymaster", "empty entry"),
        ("redis+cluster://127.0.0.1:7000/0", "has no path"),
        ("redis+cluster://127.0.0.1:99999", "'127.0.0.1:99999'"),
        ("redis+cluster://:pw@/", "names no host"),
        ("redis+cluster://:7000", "has no name"),
        ("redis+cluster://127.0.0.1:7000?socket_timeout=soon", "'socket_timeout'"),
        ("redis+cluster://127.0.0.1:7000?read_from_replicas=1", "unknown option 'read_from_replicas'"),
    ],
)
def test_malformed_topology_urls_name_the_part_and_hide_the_password(url: str, part: str) -> None:
    secret_url = url.replace("://", "://user:s3cret@", 1) if "@" not in url else url
    with pytest.raises(ImproperlyConfigured) as info:
        backend_from_url(secret_url)
    assert part in str(info.value)
    assert "s3cret" not in str(info.value)


def test_cache_backend_is_an_alias_for_every_redis_url() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis+sentinel://127.0.0.1:26379/m", "redis+cluster://127.0.0.1:7000"):
        assert type(CacheBackend(url)) is RedisBackend
        assert type(backend_from_url(url)) is RedisBackend


def test_objects_that_are_not_redis_clients_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="redis-py asyncio client"):
        RedisBackend(object())


# -- a client handed in ------------------------------------------------------------------------------------------


async def test_a_client_handed_in_is_used_and_never_closed(redis_url: str) -> None:
    import redis.asyncio

    from tests.servers import clean_redis

    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)  # a client that decodes replies too
    stored: list[str] = []
    try:
        async with RedisBackend(client) as backend:
            key = await backend.create({"cart": [1, 2]}, DAY)
            stored.append(backend._storage_key(key))
            await backend.update(key, {"user": "ann"}, [], DAY)
            assert await backend.load(key) == {"cart": [1, 2], "user": "ann"}
            assert repr(backend) == "<RedisBackend Redis handed in>"
        assert await client.ping()  # still the caller's, still open
        assert type(CacheBackend(client)) is RedisBackend
    finally:
        await clean_redis(redis_url, stored)
        await client.aclose()


async def test_a_sentinel_master_for_client_handed_in_follows_the_master(tmp_path: Path) -> None:
    from redis.asyncio.sentinel import Sentinel

    with running_sentinel(tmp_path) as topology:
        sentinel = Sentinel([("127.0.0.1", topology.sentinel_port)])  # type: ignore[no-untyped-call]
        client = sentinel.master_for(topology.service)
        async with RedisBackend(client) as backend:
            key = await backend.create({"n": 1}, DAY)
            await asyncio.to_thread(topology.failover)
            assert await _eventually(lambda: backend.load(key)) == {"n": 1}
            await _eventually(lambda: backend.update(key, {"n": 2}, [], DAY))
            assert await backend.load(key) == {"n": 2}
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()


async def _eventually(call: object, timeout: float = 20.0) -> object:
    """``await call()`` until it stops raising BackendUnavailableError (a failover in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()  # type: ignore[operator]
        except BackendUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_wrong_password_names_the_server_hides_the_password_and_never_hangs(tmp_path: Path) -> None:
    from tests.servers import running_redis

    with running_redis(tmp_path, "--requirepass", "right-one") as server:
        for url in (
            f"redis://:wrong-one@127.0.0.1:{server.port}/0",
            f"redis+cluster://:wrong-one@127.0.0.1:{server.port}",
        ):
            backend = RedisBackend(url)
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError) as info:
                await backend.open()
            assert time.monotonic() - started < 6
            assert f"127.0.0.1:{server.port}" in str(info.value)
            assert "wrong-one" not in str(info.value)


# -- Sentinel: failovers under load from two uvicorn processes ------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    with running_sentinel(tmp_path) as topology:
        yield topology


@pytest.fixture
def two_apps(sentinel: RedisSentinel) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with two_servers({BACKEND_ENV: sentinel.url}) as servers:
        yield servers


class Load:
    """Requests of known sessions through both processes, round and round, counting the answers."""

    def __init__(self, apps: tuple[ServerProcess, ServerProcess], cookies: list[str]) -> None:
        self.apps = apps
        self.cookies = cookies
        self.statuses: Counter[int] = Counter()
        self.wrong: list[str] = []
        self.stopped = False

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            turn = 0
            while not self.stopped:
                turn += 1
                index = turn % len(self.cookies)
                app = self.apps[turn % 2]
                headers = {"Cookie": f"session={self.cookies[index]}"}
                if turn % 3:
                    response = await client.get(f"{app.url}/session", headers=headers)
                else:
                    response = await client.post(f"{app.url}/session", headers=headers, json={"hits": turn})
                self.statuses[response.status_code] += 1
                if response.status_code == 200 and response.json()["data"].get("n") != index:
                    self.wrong.append(f"session {index} answered {response.json()['data']}")

    async def until_healthy(self, timeout: float = 30.0) -> None:
        """Wait until a full round of requests answers 200 again (the app recovered by itself)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                codes = [
                    (await client.get(f"{app.url}/session", headers={"Cookie": f"session={cookie}"})).status_code
                    for cookie in self.cookies
                    for app in self.apps
                ]
                if set(codes) == {200}:
                    return
                assert time.monotonic() < deadline, f"the apps did not recover: {Counter(codes)}"
                await asyncio.sleep(0.2)


async def _sessions(apps: tuple[ServerProcess, ServerProcess], count: int) -> list[str]:
    cookies = []
    async with httpx.AsyncClient(timeout=10) as client:
        for index in range(count):
            client.cookies.clear()  # a new visitor each time
            response = await client.post(f"{apps[index % 2].url}/session", json={"n": index})
            assert response.status_code == 200
            cookies.append(response.cookies["session"])
    return cookies


async def _check_kept(apps: tuple[ServerProcess, ServerProcess], cookies: list[str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for index, cookie in enumerate(cookies):
            for app in apps:
                response = await client.get(f"{app.url}/session", headers={"Cookie": f"session={cookie}"})
                assert (response.status_code, response.json()["data"].get("n")) == (200, index)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sentinel_failover_and_a_killed_master_under_load_from_two_processes(
    sentinel: RedisSentinel, two_apps: tuple[ServerProcess, ServerProcess]
) -> None:
    """SENTINEL FAILOVER, then SIGKILL of the new master: sessions saved before each survive, requests during
    them answer 200 or 503 (never 500, never another session), and both processes recover by themselves."""

    async def scenario() -> Load:
        cookies = await _sessions(two_apps, 12)
        load = Load(two_apps, cookies)
        runner = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(0.5)
            first = await asyncio.to_thread(sentinel.failover)
            await load.until_healthy()
            await _check_kept(two_apps, cookies)
            # The old master is a replica of the new one now; once it has every write, kill the new master.
            old = sentinel.master if first == sentinel.replica.port else sentinel.replica
            await asyncio.to_thread(_wait_synced, old.port)
            await asyncio.to_thread(wait_replicated, first)
            killed = sentinel.replica if first == sentinel.replica.port else sentinel.master
            assert killed.process is not None
            os.kill(killed.process.pid, signal.SIGKILL)
            await asyncio.to_thread(_wait_new_master, sentinel, first)
            await load.until_healthy()
            await _check_kept(two_apps, cookies)
        finally:
            load.stopped = True
            await runner
        return load

    load = asyncio.run(scenario())
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.statuses[200] > 50
    assert not load.wrong


def _wait_synced(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while "master_link_status:up" not in command(port, "INFO", "replication"):
        assert time.monotonic() < deadline, f"the server on {port} did not sync with the new master"
        time.sleep(0.1)


def _wait_new_master(sentinel: RedisSentinel, old: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sentinel.master_port() == old:
        assert time.monotonic() < deadline, "the sentinel did not promote the replica of the killed master"
        time.sleep(0.1)


# -- Cluster: a master lost ---------------------------------------------------------------------------------------


async def test_a_topology_refresh_slower_than_the_bound_still_ends(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster's slot-map refresh that takes longer than each call may wait (a loaded machine) runs to its
    end in the background: the calls that give up do not cancel it, and a later call finds the cluster mapped.
    Were each call to cancel the refresh it started, no call would ever succeed again."""
    async with backend_from_url(redis_cluster.url) as backend:
        assert isinstance(backend, RedisBackend)
        adapter = backend._cache
        cluster = adapter.client
        manager = type(cluster.nodes_manager)  # slotted: patched on its class
        refresh = manager.initialize

        async def slow_refresh(self: object, *args: object, **kwargs: object) -> None:
            await asyncio.sleep(0.3)
            await refresh(self, *args, **kwargs)

        monkeypatch.setattr(manager, "initialize", slow_refresh)
        await cluster.aclose()  # what redis-py does on a connection error: the next call refreshes first
        gave_up = 0
        for _ in range(40):
            try:
                assert await asyncio.wait_for(adapter.get("asession-test:absent"), 0.1) is None
                break
            except TimeoutError:
                gave_up += 1
        else:
            pytest.fail("no call succeeded: each one cancelled the refresh it waited for")
        assert 1 <= gave_up <= 10, gave_up  # the first calls gave up; the refresh they left running ended


@pytest.mark.slow
async def test_a_cluster_that_loses_a_master_answers_503_never_a_wrong_session(tmp_path: Path) -> None:
    """Kill one master of three: its sessions answer 503 until its replica takes over, then load again; no
    request ever gets another session's data, and the app (one backend, opened once) recovers by itself."""
    from tests.redis_topologies import running_cluster

    with running_cluster(tmp_path) as cluster:
        backend = backend_from_url(cluster.url)
        app = Starlette(
            routes=[Route("/session", show), Route("/session", update, methods=["POST"])],
            middleware=[Middleware(SessionMiddleware, backend=backend, config=SessionConfig(store_timeout=0.5))],
        )
        transport = httpx.ASGITransport(app=app)
        async with backend, httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            cookies = []
            for index in range(30):  # spread over the three shards by their hashed keys
                client.cookies.clear()  # a new visitor each time
                response = await client.post("/session", json={"n": index})
                cookies.append(response.cookies["session"])
            cluster.replicated()  # a replica without the data would never be promoted
            victim = cluster.masters()[0]
            assert victim.process is not None
            os.kill(victim.process.pid, signal.SIGKILL)
            statuses: Counter[int] = Counter()
            # Two clocks: Redis' own failover (an election among the masters left, which a starved machine
            # can slow), then the app's recovery once the cluster serves every slot again, which is ours.
            deadline = time.monotonic() + 90
            failed_over_at: float | None = None
            client.cookies.clear()
            while True:
                codes = []
                for index, cookie in enumerate(cookies):
                    response = await client.get("/session", headers={"Cookie": f"session={cookie}"})
                    codes.append(response.status_code)
                    if response.status_code == 200:
                        assert response.json()["data"]["n"] == index
                statuses.update(codes)
                if set(codes) == {200}:
                    break
                now = time.monotonic()
                if failed_over_at is None and cluster.failed_over(victim):
                    failed_over_at = now
                if failed_over_at is None:
                    assert now < deadline, (
                        f"Redis did not fail over:\n{command(cluster.nodes[1].port, 'CLUSTER', 'NODES')}"
                    )
                else:
                    assert now < failed_over_at + 15, f"the cluster failed over, the app did not recover: {statuses}"
                await asyncio.sleep(0.2)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0, "the lost master's sessions should have answered 503 for a while"
