"""CacheBackend: sessions in an aiocache cache, in process memory, on Redis or on memcached.

The cache keeps each session under ``asession:<sha256 of the key>`` with a TTL of the session's expiry
age, so the store drops expired sessions by itself and :meth:`~CacheBackend.clear_expired` has nothing
to do. Session data is the JSON text the base class produced, passed through untouched: never pickled,
whatever serializer a user-supplied cache was built with.

aiocache 0.12 ships no type information, so its objects stay ``Any`` inside this module.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured

__all__ = ["KEY_PREFIX", "CacheBackend"]

#: Prefix of every key asession writes, so sessions are easy to find beside other cached data.
KEY_PREFIX = "asession:"
#: Seconds a Redis connection may take to open or to answer, unless the URL says otherwise.
REDIS_SOCKET_TIMEOUT = 5.0
#: aiocache's own per-call timeout for memcached (aiomcache has no socket timeouts of its own).
MEMCACHED_TIMEOUT = 5.0
#: Connections per memcached server, unless the URL says ``?pool_size=N`` (aiocache defaults to 2).
MEMCACHED_POOL_SIZE = 10
#: memcached reads an expiry time above 30 days as an absolute Unix timestamp, not as seconds from now.
MEMCACHED_MAX_RELATIVE_TTL = 30 * 24 * 3600

_SCHEMES = {"memory": "cache", "redis": "redis", "rediss": "redis", "memcached": "memcached"}
_EXTRA_MODULES = {"cache": [], "redis": ["redis"], "memcached": ["aiomcache"]}
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


def _redis_options(url: str) -> dict[str, Any]:
    """Turn a ``redis://`` or ``rediss://`` URL into keyword arguments for aiocache's RedisCache.

    redis-py parses the URL (password, username, ``rediss`` TLS and query options such as
    ``ssl_cert_reqs``); everything aiocache does not take itself goes to the connection pool.
    """
    from redis.asyncio.connection import parse_url

    path = urlsplit(url).path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the path must be a database number such as /0, not /{path}")
    pool: dict[str, Any] = dict(parse_url(url))
    pool.pop("decode_responses", None)  # aiocache decodes values itself and needs bytes
    pool.setdefault("socket_timeout", REDIS_SOCKET_TIMEOUT)
    return {
        "endpoint": pool.pop("host", "127.0.0.1"),
        "port": pool.pop("port", 6379),
        "db": pool.pop("db", 0),
        "password": pool.pop("password", None),
        "create_connection_timeout": pool.pop("socket_connect_timeout", REDIS_SOCKET_TIMEOUT),
        "pool_max_size": pool.pop("max_connections", None),
        "connection_pool_kwargs": pool,
    }


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


class CacheBackend(SessionBackend):
    """Store sessions in an aiocache cache: ``memory://``, ``redis://`` / ``rediss://`` or ``memcached://``.

    ``cache_or_url`` is either a URL, from which the backend builds its own cache when it opens, or an
    aiocache cache instance (``BaseCache``) the caller built. With a URL the backend owns its cache: it
    connects in :meth:`open`, raising :class:`~asession.exceptions.BackendUnavailableError` (naming the
    URL, password hidden) if the server cannot be reached, and disconnects in :meth:`close`. A cache
    instance stays the caller's: it is checked on open but never closed here, since whoever opens a
    resource closes it.

    URLs: ``memory://`` (this process only; sessions survive close and reopen of the backend),
    ``redis://[[user]:password@]host[:port][/db][?option=value]`` with redis-py's connection options
    (``rediss://`` for TLS; sockets time out after 5 seconds unless ``socket_timeout`` /
    ``socket_connect_timeout`` say otherwise), and ``memcached://host[:port][?pool_size=10]``.

    Expired sessions vanish through the store's TTL. memcached keeps items of at most 1 MB by default,
    and evicts items under memory pressure, as any cache may: pair it with a database
    (``CachedDatabaseBackend``) when sessions must not be lost.

    Needs the ``cache`` extra (aiocache), plus ``redis`` or ``memcached`` for those servers.
    """

    expires_by_itself = True

    def __init__(self, cache_or_url: object, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(max_size=max_size)
        self._url: str | None = None
        self._options: dict[str, Any] = {}
        self._cache: Any = None
        if isinstance(cache_or_url, str):
            self._url = cache_or_url.removeprefix("cache+")
            self._scheme = self._parse(self._url)
            if self._scheme == "memory":
                # Built once and kept, so the sessions outlive a close() and open() of the backend.
                self._cache = self._build()
        else:
            require("aiocache", "CacheBackend", "cache")
            from aiocache.base import BaseCache

            if not isinstance(cache_or_url, BaseCache):
                raise ImproperlyConfigured(
                    f"CacheBackend takes an aiocache cache or a URL such as 'redis://127.0.0.1:6379/0', "
                    f"not {cache_or_url!r}."
                )
            self._cache = cache_or_url
            self._scheme = ""
        self._memcached = self._scheme == "memcached" or (
            not self._url and _is_instance(self._cache, "aiocache.backends.memcached", "MemcachedBackend")
        )
        self._redis = self._scheme in ("redis", "rediss") or (
            not self._url and _is_instance(self._cache, "aiocache.backends.redis", "RedisBackend")
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
        require("aiocache", "CacheBackend", extra)
        for module in _EXTRA_MODULES[extra]:
            require(module, "CacheBackend", extra, f" for {scheme}:// URLs")
        try:
            if extra == "redis":
                self._options = _redis_options(url)
            elif extra == "memcached":
                self._options = _memcached_options(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"CacheBackend cannot use {hide_password(url)!r}: {exc}.") from exc
        return scheme

    def _build(self) -> Any:
        """Create the aiocache cache this backend's URL describes (nothing connects yet)."""
        if self._scheme == "memory":
            from aiocache import SimpleMemoryCache

            return SimpleMemoryCache(serializer=_SERIALIZER, timeout=None)
        if self._scheme == "memcached":
            from aiocache import MemcachedCache

            return MemcachedCache(serializer=_SERIALIZER, timeout=MEMCACHED_TIMEOUT, **self._options)
        from aiocache import RedisCache

        # No aiocache timeout: redis-py's socket timeouts bound every call already, and aiocache's
        # would wrap each call in asyncio.wait_for(), a task per call on the hot path.
        options = {**self._options, "connection_pool_kwargs": dict(self._options["connection_pool_kwargs"])}
        return RedisCache(serializer=_SERIALIZER, timeout=None, **options)

    def _describe(self) -> str:
        if self._url is not None:
            return hide_password(self._url)
        return type(self._cache).__name__

    # -- life cycle ---------------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._cache is None:
            self._cache = self._build()
        try:
            await self._cache.exists(_OPEN_CHECK_KEY)
        except Exception as exc:
            if self._url is not None:
                await self._discard_cache()
            # str(), not repr(): redis-py 8 exceptions repr as "network:ConnectionError" and nothing more.
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BackendUnavailableError(
                f"CacheBackend could not reach {self._describe()} ({reason}). Check that the server is running "
                "and that the URL, password and database are right."
            ) from exc

    async def _close(self) -> None:
        if self._url is not None:  # a cache handed to us is closed by whoever built it
            await self._discard_cache()

    async def _discard_cache(self) -> None:
        if self._scheme == "memory":
            return
        cache, self._cache = self._cache, None
        aclose = getattr(getattr(cache, "client", None), "aclose", None)
        if aclose is not None:
            # redis-py >= 5: aiocache 0.12's close() calls the deprecated Redis.close() instead.
            await aclose()
        else:
            await cache.close()

    async def _after_interruption(self) -> None:
        """Drop idle memcached connections after a call was cut short.

        aiomcache puts a connection back in its pool even when the command on it was cancelled, with
        the reply still unread; the next command on that connection would read the old reply. Its
        pool only holds idle connections by now, including that one: closing them all is cheap and rare.
        """
        if self._memcached and self._cache is not None:
            await self._cache.client.close()

    # -- storage ------------------------------------------------------------------------------------------

    async def _load(self, skey: str) -> str | bytes | None:
        try:
            value: str | bytes | None = await self._cache.get(KEY_PREFIX + skey, loads_fn=_passthrough)
        except UnicodeDecodeError as exc:  # a user-supplied cache that decodes values itself
            security_logger.warning("CacheBackend: session data corrupted (%s); treated as empty.", exc)
            return None
        except _INTERRUPTIONS:
            await self._after_interruption()
            raise
        return value

    def _ttl(self, expiry_age: int) -> int:
        if self._memcached and expiry_age > MEMCACHED_MAX_RELATIVE_TTL:
            # memcached compares an absolute expiry with its own wall clock, so this is real time,
            # not asession's (test-movable) clock.
            return int(time.time()) + expiry_age
        return expiry_age

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        ttl = self._ttl(expiry_age)
        try:
            if not must_create:
                if self._redis:
                    # aiocache's set() sends SETEX, which redis-py 8 deprecates; SET ... EX is the
                    # command Redis recommends, sent through aiocache's public raw().
                    await self._cache.raw("set", self._cache.build_key(KEY_PREFIX + skey), payload, ex=ttl)
                else:
                    await self._cache.set(KEY_PREFIX + skey, payload, ttl=ttl, dumps_fn=_passthrough)
                return
            try:
                # add() is one atomic command on every store (SET NX on Redis, add on memcached).
                await self._cache.add(KEY_PREFIX + skey, payload, ttl=ttl, dumps_fn=_passthrough)
            except ValueError as exc:  # aiocache's way of saying the key is taken
                raise CreateError(f"A session with this key already exists in {self!r}.") from exc
        except _INTERRUPTIONS:
            await self._after_interruption()
            raise

    async def _exists(self, skey: str) -> bool:
        try:
            return bool(await self._cache.exists(KEY_PREFIX + skey))
        except _INTERRUPTIONS:
            await self._after_interruption()
            raise

    async def _delete(self, skey: str) -> None:
        try:
            await self._cache.delete(KEY_PREFIX + skey)
        except _INTERRUPTIONS:
            await self._after_interruption()
            raise

    async def _clear_expired(self) -> int:
        return 0
