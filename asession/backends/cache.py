"""CacheBackend: sessions in a cache, in process memory, on Redis or on memcached.

The cache keeps each session under ``asession:<sha256 of the key>`` with a TTL of the session's expiry
age, so the store drops expired sessions by itself and :meth:`~CacheBackend.clear_expired` has nothing
to do. Session data is the JSON text the base class produced, passed through untouched: never pickled,
whatever serializer a user-supplied cache was built with.

The backend talks to its cache through a small store interface (:class:`_Store`) with two
implementations: :class:`_AiocacheStore` for ``memory://``, ``memcached://`` and any aiocache cache the
user hands in, and :class:`_RedisStore` for ``redis://`` / ``rediss://`` URLs, which uses asession's own
lean pipelined client (:mod:`asession.backends._redis`): redis-py under aiocache cost 40-90 µs of CPU per
command, the lean client 3-13 µs (``benchmarks/REDIS_CLIENTS.md``).

aiocache 0.12 ships no type information, so its objects stay ``Any`` inside this module.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from asession.backends import _redis
from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured

__all__ = ["KEY_PREFIX", "CacheBackend"]

#: Prefix of every key asession writes, so sessions are easy to find beside other cached data.
KEY_PREFIX = "asession:"
#: Seconds a Redis connection may take to open or to answer, unless the URL says otherwise.
REDIS_SOCKET_TIMEOUT = _redis.DEFAULT_TIMEOUT
#: aiocache's own per-call timeout for memcached (aiomcache has no socket timeouts of its own).
MEMCACHED_TIMEOUT = 5.0
#: Connections per memcached server, unless the URL says ``?pool_size=N`` (aiocache defaults to 2).
MEMCACHED_POOL_SIZE = 10
#: memcached reads an expiry time above 30 days as an absolute Unix timestamp, not as seconds from now.
MEMCACHED_MAX_RELATIVE_TTL = 30 * 24 * 3600

_SCHEMES = {"memory": "cache", "redis": "redis", "rediss": "redis", "memcached": "memcached"}
#: The modules each extra's URLs import. Redis URLs use asession's own client (the standard library only);
#: the ``redis`` extra still installs aiocache and redis-py for a RedisCache built by the user.
_EXTRA_MODULES: dict[str, list[str]] = {"cache": ["aiocache"], "redis": [], "memcached": ["aiocache", "aiomcache"]}
_OPEN_CHECK_KEY = KEY_PREFIX + "open-check"
# What interrupts a cache call halfway: aiocache's timeout, or the request's task being cancelled.
_INTERRUPTIONS = (asyncio.CancelledError, asyncio.TimeoutError)

security_logger = logging.getLogger("asession.security")


def _passthrough(value: Any) -> Any:
    return value


class _TextSerializer:
    """An aiocache serializer that stores the JSON text as it is and returns what the store holds.

    ``encoding = None`` makes Redis and memcached hand back raw bytes, which the base class decodes and
    validates; a stored value that is not UTF-8 then loads as corrupt instead of failing in aiocache.
    """

    encoding = None
    dumps = loads = staticmethod(_passthrough)


_SERIALIZER = _TextSerializer()


def _memcached_options(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError("memcached has no passwords over its text protocol; remove the user and password")
    if parts.path.strip("/"):
        raise ValueError("memcached has no databases; remove the path")
    query = parse_qs(parts.query)
    unknown = set(query) - {"pool_size"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r}; only pool_size is understood")
    pool_size = int(query.get("pool_size", [MEMCACHED_POOL_SIZE])[0])
    if pool_size < 1:
        raise ValueError("pool_size must be at least 1")
    return {"endpoint": parts.hostname or "127.0.0.1", "port": parts.port or 11211, "pool_size": pool_size}


def _is_instance(cache: Any, module: str, class_name: str) -> bool:
    """``isinstance`` against an aiocache class whose client library may not be installed."""
    try:
        cls = getattr(importlib.import_module(module), class_name)
    except ImportError:
        return False
    return isinstance(cache, cls)


# -- stores --------------------------------------------------------------------------------------------------


class _Store(Protocol):
    """What CacheBackend needs of a cache. Keys are complete (prefix included); ``ttl`` is in seconds."""

    @property
    def inner(self) -> Any:
        """The aiocache cache or Redis client underneath, for descriptions and tests."""

    def get(self, key: str) -> Awaitable[str | bytes | None]:
        """The stored value, or ``None``."""

    def set(self, key: str, payload: str, ttl: int) -> Awaitable[object]:
        """Store ``payload``, replacing any value."""

    def add(self, key: str, payload: str, ttl: int) -> Awaitable[bool]:
        """Store ``payload`` only if ``key`` is free, atomically; ``False`` when it is taken."""

    def exists(self, key: str) -> Awaitable[bool | int]:
        """Whether ``key`` is stored."""

    def delete(self, key: str) -> Awaitable[object]:
        """Forget ``key``."""

    async def check(self) -> None:
        """Connect if needed and prove the cache answers; raise otherwise."""

    async def close(self) -> None:
        """Release connections."""


class _AiocacheStore:
    """An aiocache cache: the in-process memory cache, memcached, or any cache the user hands in."""

    def __init__(self, cache: Any, *, memcached: bool, redis: bool) -> None:
        self.cache = cache
        self._memcached = memcached
        self._redis = redis

    @property
    def inner(self) -> Any:
        return self.cache

    async def _call(self, call: Awaitable[Any]) -> Any:
        """Await one aiocache call; after one cut short, drop idle memcached connections.

        aiomcache puts a connection back in its pool even when the command on it was cancelled, with
        the reply still unread; the next command on that connection would read the old reply. Its
        pool only holds idle connections by now, including that one: closing them all is cheap and rare.
        """
        try:
            return await call
        except _INTERRUPTIONS:
            if self._memcached:
                await self.cache.client.close()
            raise

    async def get(self, key: str) -> str | bytes | None:
        try:
            value: str | bytes | None = await self._call(self.cache.get(key, loads_fn=_passthrough))
        except UnicodeDecodeError as exc:  # a user-supplied cache that decodes values itself
            security_logger.warning("CacheBackend: session data corrupted (%s); treated as empty.", exc)
            return None
        return value

    async def set(self, key: str, payload: str, ttl: int) -> None:
        if self._redis:
            # aiocache's set() sends SETEX, which redis-py 8 deprecates; SET ... EX is the command Redis
            # recommends, sent through aiocache's public raw().
            await self._call(self.cache.raw("set", self.cache.build_key(key), payload, ex=ttl))
        else:
            await self._call(self.cache.set(key, payload, ttl=ttl, dumps_fn=_passthrough))

    async def add(self, key: str, payload: str, ttl: int) -> bool:
        try:
            # add() is one atomic command on every store (SET NX on Redis, add on memcached).
            await self._call(self.cache.add(key, payload, ttl=ttl, dumps_fn=_passthrough))
        except ValueError:  # aiocache's way of saying the key is taken
            return False
        return True

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self.cache.exists(key)))

    async def delete(self, key: str) -> None:
        await self._call(self.cache.delete(key))

    async def check(self) -> None:
        await self.cache.exists(_OPEN_CHECK_KEY)

    async def close(self) -> None:
        aclose = getattr(getattr(self.cache, "client", None), "aclose", None)
        if aclose is not None:
            # redis-py >= 5: aiocache 0.12's close() calls the deprecated Redis.close() instead.
            await aclose()
        else:
            await self.cache.close()


class _RedisStore:
    """Redis through :class:`asession.backends._redis.RedisClient`: one pipelined command per call.

    The methods hand back the client's futures as they are, so a load or save runs no coroutine of its own.
    """

    def __init__(self, options: _redis.RedisOptions) -> None:
        self.client = _redis.RedisClient(options)

    @property
    def inner(self) -> Any:
        return self.client

    def get(self, key: str) -> Awaitable[bytes | None]:
        return self.client.get(key)

    def set(self, key: str, payload: str, ttl: int) -> Awaitable[object]:
        return self.client.set(key, payload, ttl)

    async def add(self, key: str, payload: str, ttl: int) -> bool:
        return await self.client.set(key, payload, ttl, nx=True) is not None

    def exists(self, key: str) -> Awaitable[int]:
        return self.client.exists(key)

    def delete(self, key: str) -> Awaitable[int]:
        return self.client.delete(key)

    async def check(self) -> None:
        await self.client.open()
        await self.client.exists(_OPEN_CHECK_KEY)

    async def close(self) -> None:
        await self.client.close()


# -- the backend ---------------------------------------------------------------------------------------------


class CacheBackend(SessionBackend):
    """Store sessions in a cache: ``memory://``, ``redis://`` / ``rediss://``, ``memcached://``, or an aiocache cache.

    ``cache_or_url`` is either a URL, from which the backend builds its own cache when it opens, or an
    aiocache cache instance (``BaseCache``) the caller built. With a URL the backend owns its cache: it
    connects in :meth:`open`, raising :class:`~asession.exceptions.BackendUnavailableError` (naming the
    URL, password hidden) if the server cannot be reached, and disconnects in :meth:`close`. A cache
    instance stays the caller's: it is checked on open but never closed here, since whoever opens a
    resource closes it.

    URLs: ``memory://`` (this process only; sessions survive close and reopen of the backend),
    ``redis://[[user]:password@]host[:port][/db][?option=value]`` (``rediss://`` for TLS), reached through
    asession's own pipelined client with redis-py's URL options (``socket_timeout`` and
    ``socket_connect_timeout``, 5 seconds by default, ``max_connections``, 4 by default, ``ssl_cert_reqs``,
    ``ssl_ca_certs`` and the other ``ssl_*`` options: see :func:`asession.backends._redis.parse_url`), and
    ``memcached://host[:port][?pool_size=10]`` through aiocache.

    Expired sessions vanish through the store's TTL. memcached keeps items of at most 1 MB by default,
    and evicts items under memory pressure, as any cache may: pair it with a database
    (``CachedDatabaseBackend``) when sessions must not be lost.

    ``memory://`` and ``memcached://`` need the ``cache`` extra (aiocache), plus ``memcached`` for memcached;
    Redis URLs need nothing beyond the standard library.
    """

    expires_by_itself = True

    def __init__(self, cache_or_url: object, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(max_size=max_size)
        self._url: str | None = None
        self._options: Any = None
        self._store: _Store | None = None
        if isinstance(cache_or_url, str):
            self._url = cache_or_url.removeprefix("cache+")
            self._scheme = self._parse(self._url)
            if self._scheme == "memory":
                # Built once and kept, so the sessions outlive a close() and open() of the backend.
                self._store = self._build()
        else:
            require("aiocache", "CacheBackend", "cache")
            from aiocache.base import BaseCache

            if not isinstance(cache_or_url, BaseCache):
                raise ImproperlyConfigured(
                    f"CacheBackend takes an aiocache cache or a URL such as 'redis://127.0.0.1:6379/0', "
                    f"not {cache_or_url!r}."
                )
            self._scheme = ""
            self._store = _AiocacheStore(
                cache_or_url,
                memcached=_is_instance(cache_or_url, "aiocache.backends.memcached", "MemcachedBackend"),
                redis=_is_instance(cache_or_url, "aiocache.backends.redis", "RedisBackend"),
            )
        self._memcached = self._scheme == "memcached" or (
            isinstance(self._store, _AiocacheStore) and self._store._memcached
        )

    @classmethod
    def from_url(cls, url: str) -> CacheBackend:
        """``cache+memory://``, ``memory://``, ``redis://``, ``rediss://`` or ``memcached://``."""
        return cls(url)

    def _parse(self, url: str) -> str:
        """Validate ``url`` and the extras it needs; keep the cache's options; return the scheme."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ImproperlyConfigured(
                f"CacheBackend cannot use {hide_password(url)!r}. Use 'memory://', 'redis://host:6379/0', "
                "'rediss://host:6380/0' or 'memcached://host:11211'."
            )
        extra = _SCHEMES[scheme]
        for module in _EXTRA_MODULES[extra]:
            require(module, "CacheBackend", extra, "" if module == "aiocache" else f" for {scheme}:// URLs")
        try:
            if extra == "redis":
                self._options = _redis.parse_url(url)
            elif extra == "memcached":
                self._options = _memcached_options(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"CacheBackend cannot use {hide_password(url)!r}: {exc}.") from exc
        return scheme

    def _build(self) -> _Store:
        """Create the store this backend's URL describes (nothing connects yet)."""
        if self._scheme == "memory":
            from aiocache import SimpleMemoryCache

            return _AiocacheStore(SimpleMemoryCache(serializer=_SERIALIZER, timeout=None), memcached=False, redis=False)
        if self._scheme == "memcached":
            from aiocache import MemcachedCache

            cache = MemcachedCache(serializer=_SERIALIZER, timeout=MEMCACHED_TIMEOUT, **self._options)
            return _AiocacheStore(cache, memcached=True, redis=False)
        return _RedisStore(self._options)

    @property
    def _cache(self) -> Any:
        """The aiocache cache behind this backend, or the Redis client for Redis URLs (tests look inside)."""
        return None if self._store is None else self._store.inner

    def _describe(self) -> str:
        if self._url is not None:
            return hide_password(self._url)
        return type(self._cache).__name__

    # -- life cycle ---------------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._store is None:
            self._store = self._build()
        try:
            await self._store.check()
        except Exception as exc:
            if self._url is not None:
                await self._discard_store()
            # str(), not repr(): redis-py 8 exceptions repr as "network:ConnectionError" and nothing more.
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BackendUnavailableError(
                f"CacheBackend could not reach {self._describe()} ({reason}). Check that the server is running "
                "and that the URL, password and database are right."
            ) from exc

    async def _close(self) -> None:
        if self._url is not None:  # a cache handed to us is closed by whoever built it
            await self._discard_store()

    async def _discard_store(self) -> None:
        if self._scheme == "memory":
            return
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    # -- storage ------------------------------------------------------------------------------------------

    def _ttl(self, expiry_age: int) -> int:
        if self._memcached and expiry_age > MEMCACHED_MAX_RELATIVE_TTL:
            # memcached compares an absolute expiry with its own wall clock, so this is real time,
            # not asession's (test-movable) clock.
            return int(time.time()) + expiry_age
        return expiry_age

    async def _load(self, skey: str) -> str | bytes | None:
        return await self._store.get(KEY_PREFIX + skey)  # type: ignore[union-attr]  # open: never None

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        store = self._store  # never None while open, as in the other storage hooks
        if not must_create:
            await store.set(KEY_PREFIX + skey, payload, self._ttl(expiry_age))  # type: ignore[union-attr]
        elif not await store.add(KEY_PREFIX + skey, payload, self._ttl(expiry_age)):  # type: ignore[union-attr]
            raise CreateError(f"A session with this key already exists in {self!r}.")

    async def _exists(self, skey: str) -> bool:
        return bool(await self._store.exists(KEY_PREFIX + skey))  # type: ignore[union-attr]

    async def _delete(self, skey: str) -> None:
        await self._store.delete(KEY_PREFIX + skey)  # type: ignore[union-attr]

    async def _clear_expired(self) -> int:
        return 0
