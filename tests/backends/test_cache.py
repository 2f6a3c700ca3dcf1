"""CacheBackend quirks: JSON in the store, URL parsing, unreachable servers, borrowed caches, memcached TTLs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiocache import MemcachedCache, RedisCache, SimpleMemoryCache
from aiocache.serializers import PickleSerializer

from asession import keys, serializers
from asession.backends.base import BackendState, SessionBackend
from asession.backends.cache import KEY_PREFIX, MEMCACHED_MAX_RELATIVE_TTL, UPDATE_ATTEMPTS, CacheBackend
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured, SessionError, UpdateError
from tests.conftest import Clock, let_expire

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
    with pytest.raises(ImproperlyConfigured, match="(Cache|Redis)Backend cannot use") as info:
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
    """Redis URLs go through asession's own client: they build with aiocache and redis-py both missing.

    ``CacheBackend(url)`` is an alias: what it builds is a RedisBackend.
    """
    from asession.backends.redis import RedisBackend

    monkeypatch.setitem(sys.modules, "aiocache", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    backend = CacheBackend(url)
    assert type(backend) is RedisBackend and isinstance(backend, CacheBackend)
    assert repr(backend) == f"<RedisBackend {url}>"


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
    """Redis holds the session as JSON text, one field per key, under asession:<sha256>, with the expiry age as TTL."""
    import redis.asyncio as aioredis

    key = keys.new_key()
    data = {"cat": "dog", "é": [1, None]}
    await redis_backend.save(key, data, 600)
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.hgetall(raw_key(key))
        ttl = await client.ttl(raw_key(key))
    finally:
        await client.aclose()
    assert {json.loads(field): json.loads(value) for field, value in raw.items()} == data
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
    """For an aiocache memcached cache, ages up to 30 days pass as they are, longer ones as a Unix time.

    memcached:// URLs go through asession's own client, which converts them itself (test_memcached_client.py).
    """
    from aiocache import MemcachedCache

    backend = CacheBackend(MemcachedCache(endpoint="127.0.0.1", port=11211))
    assert backend._ttl(MEMCACHED_MAX_RELATIVE_TTL) == MEMCACHED_MAX_RELATIVE_TTL
    assert abs(backend._ttl(40 * DAY) - (time.time() + 40 * DAY)) < 5
    assert CacheBackend("redis://127.0.0.1:6379/0")._ttl(40 * DAY) == 40 * DAY
    assert CacheBackend("memcached://127.0.0.1:11211")._ttl(40 * DAY) == 40 * DAY


@pytest.mark.parametrize("hidden", ["aiocache", "aiomcache"])
def test_memcached_url_needs_neither_aiocache_nor_aiomcache(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    """memcached:// URLs use asession's own client, so they work without aiocache or aiomcache installed."""
    monkeypatch.setitem(sys.modules, hidden, None)
    assert CacheBackend("memcached://127.0.0.1:11211")._cache is None  # built at open, nothing imported


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


# -- updates: concurrent requests of one session (issue #11) -----------------------------------------------------

CACHE_STORES = [
    pytest.param("cache_memory_backend", id="memory"),
    pytest.param("redis_backend", id="redis", marks=pytest.mark.redis),
    pytest.param("memcached_backend", id="memcached", marks=pytest.mark.memcached),
]


@pytest.fixture(params=CACHE_STORES)
def cache_backend(request: pytest.FixtureRequest) -> CacheBackend:
    """CacheBackend on each of its stores: in-process memory, Redis (hashes) and memcached."""
    backend: CacheBackend = request.getfixturevalue(request.param)
    return backend


async def test_update_merges_into_the_session_stored_now(cache_backend: CacheBackend) -> None:
    """Two updates made from the same stale view, each of its own key, both survive with the untouched key."""
    key = keys.new_key()
    await cache_backend.save(key, {"a": 1, "b": 1, "kept": [1, {"x": None}]}, DAY)
    await cache_backend.update(key, {"a": 2}, (), DAY)
    await cache_backend.update(key, {"b": 2, "c": "é"}, (), DAY)
    assert await cache_backend.load(key) == {"a": 2, "b": 2, "c": "é", "kept": [1, {"x": None}]}


