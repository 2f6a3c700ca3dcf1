"""CacheBackend quirks: JSON in the store, URL parsing, unreachable servers, borrowed caches, memcached TTLs."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiocache import MemcachedCache, RedisCache, SimpleMemoryCache
from aiocache.serializers import PickleSerializer

from asession import keys
from asession.backends.base import BackendState, SessionBackend
from asession.backends.cache import KEY_PREFIX, MEMCACHED_MAX_RELATIVE_TTL, CacheBackend
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured

DAY = 86400


def raw_key(key: str) -> str:
    return KEY_PREFIX + keys.storage_key(key)


def with_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


class ClosingSpy(SimpleMemoryCache):  # type: ignore[misc]  # aiocache is untyped
    """A memory cache that records whether anyone closed it."""

    closed = False

    async def _close(self, *args: Any, **kwargs: Any) -> None:
        self.closed = True


# -- URLs and construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["cache+memory://", "memory://"])
async def test_memory_urls_build_an_in_process_cache(url: str) -> None:
    """cache+memory:// (backend_from_url) and memory:// (the constructor) give a working in-process cache."""
    backend = CacheBackend.from_url(url)
    assert repr(backend) == "<CacheBackend memory://>"
    key = keys.new_key()
    async with backend:
        await backend.save(key, {"v": 1}, DAY)
        assert await backend.load(key) == {"v": 1}


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1",
        "redis://:s3cret@127.0.0.1:6379/not-a-db",
        "redis://:s3cret@127.0.0.1:6379/0?socket_timeout=soon",
        "redis://:s3cret@127.0.0.1:port/0",
        "memcached://user:s3cret@127.0.0.1:11211",
        "memcached://127.0.0.1:11211/0",
        "memcached://127.0.0.1:11211?pool_size=0",
        "memcached://127.0.0.1:11211?timeout=3",
    ],
)
def test_malformed_url_raises_improperly_configured_without_password(url: str) -> None:
    """A URL CacheBackend cannot use fails at construction, and the message hides any password."""
    with pytest.raises(ImproperlyConfigured, match="CacheBackend cannot use") as info:
        CacheBackend(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("value", [42, None, {"url": "redis://"}])
def test_object_that_is_not_a_cache_raises_improperly_configured(value: object) -> None:
    """Anything but a URL or an aiocache cache is refused with what was given."""
    with pytest.raises(ImproperlyConfigured, match="aiocache cache or a URL"):
        CacheBackend(value)


@pytest.mark.parametrize(
    ("hidden", "url", "hint"),
    [
        ("aiocache", "memory://", "asession[cache]"),
        ("aiocache", "memcached://127.0.0.1:11211", "asession[memcached]"),
        ("aiomcache", "memcached://127.0.0.1:11211", "asession[memcached]"),
    ],
)
def test_missing_extra_raises_install_hint(monkeypatch: pytest.MonkeyPatch, hidden: str, url: str, hint: str) -> None:
    """A URL whose client library is missing fails at construction naming the package and the extra."""
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(ImproperlyConfigured) as info:
        CacheBackend(url)
    assert f"CacheBackend needs {hidden}" in str(info.value)
    assert f"pip install '{hint}'" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0"])
def test_redis_urls_need_neither_aiocache_nor_redis_py(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Redis URLs go through asession's own client: they build with aiocache and redis-py both missing."""
    monkeypatch.setitem(sys.modules, "aiocache", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    assert repr(CacheBackend(url)) == f"<CacheBackend {url}>"


# -- caches handed in by the user ----------------------------------------------------------------------------


async def test_user_supplied_cache_is_used_but_not_closed() -> None:
    """A cache instance handed in holds the sessions, and stays open when the backend closes."""
    cache = ClosingSpy()
    key = keys.new_key()
    async with CacheBackend(cache) as backend:
        await backend.save(key, {"v": 1}, DAY)
        assert await cache.get(raw_key(key)) == '{"v":1}'
    assert not cache.closed
    await cache.close()
    assert cache.closed


async def test_user_supplied_pickle_cache_still_stores_json() -> None:
    """Whatever serializer the user's cache has, asession stores its JSON text, never a pickle."""
    cache = SimpleMemoryCache(serializer=PickleSerializer())
    key = keys.new_key()
    async with CacheBackend(cache) as backend:
        await backend.save(key, {"v": [1, "a"]}, DAY)
        assert cache._cache[raw_key(key)] == '{"v":[1,"a"]}'
        assert await backend.load(key) == {"v": [1, "a"]}


class Interrupting(SimpleMemoryCache):  # type: ignore[misc]  # aiocache is untyped
    """A memory cache whose calls are cut short (a timeout), and whose values cannot be decoded."""

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise asyncio.TimeoutError

    set = add = exists = delete = _fail


async def test_user_supplied_cache_interrupted_and_undecodable() -> None:
    """Interrupted calls surface as BackendUnavailableError; undecodable values load as empty sessions."""
    cache = Interrupting()
    backend = CacheBackend(cache)
    backend._state = BackendState.OPEN  # its exists() check at open is interrupted too
    key = keys.new_key()
    assert await backend.load(key) is None
    for call in (backend.save(key, {}, DAY), backend.save(key, {}, DAY, must_create=True), backend.exists(key)):
        with pytest.raises(BackendUnavailableError, match="TimeoutError"):
            await call
    with pytest.raises(BackendUnavailableError):
        await backend.delete(key)


# -- Redis ----------------------------------------------------------------------------------------------------


async def test_unreachable_redis_at_open_names_url_without_password() -> None:
    """A Redis server that is down makes open() raise BackendUnavailableError naming the URL, password hidden."""
    backend = CacheBackend("redis://:s3cret@127.0.0.1:1/15")
    with pytest.raises(BackendUnavailableError) as info:
        await backend.open()
    assert "redis://:***@127.0.0.1:1/15" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert not backend.is_open


@pytest.mark.redis
async def test_redis_stores_json_text_under_hashed_key(redis_backend: SessionBackend, redis_url: str) -> None:
    """The value Redis holds is the session's JSON text, under asession:<sha256>, with the expiry age as TTL."""
    import redis.asyncio as aioredis

    key = keys.new_key()
    data = {"cat": "dog", "é": [1, None]}
    await redis_backend.save(key, data, 600)
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(raw_key(key))
        ttl = await client.ttl(raw_key(key))
    finally:
        await client.aclose()
    assert isinstance(raw, bytes)
    assert json.loads(raw.decode("utf-8")) == data
    assert 590 < ttl <= 600


@pytest.mark.redis
async def test_redis_url_db_number_selects_the_database(redis_url: str) -> None:
    """The URL's path picks the Redis database the sessions go to."""
    import redis.asyncio as aioredis

    db = int(urlsplit(redis_url).path.strip("/") or 0)
    other = 14 if db == 15 else 15
    key = keys.new_key()
    async with CacheBackend(with_db(redis_url, other)) as backend:
        await backend.save(key, {"v": 1}, DAY)
        try:
            for number, expected in [(other, 1), (db, 0)]:
                client = aioredis.Redis.from_url(with_db(redis_url, number))
                try:
                    assert await client.exists(raw_key(key)) == expected
                finally:
                    await client.aclose()
        finally:
            await backend.delete(key)


@pytest.mark.redis
async def test_redis_credentials_reach_the_server(redis_url: str) -> None:
    """The URL's user and password are sent to Redis: unknown ones fail at open, the password hidden."""
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(netloc=f"no-such-asession-user:s3cret@{parts.hostname}:{parts.port or 6379}"))
    with pytest.raises(BackendUnavailableError, match="AuthenticationError") as info:
        await CacheBackend(url).open()
    assert "no-such-asession-user:***@" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.redis
async def test_rediss_url_speaks_tls(redis_url: str) -> None:
    """rediss:// opens a TLS connection, which a plain-text Redis server cannot answer."""
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(scheme="rediss", query="socket_connect_timeout=0.5"))
    backend = CacheBackend(url)
    with pytest.raises(BackendUnavailableError, match="rediss://"):
        await backend.open()
    plain = CacheBackend(urlunsplit(parts._replace(query="socket_connect_timeout=0.5")))
    await plain.open()
    await plain.close()


@pytest.mark.redis
async def test_user_supplied_redis_cache_keeps_its_namespace(redis_url: str) -> None:
    """A RedisCache built by the user (JSON serializer, namespace) gets plain JSON under its namespace."""
    import redis.asyncio as aioredis

    parts = urlsplit(redis_url)
    db = int(parts.path.strip("/") or 0)
    cache = RedisCache(endpoint=parts.hostname, port=parts.port or 6379, db=db, namespace="myapp")
    key = keys.new_key()
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with CacheBackend(cache) as backend:
            await backend.save(key, {"v": 1}, DAY)
            assert await client.get("myapp:" + raw_key(key)) == b'{"v":1}'
            assert await backend.load(key) == {"v": 1}
            await backend.delete(key)
            assert await client.exists("myapp:" + raw_key(key)) == 0
    finally:
        await client.aclose()
        await cache.client.aclose()


@pytest.mark.redis
async def test_redis_open_and_close_emit_no_warnings(redis_url: str) -> None:
    """Saving, opening and closing over Redis raises no deprecation warning (aiocache's close() and set() would)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with CacheBackend(redis_url) as backend:
            key = keys.new_key()
            await backend.save(key, {"v": 1}, DAY)
            await backend.delete(key)
    assert [str(warning.message) for warning in caught] == []


# -- memcached ------------------------------------------------------------------------------------------------


async def test_unreachable_memcached_at_open_raises() -> None:
    """A memcached server that is down makes open() raise BackendUnavailableError naming the URL."""
    with pytest.raises(BackendUnavailableError, match=r"memcached://127\.0\.0\.1:1\b"):
        await CacheBackend("memcached://127.0.0.1:1").open()


@pytest.mark.memcached
async def test_memcached_stores_json_text(memcached_backend: SessionBackend, memcached_url: str) -> None:
    """The value memcached holds is the session's JSON text under asession:<sha256>."""
    import aiomcache

    key = keys.new_key()
    data = {"cat": "dog", "é": [1, None]}
    await memcached_backend.save(key, data, 600)
    parts = urlsplit(memcached_url)
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    try:
        raw = await client.get(raw_key(key).encode())
    finally:
        await client.close()
    assert raw is not None
    assert json.loads(raw.decode("utf-8")) == data


@pytest.mark.memcached
async def test_memcached_expiry_over_thirty_days_is_kept(memcached_backend: SessionBackend) -> None:
    """An expiry age over 30 days, which memcached would read as a date in 1970, keeps the session alive."""
    key = keys.new_key()
    await memcached_backend.save(key, {"v": 1}, 40 * DAY)
    assert await memcached_backend.load(key) == {"v": 1}
    assert await memcached_backend.exists(key)


def test_memcached_ttl_over_thirty_days_becomes_a_timestamp() -> None:
    """Ages up to 30 days are passed as they are; longer ones as an absolute Unix time."""
    backend = CacheBackend("memcached://127.0.0.1:11211")
    assert backend._ttl(MEMCACHED_MAX_RELATIVE_TTL) == MEMCACHED_MAX_RELATIVE_TTL
    assert abs(backend._ttl(40 * DAY) - (time.time() + 40 * DAY)) < 5
    assert CacheBackend("redis://127.0.0.1:6379/0")._ttl(40 * DAY) == 40 * DAY


class SlowFirstReply:
    """A fake memcached that answers every get with the key's name, but answers the very first get late."""

    DELAY = 0.3

    def __init__(self) -> None:
        self.first = True
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while line := await reader.readline():
                command, key, *_ = line.split()
                if command == b"append":
                    await reader.readline()
                    writer.write(b"NOT_STORED\r\n")
                elif command == b"get":
                    if self.first:
                        self.first = False
                        await asyncio.sleep(self.DELAY)
                    value = json.dumps({"key": key.decode()}).encode()
                    writer.write(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value))
                await writer.drain()
        except ConnectionError:
            pass  # the client hung up on a late reply
        finally:
            writer.close()


@pytest.fixture
async def slow_memcached() -> AsyncIterator[int]:
    fake = SlowFirstReply()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
    # Each handler ends when the client closes its connection; wait so no socket outlives the test.
    await asyncio.wait_for(asyncio.gather(*fake.handlers), timeout=5)


async def test_memcached_timeout_does_not_leave_a_stale_reply(slow_memcached: int) -> None:
    """After a timed-out get, the next get reads its own reply, not the late one left on the connection."""
    cache = MemcachedCache(endpoint="127.0.0.1", port=slow_memcached, pool_size=1, timeout=0.2)
    first, second = keys.new_key(), keys.new_key()
    try:
        async with CacheBackend(cache) as backend:
            with pytest.raises(BackendUnavailableError):
                await backend.load(first)
            await asyncio.sleep(SlowFirstReply.DELAY)  # the late reply to the first get has arrived by now
            assert await backend.load(second) == {"key": raw_key(second)}
    finally:
        await cache.close()
