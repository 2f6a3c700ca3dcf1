"""CacheBackend: sessions in a cache, in process memory or on memcached, or in an aiocache cache handed in.

The cache keeps each session under ``asession:<sha256 of the key>`` with a TTL of the session's expiry
age, so the store drops expired sessions by itself and :meth:`~CacheBackend.clear_expired` has nothing
to do. Session data is JSON text, never pickled, whatever serializer a user-supplied cache was built with:
one string entry per session, the session's JSON text as the base class produced it.

Redis is :class:`~asession.backends.redis.RedisBackend`, a subclass that keeps each session as a hash;
``CacheBackend("redis://...")`` (and ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://``,
or a redis-py client) still works, as an alias that builds a RedisBackend.

**Concurrent requests** (:meth:`~asession.backends.base.SessionBackend.update`): each store merges a
request's changes into the session as stored *now* in one atomic step, so parallel requests of one session
keep each other's keys:

- memcached: ``gets``, the merge in Python, ``cas``; retried, after a short random wait, while other writes
  come in between (:data:`UPDATE_ATTEMPTS` times at most). Updates of one session from this process take
  turns, so they never make each other retry.
- a RedisCache (aiocache over redis-py) handed in: ``GET``, the merge in Python, then a Lua
  compare-and-set of the string, which answers the current value when it lost, for the next attempt.
- ``memory://`` and any other aiocache cache: a lock of this process around read, merge and write. The
  memory cache lives in this process, so that lock covers every writer.

**Plain entries.** :attr:`CacheBackend.entries` hands out the cache as a :class:`CacheStore`: plain string
entries (Redis strings, memcached items) with ``get``, ``set``, ``add``, ``delete`` and ``exists``, whatever
format the sessions themselves use. A composite backend keeps its own entries there, under keys it
prefixes itself (:data:`KEY_PREFIX` or its own).

The backend talks to its cache through one :class:`SessionStore`: ``_MemcachedClientStore`` for
``memcached://`` URLs (asession's own client, :mod:`asession.backends._memcached`), the ``_AiocacheStore``
family for everything aiocache reaches, and RedisBackend's own.

aiocache 0.12 ships no type information, so its objects stay ``Any`` inside this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from asession.backends import _memcached, _redis_url
from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.changes import Changes
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured

__all__ = ["KEY_PREFIX", "CacheBackend", "CacheStore"]

#: Prefix of every key asession writes, so sessions are easy to find beside other cached data.
KEY_PREFIX = "asession:"
#: Seconds a Redis connection may take to open or to answer, unless the URL says otherwise.
REDIS_SOCKET_TIMEOUT = _redis_url.DEFAULT_TIMEOUT
#: memcached reads an expiry time above 30 days as an absolute Unix timestamp, not as seconds from now.
MEMCACHED_MAX_RELATIVE_TTL = 30 * 24 * 3600
#: Attempts of a compare-and-set update (memcached, a RedisCache handed in, a Redis session stored as one
#: string) before the backend gives up with BackendUnavailableError: each lost attempt means another
#: write to the same session landed in between, so 20 in a row is a session being hammered.
UPDATE_ATTEMPTS = 20

_SCHEMES = {"memory": "cache", "memcached": "memcached"}
#: The modules each extra's URLs import: memcached:// uses asession's own client (the standard library only).
_EXTRA_MODULES: dict[str, list[str]] = {"cache": ["aiocache"], "memcached": []}
#: Schemes of URLs that ``CacheBackend(url)`` hands to RedisBackend.
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"})
OPEN_CHECK_KEY = KEY_PREFIX + "open-check"
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


def _is_instance(cache: Any, module: str, class_name: str) -> bool:
    """``isinstance`` against an aiocache class whose client library may not be installed."""
    try:
        cls = getattr(importlib.import_module(module), class_name)
    except ImportError:
        return False
    return isinstance(cache, cls)


async def back_off(attempt: int) -> None:
    """Wait a random while before compare-and-set attempt ``attempt + 1``, up to twice as long each time.

    Updates that collide (from other processes: this one's take turns) were mostly issued together and take
    equally long, so retried at once they would collide again in lockstep until the last ran out of
    attempts. Random waits of up to 1, 2, 4 ... 32 ms spread them out; the request's store timeout still
    bounds the whole update.
    """
    await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 5)))


class _Turns:
    """Updates of one key from this process, one at a time (an asyncio.Lock per key while anyone wants it).

    A compare-and-set update loses whenever another write lands between its read and its swap. Requests of
    one session in one process would otherwise mostly lose to each other; in turn they never do, and the
    compare-and-set is left with the writes of other processes. Locks exist only while held or awaited, so
    none outlives its event loop.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def others(self, key: str) -> bool:
        """Whether updates of ``key`` other than the caller's hold or wait for their turn."""
        entry = self._locks.get(key)
        return entry is not None and entry[1][0] > 1

    @contextlib.asynccontextmanager
    async def of(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def contended(key: str) -> RuntimeError:
    return RuntimeError(
        f"the session under {key!r} changed during each of {UPDATE_ATTEMPTS} attempts to update it; nothing was written"
    )


# -- stores --------------------------------------------------------------------------------------------------


class CacheStore(Protocol):
    """Plain string entries in the cache behind a :class:`CacheBackend` (its :attr:`~CacheBackend.entries`).

    Keys are complete: the caller adds :data:`KEY_PREFIX` or a prefix of its own, and must keep clear of
    ``KEY_PREFIX + <64 hex digits>``, where the backend keeps its sessions. ``ttl`` is in seconds; memcached
    reads more than 30 days as a Unix time. Values are stored as given, as Redis strings or memcached items,
    whatever format the backend's own sessions use. Failures raise the store's own exceptions
    (``ConnectionError``, ``TimeoutError``, :class:`asession.backends._redis.RedisError`, ...), unwrapped.
    """

    def get(self, key: str) -> Awaitable[str | bytes | None]:
        """The stored text, or ``None`` when ``key`` is missing or expired."""

    def set(self, key: str, text: str, ttl: int) -> Awaitable[object]:
        """Store ``text`` under ``key``, replacing any value."""

    def add(self, key: str, text: str, ttl: int) -> Awaitable[bool]:
        """Store ``text`` only if ``key`` is free, atomically; ``False`` when it is taken."""

    def delete(self, key: str) -> Awaitable[object]:
        """Forget ``key``; nothing happens when it is missing."""

    def exists(self, key: str) -> Awaitable[bool]:
        """Whether ``key`` is stored."""


class SessionStore(CacheStore, Protocol):
    """A :class:`CacheStore` that also keeps sessions: what :class:`CacheBackend` drives.

    ``delete`` and ``exists`` serve sessions and plain entries alike; ``load``, ``save`` and ``update`` read
    and write sessions in whatever format this store keeps them.
    """

    @property
    def inner(self) -> Any:
        """The aiocache cache or Redis client underneath, for descriptions and tests."""

    def load(self, key: str) -> Awaitable[str | bytes | None]:
        """The session's JSON text, or ``None``."""

    def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> Awaitable[bool]:
        """Store the session ``payload``; with ``must_create`` only if ``key`` is free (``False`` when taken)."""

    def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> Awaitable[str | None]:
        """Merge ``changes`` into the stored session atomically (:meth:`SessionBackend._update`)."""

    async def check(self) -> None:
        """Connect if needed and prove the cache answers; raise otherwise."""

    async def close(self) -> None:
        """Release connections."""


class _AiocacheStore:
    """What every aiocache cache shares: sessions are plain entries holding their JSON text.

    The subclasses differ in how :meth:`update` makes its read, merge and write one atomic step.
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    @property
    def inner(self) -> Any:
        return self.cache

    def _call(self, call: Awaitable[Any]) -> Awaitable[Any]:
        return call

    async def get(self, key: str) -> str | bytes | None:
        try:
            value: str | bytes | None = await self._call(self.cache.get(key, loads_fn=_passthrough))
        except UnicodeDecodeError as exc:  # a user-supplied cache that decodes values itself
            security_logger.warning("CacheBackend: session data corrupted (%s); treated as empty.", exc)
            return None
        return value

    async def set(self, key: str, text: str, ttl: int) -> None:
        await self._call(self.cache.set(key, text, ttl=ttl, dumps_fn=_passthrough))

    async def add(self, key: str, text: str, ttl: int) -> bool:
        try:
            # add() is one atomic command on every store (SET NX on Redis, add on memcached).
            await self._call(self.cache.add(key, text, ttl=ttl, dumps_fn=_passthrough))
        except ValueError:  # aiocache's way of saying the key is taken
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._call(self.cache.delete(key))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self.cache.exists(key)))

    def load(self, key: str) -> Awaitable[str | bytes | None]:
        return self.get(key)

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        if must_create:
            return await self.add(key, payload, ttl)
        await self.set(key, payload, ttl)
        return True

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str | None:
        """Merge atomically; each subclass says how its cache makes the read, merge and write one step."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it merges updates atomically.")

    async def check(self) -> None:
        await self.cache.exists(OPEN_CHECK_KEY)

    async def close(self) -> None:
        aclose = getattr(getattr(self.cache, "client", None), "aclose", None)
        if aclose is not None:
            # redis-py >= 5: aiocache 0.12's close() calls the deprecated Redis.close() instead.
            await aclose()
        else:
            await self.cache.close()


class _LocalStore(_AiocacheStore):
    """The in-process memory cache, or an aiocache cache of a kind this module does not know.

    aiocache's calls are coroutines, and a cache with a timeout runs each one in a task of its own, so a
    read, merge and write could interleave with another request's. One lock of this store orders the
    session writes (save, update, delete); the memory cache lives in this process, so nobody else writes.
    """

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        self._lock = asyncio.Lock()

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        async with self._lock:
            return await super().save(key, payload, ttl, must_create=must_create)

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        async with self._lock:
            payload = backend._merge(await self.get(key), changes)
            await self.set(key, payload, ttl)
        return payload

    async def delete(self, key: str) -> None:
        async with self._lock:
            await super().delete(key)

    async def check(self) -> None:
        # A lock that once waited belongs to that event loop; a backend reopened under another loop (a new
        # test, a restarted app) starts with a fresh one.
        self._lock = asyncio.Lock()
        await super().check()


class _MemcachedStore(_AiocacheStore):
    """memcached through aiocache and aiomcache: updates are ``gets`` then ``cas``, one key at a time here."""

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        self._turns = _Turns()

    async def _call(self, call: Awaitable[Any]) -> Any:
        """Await one aiocache call; after one cut short, drop idle memcached connections.

        aiomcache puts a connection back in its pool even when the command on it was cancelled, with
        the reply still unread; the next command on that connection would read the old reply. Its
        pool only holds idle connections by now, including that one: closing them all is cheap and rare.
        """
        try:
            return await call
        except _INTERRUPTIONS:
            await self.cache.client.close()
            raise

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        built_key = self.cache.build_key(key)
        async with self._turns.of(key):
            for attempt in range(UPDATE_ATTEMPTS):
                current, token = await self._call(self.cache.raw("gets", built_key))
                payload = backend._merge(current, changes)
                # cas stores only if nobody wrote the item since this gets; False also when it was deleted since.
                if await self._call(self.cache.set(key, payload, ttl=ttl, dumps_fn=_passthrough, _cas_token=token)):
                    return payload
                await back_off(attempt)
        raise contended(key)


#: Compare-and-set of one string: KEYS[1] the session, ARGV[1] the text the merge started from, ARGV[2] the
#: merged text, ARGV[3] the TTL. Answers {1} when written, else {0, the text stored now} for the next attempt.
_SWAP_STRING = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {0, current} end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return {1}
"""


class _RedisCacheStore(_AiocacheStore):
    """An aiocache RedisCache (redis-py) handed in: sessions stay plain strings under its namespace.

    Updates merge in Python and swap the string with :data:`_SWAP_STRING`, which refuses when the session
    changed since it was read and answers what it holds now, so a retry needs no second read. Updates of
    one session from this process take turns.
    """

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        self._turns = _Turns()

    async def set(self, key: str, text: str, ttl: int) -> None:
        # aiocache's set() sends SETEX, which redis-py 8 deprecates; SET ... EX is the command Redis
        # recommends, sent through aiocache's public raw().
        await self._call(self.cache.raw("set", self.cache.build_key(key), text, ex=ttl))

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        built_key = self.cache.build_key(key)
        async with self._turns.of(key):
            current = await self.get(key)
            for attempt in range(UPDATE_ATTEMPTS):
                payload = backend._merge(current, changes)
                reply = await self._call(self.cache.raw("eval", _SWAP_STRING, 1, built_key, current, payload, ttl))
                if reply[0]:
                    return payload
                current = reply[1]
                await back_off(attempt)
        raise contended(key)


class _MemcachedClientStore:
    """``memcached://`` URLs through asession's own client (:mod:`asession.backends._memcached`).

    Not aiocache and aiomcache: a command cut short by a timeout left its reply unread on a pooled
    aiomcache connection, so the next command read the previous one's reply (the chaos soak saw another
    session's key come back), and a reply cut mid-line froze the event loop. This client keeps every
    reply matched to its own command and checks the key of every ``VALUE`` line. Updates are ``gets``,
    the merge in Python, ``cas``; retried after a short random wait while other writes win the race, and
    one at a time per key in this process. A load is a ``gets`` whose CAS token the client remembers, so
    the update of a session the request loaded first tries ``cas`` with that token: one round trip instead
    of two when nothing else wrote the session in between.
    """

    def __init__(self, options: _memcached.MemcachedOptions) -> None:
        self.client = _memcached.MemcachedClient(options)
        self._turns = _Turns()

    @property
    def inner(self) -> Any:
        return self.client

    def get(self, key: str) -> Awaitable[bytes | None]:
        return self.client.get(key)

    def set(self, key: str, text: str, ttl: int) -> Awaitable[bool]:
        return self.client.set(key, text, ttl)

    def add(self, key: str, text: str, ttl: int) -> Awaitable[bool]:
        return self.client.add(key, text, ttl)

    def delete(self, key: str) -> Awaitable[bool]:
        return self.client.delete(key)

    async def exists(self, key: str) -> bool:
        return await self.client.get(key) is not None

    def load(self, key: str) -> Awaitable[bytes | None]:
        return self.client.get_remembering(key)

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        if must_create:
            return await self.client.add(key, payload, ttl)
        await self.client.set(key, payload, ttl)
        return True

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        async with self._turns.of(key):
            seen = self.client.remembered(key)
            # The request's own load: its token is current unless a write came since, as one surely has when
            # other updates of the session wait here (their loads and updates overlap): then gets and cas.
            if seen is not None and not self._turns.others(key):
                try:
                    payload = backend._merge(seen[0], changes)
                except Exception:
                    pass  # refused on what was loaded: decided below on what is stored now
                else:
                    stored = await self.client.cas(key, payload, ttl, seen[1])
                    if stored:
                        return payload
                    if stored is None:  # deleted since the load: a logout won
                        raise backend._gone()
            for attempt in range(UPDATE_ATTEMPTS):
                found = await self.client.gets(key)
                if found is None:
                    raise backend._gone()
                payload = backend._merge(found[0], changes)
                stored = await self.client.cas(key, payload, ttl, found[1])
                if stored:
                    return payload
                if stored is None:  # deleted since the gets: a logout won
                    raise backend._gone()
                await back_off(attempt)
        raise contended(key)

    async def check(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()


def _is_redis(cache_or_url: object) -> bool:
    """Whether ``CacheBackend(cache_or_url)`` means Redis: a Redis URL, or a redis-py client."""
    if isinstance(cache_or_url, str):
        scheme = cache_or_url.split("://", 1)[0].lower() if "://" in cache_or_url else ""
        return scheme in _REDIS_SCHEMES
    from asession.backends._redis_py import is_redis_py_client

    return is_redis_py_client(cache_or_url)


def _aiocache_store(cache: Any) -> _AiocacheStore:
    """The store for an aiocache cache, by the kind of server behind it."""
    if _is_instance(cache, "aiocache.backends.memcached", "MemcachedBackend"):
        return _MemcachedStore(cache)
    if _is_instance(cache, "aiocache.backends.redis", "RedisBackend"):
        return _RedisCacheStore(cache)
    return _LocalStore(cache)


# -- the backend ---------------------------------------------------------------------------------------------


class CacheBackend(SessionBackend):
    """Store sessions in a cache: ``memory://``, ``memcached://``, or an aiocache cache.

    ``cache_or_url`` is either a URL, from which the backend builds its own cache when it opens, or an
    aiocache cache instance (``BaseCache``) the caller built. With a URL the backend owns its cache: it
    connects in :meth:`open`, raising :class:`~asession.exceptions.BackendUnavailableError` (naming the
    URL, password hidden) if the server cannot be reached, and disconnects in :meth:`close`. A cache
    instance stays the caller's: it is checked on open but never closed here, since whoever opens a
    resource closes it.

    URLs: ``memory://`` (this process only; sessions survive close and reopen of the backend) and
    ``memcached://host[:port][?option=value]`` through asession's own client (see
    :func:`asession.backends._memcached.parse_url`). Redis URLs and redis-py clients build a
    :class:`~asession.backends.redis.RedisBackend` (a subclass): ``CacheBackend("redis://...")`` is an alias.

    Each session is merged into as it is stored now when a request saves it (see the module's docstring:
    ``gets``/``cas`` on memcached, a lock in process memory), and :attr:`entries` lends the cache's plain
    string entries to a composite backend.

    Expired sessions vanish through the store's TTL. memcached keeps items of at most 1 MB by default,
    and evicts items under memory pressure, as any cache may: pair it with a database
    (``CachedDatabaseBackend``) when sessions must not be lost.

    ``memory://`` needs the ``cache`` extra (aiocache); ``memcached://`` nothing beyond the standard library.
    """

    expires_by_itself = True

    def __new__(cls, *args: Any, **kwargs: Any) -> CacheBackend:
        """``CacheBackend(redis_url_or_client)`` builds a RedisBackend (an alias kept from earlier versions).

        Subclasses are built as they are, whatever their own constructor takes.
        """
        if cls is CacheBackend and _is_redis(args[0] if args else kwargs.get("cache_or_url")):
            from asession.backends.redis import RedisBackend

            return super().__new__(RedisBackend)
        return super().__new__(cls)

    def __init__(
        self, cache_or_url: object, *, max_size: int = DEFAULT_MAX_SIZE, encrypt_at_rest: bool = False
    ) -> None:
        super().__init__(max_size=max_size, encrypt_at_rest=encrypt_at_rest)
        self._url: str | None = None
        self._options: Any = None
        self._store: SessionStore | None = None
        if isinstance(cache_or_url, str):
            self._url = cache_or_url.removeprefix("cache+")
            self._scheme = self._parse(self._url)
            if self._scheme == "memory":
                # Built once and kept, so the sessions outlive a close() and open() of the backend.
                self._store = self._build()
        else:
            self._scheme = ""
            self._store = self._adopt(cache_or_url)
        # An aiocache memcached cache handed in takes TTLs as they are; asession's own client converts them.
        self._memcached = isinstance(self._store, _MemcachedStore)

    @classmethod
    def from_url(cls, url: str) -> CacheBackend:
        """``cache+memory://``, ``memory://`` or ``memcached://`` (and, as an alias, the Redis schemes)."""
        return cls(url)

    def _parse(self, url: str) -> str:
        """Validate ``url`` and the extras it needs; keep the cache's options; return the scheme."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ImproperlyConfigured(
                f"CacheBackend cannot use {hide_password(url)!r}. Use 'memory://', 'memcached://host:11211', "
                "or a Redis URL such as 'redis://host:6379/0'."
            )
        extra = _SCHEMES[scheme]
        for module in _EXTRA_MODULES[extra]:
            require(module, "CacheBackend", extra, "" if module == "aiocache" else f" for {scheme}:// URLs")
        if extra == "memcached":
            try:
                self._options = _memcached.parse_url(url)
            except ValueError as exc:
                raise ImproperlyConfigured(f"CacheBackend cannot use {hide_password(url)!r}: {exc}.") from exc
        return scheme

    def _adopt(self, cache: object) -> SessionStore:
        """The store for a cache the caller built and keeps."""
        require("aiocache", "CacheBackend", "cache")
        from aiocache.base import BaseCache

        if not isinstance(cache, BaseCache):
            raise ImproperlyConfigured(
                f"CacheBackend takes an aiocache cache or a URL such as 'memcached://127.0.0.1:11211', not {cache!r}."
            )
        return _aiocache_store(cache)

    def _build(self) -> SessionStore:
        """Create the store this backend's URL describes (nothing connects yet)."""
        if self._scheme == "memory":
            from aiocache import SimpleMemoryCache

            return _LocalStore(SimpleMemoryCache(serializer=_SERIALIZER, timeout=None))
        return _MemcachedClientStore(self._options)

    @property
    def entries(self) -> CacheStore:
        """The cache's plain string entries, for a composite backend that keeps its own data beside the sessions.

        Its ``get``, ``set``, ``add``, ``delete`` and ``exists`` take complete keys (see :class:`CacheStore`).
        Raises :class:`~asession.exceptions.SessionError` unless the backend is open.
        """
        self._check_open()
        return self._store  # type: ignore[return-value]  # open: never None

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
                f"{type(self).__name__} could not reach {self._describe()} ({reason}). Check that the server is "
                "running and that the URL, password and database are right."
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

    def _load(self, skey: str) -> Awaitable[str | bytes | None]:
        # The store's awaitable as it is: no coroutine of this backend's own on the way of every load.
        return self._store.load(KEY_PREFIX + skey)  # type: ignore[union-attr]  # open: never None

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        store = self._store
        assert store is not None  # open
        if not await store.save(KEY_PREFIX + skey, payload, self._ttl(expiry_age), must_create=must_create):
            raise CreateError(f"A session with this key already exists in {self!r}.")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None:
        ttl = self._ttl(expiry_age)
        return await self._store.update(KEY_PREFIX + skey, changes, ttl, self)  # type: ignore[union-attr]

    async def _exists(self, skey: str) -> bool:
        return await self._store.exists(KEY_PREFIX + skey)  # type: ignore[union-attr]

    async def _delete(self, skey: str) -> None:
        await self._store.delete(KEY_PREFIX + skey)  # type: ignore[union-attr]

    async def _clear_expired(self) -> int:
        return 0