async def test_update_removed_keys_go(cache_backend: CacheBackend) -> None:
    """Removed keys disappear, a removed key that is not stored is no error, and a key both removed and set is set."""
    key = keys.new_key()
    await cache_backend.save(key, {"a": 1, "b": 2, "c": 3}, DAY)
    await cache_backend.update(key, {"c": 4}, ("a", "c", "never-stored"), DAY)
    assert await cache_backend.load(key) == {"b": 2, "c": 4}
    await cache_backend.update(key, {}, ("b", "c"), DAY)
    assert await cache_backend.load(key) == {}
    assert await cache_backend.exists(key)
    await cache_backend.update(key, {"again": True}, (), DAY)
    assert await cache_backend.load(key) == {"again": True}


async def test_update_replace_stores_exactly_the_changes(cache_backend: CacheBackend) -> None:
    """replace=True (a cleared session) drops every stored key, and an empty replacement keeps an empty session."""
    key = keys.new_key()
    await cache_backend.save(key, {"a": 1, "b": 2}, DAY)
    await cache_backend.update(key, {"x": [1]}, ("a",), DAY, replace=True)
    assert await cache_backend.load(key) == {"x": [1]}
    await cache_backend.update(key, {}, (), DAY, replace=True)
    assert await cache_backend.load(key) == {}
    assert await cache_backend.exists(key)


async def test_update_keeps_values_byte_for_byte(cache_backend: CacheBackend) -> None:
    """Empty lists and objects, 20-digit integers and floats survive updates exactly, set or kept."""
    key = keys.new_key()
    values = {"list": [], "obj": {}, "big": 12345678901234567890, "float": 0.1 + 0.2, "nested": [[], {"": []}]}
    await cache_backend.save(key, {"kept": values}, DAY)
    await cache_backend.update(key, {"set": values}, (), DAY)
    assert await cache_backend.load(key) == {"kept": values, "set": values}


async def test_update_odd_keys_are_their_own_fields(cache_backend: CacheBackend) -> None:
    """Keys with quotes, backslashes, non-ASCII text or nothing at all are set and removed like any other."""
    key = keys.new_key()
    odd = ['"', "\\", "é\u2603", "", "a:b,c", "\n"]
    await cache_backend.save(key, {name: index for index, name in enumerate(odd)}, DAY)
    await cache_backend.update(key, {'"': "set", "new\t": 1}, ("é\u2603", ""), DAY)
    assert await cache_backend.load(key) == {'"': "set", "\\": 1, "a:b,c": 4, "\n": 5, "new\t": 1}


async def test_update_of_a_missing_session_raises_update_error_and_creates_nothing(
    cache_backend: CacheBackend,
) -> None:
    """A key with no session stored (never saved, or deleted since) raises UpdateError and stays absent."""
    never, deleted = keys.new_key(), keys.new_key()
    await cache_backend.save(deleted, {"v": 1}, DAY)
    await cache_backend.delete(deleted)
    for key in (never, deleted):
        for replace in (False, True):
            with pytest.raises(UpdateError, match="Nothing was written"):
                await cache_backend.update(key, {"v": 2}, ("v",), DAY, replace=replace)
            assert not await cache_backend.exists(key)


async def test_update_of_an_expired_session_raises_update_error(cache_backend: CacheBackend, clock: Clock) -> None:
    """A session the store's TTL has dropped cannot be updated back to life."""
    key = keys.new_key()
    await cache_backend.save(key, {"v": 1}, 1)
    await let_expire(cache_backend, clock, 1)
    with pytest.raises(UpdateError):
        await cache_backend.update(key, {"v": 2}, (), DAY)
    assert not await cache_backend.exists(key)


async def test_update_refreshes_the_ttl(cache_backend: CacheBackend) -> None:
    """An update gives the session the new expiry age: saved for 1 second, updated for a day, it outlives the second."""
    key = keys.new_key()
    await cache_backend.save(key, {"v": 1}, 1)
    await cache_backend.update(key, {"w": 2}, (), DAY)
    await asyncio.sleep(2.2)
    assert await cache_backend.load(key) == {"v": 1, "w": 2}


async def test_update_of_a_corrupt_session_raises_update_error_and_logs(
    cache_backend: CacheBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage stored under the session's key is never merged into: UpdateError, a warning, the garbage untouched."""
    key = keys.new_key()
    await cache_backend.save(key, {"v": 1}, DAY)
    await cache_backend.entries.set(raw_key(key), '{"v": 1, garbage', DAY)
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        with pytest.raises(UpdateError):
            await cache_backend.update(key, {"w": 2}, (), DAY)
    assert [record.name for record in caplog.records] == ["asession.security"]
    assert "corrupted" in caplog.records[0].getMessage()
    assert await cache_backend.entries.get(raw_key(key)) in ('{"v": 1, garbage', b'{"v": 1, garbage')


async def test_update_over_max_size_raises_session_error_and_changes_nothing(cache_backend: CacheBackend) -> None:
    """A merged session one byte over max_size is refused, nothing written; exactly max_size is stored and loads."""
    key = keys.new_key()
    stored = {"a": "x" * 100, "b": [1, 2]}
    merged = {**stored, "c": "y" * 150}
    cache_backend.max_size = len(serializers.dumps(merged)) - 1
    await cache_backend.save(key, stored, DAY)
    with pytest.raises(SessionError, match="over the limit"):
        await cache_backend.update(key, {"c": "y" * 150}, (), DAY)
    assert await cache_backend.load(key) == stored
    cache_backend.max_size += 1
    await cache_backend.update(key, {"c": "y" * 150}, (), DAY)
    assert await cache_backend.load(key) == merged


async def test_concurrent_updates_of_one_session_all_survive(cache_backend: CacheBackend) -> None:
    """24 updates of one session at once, each of its own key, all land on top of the stored keys."""
    key = keys.new_key()
    await cache_backend.save(key, {"base": 0}, DAY)
    await asyncio.gather(*(cache_backend.update(key, {f"k{index}": index}, (), DAY) for index in range(24)))
    assert await cache_backend.load(key) == {"base": 0, **{f"k{index}": index for index in range(24)}}


async def test_entries_are_plain_strings_beside_the_sessions(cache_backend: CacheBackend) -> None:
    """entries: add only if absent, get, set, exists and delete on plain strings under the caller's own keys."""
    entry = "myapp:entry:" + keys.new_key()
    entries = cache_backend.entries
    assert await entries.get(entry) is None
    assert not await entries.exists(entry)
    assert await entries.add(entry, "first", 60)
    assert not await entries.add(entry, "second", 60)
    assert await entries.get(entry) in ("first", b"first")
    await entries.set(entry, "third", 60)
    assert await entries.get(entry) in ("third", b"third")
    assert await entries.exists(entry)
    await entries.delete(entry)
    assert not await entries.exists(entry)
    await entries.delete(entry)  # missing: no error


def test_entries_before_open_raise_session_error() -> None:
    """A backend that is not open lends no entries."""
    with pytest.raises(SessionError, match="before open"):
        CacheBackend("redis://127.0.0.1:6379/15").entries  # noqa: B018


# -- updates on Redis: hashes, sessions stored as strings, long sessions ----------------------------------------


@pytest.mark.redis
async def test_redis_session_is_a_hash_of_json_fields(redis_backend: CacheBackend) -> None:
    """Each top-level key is one field (its JSON text) holding its value's JSON text; an empty session keeps one."""
    client = redis_backend._cache
    key = keys.new_key()
    await redis_backend.save(key, {"cart": [1, 2], "é": None}, 600)
    assert await client.execute("TYPE", raw_key(key)) == b"hash"
    fields = await client.hgetall(raw_key(key))
    assert dict(zip(fields[::2], fields[1::2], strict=True)) == {b'"cart"': b"[1,2]", '"é"'.encode(): b"null"}
    assert 590 < await client.execute("TTL", raw_key(key)) <= 600
    await redis_backend.update(key, {}, ("cart", "é"), 600)
    assert await client.hgetall(raw_key(key)) == [b"", b""]
    await redis_backend.update(key, {"n": 1}, (), 900)
    assert await client.hgetall(raw_key(key)) == [b'"n"', b"1"]
    assert 890 < await client.execute("TTL", raw_key(key)) <= 900


@pytest.mark.redis
async def test_redis_legacy_string_session_loads_and_updates_into_a_hash(redis_backend: CacheBackend) -> None:
    """A session stored as one JSON string (earlier versions) loads, and its first update rewrites it as a hash."""
    client = redis_backend._cache
    key = keys.new_key()
    await client.set(raw_key(key), '{"user":"alice","cart":[],"n":1}', 60)
    assert await redis_backend.load(key) == {"user": "alice", "cart": [], "n": 1}
    await redis_backend.update(key, {"n": 2}, ("user",), DAY)
    assert await client.execute("TYPE", raw_key(key)) == b"hash"
    assert await redis_backend.load(key) == {"cart": [], "n": 2}
    assert DAY - 10 < await client.execute("TTL", raw_key(key)) <= DAY


@pytest.mark.redis
async def test_redis_legacy_string_changed_meanwhile_is_merged_again(
    redis_backend: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A string session rewritten between the update's read and its conversion is read again, not overwritten."""
    client = redis_backend._cache
    key = keys.new_key()
    await client.set(raw_key(key), '{"a":1}', 60)
    run, evalsha = client.run, client.evalsha
    calls: list[bytes] = []

    async def racing_run(script: Any, keys_: Any, args: Any) -> Any:
        if len(calls) == 1:  # a parallel request of an earlier version writes the string before the conversion
            await client.set(raw_key(key), '{"a":1,"b":2}', 60)
        return await run(script, keys_, args)

    def counted_evalsha(script: Any, keys_: Any, args: Any) -> Any:  # every script goes through EVALSHA
        calls.append(script.sha)
        return evalsha(script, keys_, args)

    monkeypatch.setattr(client, "run", racing_run)
    monkeypatch.setattr(client, "evalsha", counted_evalsha)
    await redis_backend.update(key, {"c": 3}, (), DAY)
    monkeypatch.undo()
    assert await redis_backend.load(key) == {"a": 1, "b": 2, "c": 3}
    assert len(calls) == 4  # update, conversion refused, update, conversion


@pytest.mark.redis
async def test_redis_corrupt_hash_raises_update_error_and_logs(
    redis_backend: CacheBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A hash with a value or a field name that is not JSON is left alone, logged, and loads as no session."""
    client = redis_backend._cache
    for field, value in [('"bad"', "{not json"), ("not-a-json-name", "1"), ('"n"', "")]:
        key = keys.new_key()
        await redis_backend.save(key, {"ok": 1}, DAY)
        await client.execute("HSET", raw_key(key), field, value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asession.security"):
            with pytest.raises(UpdateError):
                await redis_backend.update(key, {"ok": 2}, (), DAY)
            assert await redis_backend.load(key) is None
        assert [record.name for record in caplog.records] == ["asession.security"] * 2
        assert await client.execute("HGET", raw_key(key), '"ok"') == b"1"
    key = keys.new_key()
    await client.execute("RPUSH", raw_key(key), "x")
    with caplog.at_level(logging.WARNING, logger="asession.security"), pytest.raises(UpdateError):
        await redis_backend.update(key, {"ok": 2}, (), DAY)
    assert "list" in caplog.records[-1].getMessage()


@pytest.mark.redis
async def test_redis_corrupt_value_that_is_dropped_does_not_block_the_update(redis_backend: CacheBackend) -> None:
    """Only the values an update keeps are checked: overwriting or removing the broken one repairs the session."""
    client = redis_backend._cache
    key = keys.new_key()
    await redis_backend.save(key, {"ok": 1}, DAY)
    await client.execute("HSET", raw_key(key), '"bad"', "{not json")
    await redis_backend.update(key, {"bad": "fixed"}, (), DAY)
    assert await redis_backend.load(key) == {"ok": 1, "bad": "fixed"}


@pytest.mark.redis
async def test_redis_sessions_with_thousands_of_keys(redis_backend: CacheBackend) -> None:
    """Saves and updates beyond Lua's unpack() limit (about 8000 values) are written in slices."""
    key = keys.new_key()
    data = {f"k{index}": index for index in range(5000)}
    await redis_backend.save(key, data, DAY)
    await redis_backend.update(key, {f"n{index}": index for index in range(4500)}, [f"k{i}" for i in range(4200)], DAY)
    expected = {**{f"k{i}": i for i in range(4200, 5000)}, **{f"n{i}": i for i in range(4500)}}
    assert await redis_backend.load(key) == expected
    await redis_backend.save(key, data, DAY, must_create=False)
    assert await redis_backend.load(key) == data


@pytest.mark.redis
async def test_redis_update_size_counts_bytes_like_the_load(redis_backend: CacheBackend) -> None:
    """The size limit counts UTF-8 bytes, as the load does, so a session the update accepts also loads."""
    key = keys.new_key()
    merged = {"a": "é" * 50, "b": "ü" * 50}
    size = len(serializers.dumps(merged).encode())
    await redis_backend.save(key, {"a": "é" * 50}, DAY)
    redis_backend.max_size = size - 1
    with pytest.raises(SessionError, match=f"is {size} bytes"):
        await redis_backend.update(key, {"b": "ü" * 50}, (), DAY)
    redis_backend.max_size = size
    await redis_backend.update(key, {"b": "ü" * 50}, (), DAY)
    assert await redis_backend.load(key) == merged


@pytest.mark.redis
async def test_user_supplied_redis_cache_updates_by_compare_and_set(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RedisCache handed in keeps strings; an update that lost to another write merges again onto that write."""
    parts = urlsplit(redis_url)
    cache = RedisCache(endpoint=parts.hostname, port=parts.port or 6379, db=int(parts.path.strip("/") or 0))
    key = keys.new_key()
    try:
        async with CacheBackend(cache) as backend:
            await backend.save(key, {"a": 1}, DAY)
            raw = cache.raw
            evals = 0

            async def racing_raw(command: str, *args: Any, **kwargs: Any) -> Any:
                nonlocal evals
                if command == "eval":
                    evals += 1
                    if evals == 1:
                        await cache.client.set(raw_key(key), '{"a":1,"b":2}')
                return await raw(command, *args, **kwargs)

            monkeypatch.setattr(cache, "raw", racing_raw)
            await backend.update(key, {"c": 3}, (), DAY)
            monkeypatch.undo()
            assert evals == 2
            assert json.loads(await cache.client.get(raw_key(key))) == {"a": 1, "b": 2, "c": 3}
            await asyncio.gather(*(backend.update(key, {f"k{index}": index}, (), DAY) for index in range(8)))
            assert await backend.load(key) == {"a": 1, "b": 2, "c": 3, **{f"k{index}": index for index in range(8)}}
            with pytest.raises(UpdateError):
                await backend.update(keys.new_key(), {"v": 1}, (), DAY)
            await backend.delete(key)
    finally:
        await cache.client.aclose()


# -- updates on memcached and in memory -------------------------------------------------------------------------


@pytest.mark.memcached
async def test_memcached_cas_conflict_is_retried(
    memcached_backend: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write landing between gets and cas makes the cas fail; the update reads again and merges onto it."""
    key = keys.new_key()
    await memcached_backend.save(key, {"a": 1}, DAY)
    client = memcached_backend._cache
    original_gets = client.gets
    gets = 0

    async def racing_gets(name: str) -> Any:
        nonlocal gets
        reply = await original_gets(name)
        gets += 1
        if gets == 1:  # another worker's update lands after this read
            await memcached_backend.entries.set(raw_key(key), '{"a":1,"b":2}', DAY)
        return reply

    monkeypatch.setattr(client, "gets", racing_gets)
    await memcached_backend.update(key, {"c": 3}, (), DAY)
    assert gets == 2
    assert await memcached_backend.load(key) == {"a": 1, "b": 2, "c": 3}


@pytest.mark.memcached
async def test_memcached_update_gives_up_when_every_cas_loses(
    memcached_backend: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session rewritten after every read fails the update with BackendUnavailableError after the set attempts."""
    key = keys.new_key()
    await memcached_backend.save(key, {"a": 1}, DAY)
    client = memcached_backend._cache
    original_gets = client.gets
    gets = 0

    async def racing_gets(name: str) -> Any:
        nonlocal gets
        reply = await original_gets(name)
        gets += 1
        await memcached_backend.entries.set(raw_key(key), f'{{"a":{gets}}}', DAY)
        return reply

    monkeypatch.setattr(client, "gets", racing_gets)
    with pytest.raises(BackendUnavailableError, match=f"{UPDATE_ATTEMPTS} attempts"):
        await memcached_backend.update(key, {"c": 3}, (), DAY)
    assert gets == UPDATE_ATTEMPTS
    assert await memcached_backend.load(key) == {"a": UPDATE_ATTEMPTS}


@pytest.mark.memcached
async def test_memcached_updates_from_one_process_take_turns(
    memcached_backend: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 concurrent updates of one session in one process never make each other retry: one gets each."""
    key = keys.new_key()
    await memcached_backend.save(key, {}, DAY)
    client = memcached_backend._cache
    original_gets = client.gets
    commands: list[str] = []

    async def counting_gets(name: str) -> Any:
        commands.append("gets")
        return await original_gets(name)

    monkeypatch.setattr(client, "gets", counting_gets)
    await asyncio.gather(*(memcached_backend.update(key, {f"k{index}": index}, (), DAY) for index in range(32)))
    assert commands == ["gets"] * 32
    assert await memcached_backend.load(key) == {f"k{index}": index for index in range(32)}


@pytest.mark.memcached
async def test_user_supplied_memcached_cache_updates_by_gets_and_cas(
    memcached_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aiocache MemcachedCache handed in merges by gets and cas: a write between them is merged onto, not lost."""
    parts = urlsplit(memcached_url)
    cache = MemcachedCache(endpoint=parts.hostname, port=parts.port or 11211, namespace="myapp")
    key = keys.new_key()
    try:
        async with CacheBackend(cache) as backend:
            await backend.save(key, {"a": 1}, DAY)
            raw = cache.raw
            gets = 0

            async def racing_raw(command: str, *args: Any, **kwargs: Any) -> Any:
                nonlocal gets
                reply = await raw(command, *args, **kwargs)
                if command == "gets":
                    gets += 1
                    if gets == 1:  # another worker's update lands after this read
                        await backend.entries.set(raw_key(key), '{"a":1,"b":2}', DAY)
                return reply

            monkeypatch.setattr(cache, "raw", racing_raw)
            await backend.update(key, {"c": 3}, (), DAY)
            monkeypatch.undo()
            assert gets == 2
            assert await cache.client.get(b"myapp" + raw_key(key).encode()) == b'{"a":1,"b":2,"c":3}'
            await asyncio.gather(*(backend.update(key, {f"k{index}": index}, (), DAY) for index in range(24)))
            assert await backend.load(key) == {"a": 1, "b": 2, "c": 3, **{f"k{index}": index for index in range(24)}}
            await backend.delete(key)
            with pytest.raises(UpdateError):
                await backend.update(key, {"v": 1}, (), DAY)
            assert not await backend.exists(key)
    finally:
        await cache.close()


class YieldingMemoryCache(SimpleMemoryCache):  # type: ignore[misc]  # aiocache is untyped
    """A memory cache whose reads let other tasks run, as a cache with a timeout or a plugin does."""

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return await super().get(*args, **kwargs)


async def test_memory_updates_that_yield_are_serialized_by_the_lock() -> None:
    """With reads that yield to other tasks, 24 concurrent updates of one session still all survive."""
    key = keys.new_key()
    async with CacheBackend(YieldingMemoryCache()) as backend:
        await backend.save(key, {"base": 0}, DAY)
        await asyncio.gather(*(backend.update(key, {f"k{index}": index}, (), DAY) for index in range(24)))
        deleted = asyncio.gather(backend.update(key, {"late": 1}, (), DAY), backend.delete(key))
        await deleted
        assert await backend.load(key) is None
