"""CacheBackend: sessions in a cache, in process memory, on Redis or on memcached.

The cache keeps each session under ``asession:<sha256 of the key>`` with a TTL of the session's expiry
age, so the store drops expired sessions by itself and :meth:`~CacheBackend.clear_expired` has nothing
to do. Session data is JSON text, never pickled, whatever serializer a user-supplied cache was built with.

**How a session is stored.** ``memory://``, ``memcached://`` and aiocache caches handed in keep one string
entry: the session's JSON text as the base class produced it. Redis URLs keep one Redis *hash* per
session: each field is the JSON text of a top-level key (``"cart"``, quotes included), its value the JSON
text of that key's value, so that an update writes only the keys it changed. A load is one ``HGETALL``,
joined in Python into ``{field:value,...}``, which the base class decodes and checks as before. Redis drops
an empty hash, so an empty session keeps a single field with an empty name, which no JSON text is.
Sessions stored as one string by earlier versions of asession still load (``HGETALL`` answers
``WRONGTYPE``, then ``GET``) and become hashes at their first update.

**Concurrent requests** (:meth:`~asession.backends.base.SessionBackend.update`): each store merges a
request's changes into the session as stored *now* in one atomic step, so parallel requests of one session
keep each other's keys:

- Redis: one Lua script, one round trip. It refuses when the session is gone, when a value it would keep
  is not JSON (``pcall(cjson.decode, ...)``: a corrupt session is never half-merged) and when the merged
  session would exceed ``max_size`` (measured before anything is written); then ``HDEL``, ``HSET`` and
  ``EXPIRE``. Lua never decodes and re-encodes a value: ``cjson.encode`` turns an empty list ``[]`` into
  ``{}`` and prints numbers with 14 significant digits. ``benchmarks/REDIS_CLIENTS.md`` measures this
  design against a compare-and-set of one JSON string (two round trips: a ``GET``, then the swap).
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

The backend talks to its cache through one store object: :class:`_RedisStore` for ``redis://`` /
``rediss://`` URLs, which uses asession's own lean pipelined client (:mod:`asession.backends._redis`):
redis-py under aiocache cost 40-90 µs of CPU per command, the lean client 3-13 µs
(``benchmarks/REDIS_CLIENTS.md``); the ``_AiocacheStore`` family for everything aiocache reaches.

aiocache 0.12 ships no type information, so its objects stay ``Any`` inside this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from json.encoder import encode_basestring
from typing import Any, Protocol

from asession import serializers
from asession.backends import _memcached, _redis
from asession.backends._extras import require
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.changes import Changes
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured, SessionError

__all__ = ["KEY_PREFIX", "CacheBackend", "CacheStore"]

#: Prefix of every key asession writes, so sessions are easy to find beside other cached data.
KEY_PREFIX = "asession:"
#: Seconds a Redis connection may take to open or to answer, unless the URL says otherwise.
REDIS_SOCKET_TIMEOUT = _redis.DEFAULT_TIMEOUT
#: memcached reads an expiry time above 30 days as an absolute Unix timestamp, not as seconds from now.
MEMCACHED_MAX_RELATIVE_TTL = 30 * 24 * 3600
#: Attempts of a compare-and-set update (memcached, a RedisCache handed in, a Redis session stored as one
#: string) before the backend gives up with BackendUnavailableError: each lost attempt means another
#: write to the same session landed in between, so 20 in a row is a session being hammered.
UPDATE_ATTEMPTS = 20

_SCHEMES = {"memory": "cache", "redis": "redis", "rediss": "redis", "unix": "redis", "memcached": "memcached"}
#: The modules each extra's URLs import. Redis URLs use asession's own client (the standard library only);
#: the ``redis`` extra still installs aiocache and redis-py for a RedisCache built by the user.
_EXTRA_MODULES: dict[str, list[str]] = {"cache": ["aiocache"], "redis": [], "memcached": []}
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


def _is_instance(cache: Any, module: str, class_name: str) -> bool:
    """``isinstance`` against an aiocache class whose client library may not be installed."""
    try:
        cls = getattr(importlib.import_module(module), class_name)
    except ImportError:
        return False
    return isinstance(cache, cls)


async def _back_off(attempt: int) -> None:
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


def _contended(key: str) -> RuntimeError:
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


class _SessionStore(CacheStore, Protocol):
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
        await self.cache.exists(_OPEN_CHECK_KEY)

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
                await _back_off(attempt)
        raise _contended(key)


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
                await _back_off(attempt)
        raise _contended(key)


class _MemcachedClientStore:
    """``memcached://`` URLs through asession's own client (:mod:`asession.backends._memcached`).

    Not aiocache and aiomcache: a command cut short by a timeout left its reply unread on a pooled
    aiomcache connection, so the next command read the previous one's reply (the chaos soak saw another
    session's key come back), and a reply cut mid-line froze the event loop. This client keeps every
    reply matched to its own command and checks the key of every ``VALUE`` line. Updates are ``gets``,
    the merge in Python, ``cas``; retried after a short random wait while other writes win the race, and
    one at a time per key in this process.
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
        return self.client.get(key)

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        if must_create:
            return await self.client.add(key, payload, ttl)
        await self.client.set(key, payload, ttl)
        return True

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        async with self._turns.of(key):
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
                await _back_off(attempt)
        raise _contended(key)

    async def check(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()


def _aiocache_store(cache: Any) -> _AiocacheStore:
    """The store for an aiocache cache, by the kind of server behind it."""
    if _is_instance(cache, "aiocache.backends.memcached", "MemcachedBackend"):
        return _MemcachedStore(cache)
    if _is_instance(cache, "aiocache.backends.redis", "RedisBackend"):
        return _RedisCacheStore(cache)
    return _LocalStore(cache)


# Redis sessions as hashes. The scripts below share this helper: HSET of ARGV[first], ARGV[first + 1], ...
# in slices, since Lua's unpack() fails beyond about 8000 values.
_HSET_FROM = """
local function hset_from(key, first)
  for i = first, #ARGV, 1000 do
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
"""

#: Create or replace a session. KEYS[1] the session; ARGV[1] the TTL; then its fields and values in turn.
_REPLACE = _redis.Script(
    _HSET_FROM
    + """
redis.call('DEL', KEYS[1])
hset_from(KEYS[1], 2)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

#: Create a session only if its key is free (0 when taken). Arguments as for :data:`_REPLACE`.
_CREATE = _redis.Script(
    _HSET_FROM
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
hset_from(KEYS[1], 2)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

#: Rewrite a session stored as one string (earlier versions) as a hash, only if the string is still the one
#: the merge started from (0 otherwise). KEYS[1] the session; ARGV[1] the TTL; ARGV[2] that string; then the
#: merged session's fields and values in turn.
_CONVERT = _redis.Script(
    _HSET_FROM
    + """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
hset_from(KEYS[1], 3)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# What _UPDATE answers, as the first item of its reply.
_MISSING, _STRING, _CORRUPT, _TOO_LARGE, _WRITTEN = range(5)

#: Merge a request's changes into a session. KEYS[1] the session; ARGV[1] 'TTL MAX_SIZE REPLACE REMOVED' (the
#: TTL, max_size, 1 to replace the whole session or 0, how many fields to delete: one argument rather than
#: four, since every argument costs the client an encoding on every update); then the fields to delete; then
#: the fields and values to set, in turn. Answers {0} nothing stored, {1, text} a session stored as one
#: string, {2, why} corrupt, {3, size} too large (nothing written in these four cases), and 4, a plain
#: integer rather than an array, the usual answer, when written.
#: The size is that of the JSON text a load joins: '{' and '}', and per field 'name:value' and a ','
#: (one fewer than fields), in bytes as the load measures it.
_UPDATE = _redis.Script(
    _HSET_FROM
    + """
local key = KEYS[1]
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0} end
if kind == 'string' then return {1, redis.call('GET', key)} end
if kind ~= 'hash' then return {2, 'a Redis ' .. kind .. ' is stored under the key'} end
local ttl, max_size, replace_flag, removed = string.match(ARGV[1], '^(%d+) (%d+) ([01]) (%d+)$')
local replace = replace_flag == '1'
local first = 2 + tonumber(removed)
local size, count, marker = 1, 0, false
if not replace then
  local dropped = {}
  for i = 2, first - 1 do dropped[ARGV[i]] = true end
  for i = first, #ARGV, 2 do dropped[ARGV[i]] = true end
  local stored = redis.call('HGETALL', key)
  for i = 1, #stored, 2 do
    local field, value = stored[i], stored[i + 1]
    if field == '' then
      marker = true
    elseif not dropped[field] then
      local ok, name = pcall(cjson.decode, field)
      if not ok or type(name) ~= 'string' then
        return {2, 'a field name is not JSON text: ' .. string.sub(field, 1, 40)}
      end
      if not pcall(cjson.decode, value) then
        return {2, 'the value of ' .. string.sub(field, 1, 40) .. ' is not JSON text'}
      end
      size = size + #field + #value + 2
      count = count + 1
    end
  end
end
for i = first, #ARGV, 2 do
  size = size + #ARGV[i] + #ARGV[i + 1] + 2
  count = count + 1
end
if count == 0 then size = 2 end
if size > tonumber(max_size) then return {3, size} end
if replace then
  redis.call('DEL', key)
else
  for i = 2, first - 1, 1000 do
    redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, first - 1)))
  end
end
hset_from(key, first)
if count == 0 then
  redis.call('HSET', key, '', '')
elseif marker then
  redis.call('HDEL', key, '')
end
redis.call('EXPIRE', key, ttl)
return 4
"""
)

#: The field and value that keep an empty session alive: Redis deletes a hash with no fields, and no JSON
#: text is empty, so this field cannot be a session key.
_EMPTY_SESSION = (b"", b"")


def _field(key: object) -> str:
    """A session key's JSON text, the name of its field (``cart`` -> ``"cart"``)."""
    if isinstance(key, str):
        return encode_basestring(key)
    text = serializers.dumps_value({key: 0})  # JSON's own spelling of a key that is not a string: 1 -> "1"
    return text[1 : text.rindex(":")]


def _fields(data: Mapping[str, Any]) -> list[bytes | str | int]:
    """``data`` as a hash: each key's JSON text followed by its value's, in turn."""
    fields: list[bytes | str | int] = []
    try:
        for key, value in data.items():
            fields += (_field(key).encode(), serializers.dumps_value(value).encode())
    except TypeError:
        serializers.dumps(data)  # raises the TypeError that names the offending key
        raise
    return fields or list(_EMPTY_SESSION)


def _template(fields: int) -> bytes:
    return b"{" + b",".join([b"%b:%b"] * fields) + b"}"


#: ``{%b:%b,%b:%b}`` for sessions of up to 32 keys: one ``%`` joins a loaded hash at a fifth of the cost of
#: building the pairs one by one, and every load goes through it.
_TEMPLATES = [_template(fields) for fields in range(33)]


def _join(fields: list[bytes]) -> bytes:
    """A session's JSON text from its hash's fields and values in turn (``HGETALL``)."""
    count = len(fields) // 2
    if count == 1 and not fields[0]:
        return b"{}"  # the field that keeps an empty session alive
    template = _TEMPLATES[count] if count < len(_TEMPLATES) else _template(count)
    return template % tuple(fields)


def _too_large(size: int, max_size: int) -> SessionError:
    return SessionError(
        f"The session is {size} bytes once serialized, over the limit of {max_size} bytes. "
        "Store less in the session, or raise the backend's max_size."
    )


class _RedisStore:
    """Redis through :class:`asession.backends._redis.RedisClient`, one session per hash (see the module).

    Plain entries are strings; their methods hand back the client's futures as they are.
    """

    def __init__(self, options: _redis.RedisOptions) -> None:
        self.client = _redis.RedisClient(options)

    @property
    def inner(self) -> Any:
        return self.client

    def get(self, key: str) -> Awaitable[bytes | None]:
        return self.client.get(key)

    def set(self, key: str, text: str, ttl: int) -> Awaitable[object]:
        return self.client.set(key, text, ttl)

    async def add(self, key: str, text: str, ttl: int) -> bool:
        return await self.client.set(key, text, ttl, nx=True) is not None

    def delete(self, key: str) -> Awaitable[int]:
        return self.client.delete(key)

    async def exists(self, key: str) -> bool:
        return bool(await self.client.exists(key))

    async def load(self, key: str) -> bytes | None:
        try:
            fields = await self.client.hgetall(key)
        except _redis.RedisError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return await self.client.get(key)  # a session stored as one string by an earlier version
        return _join(fields) if fields else None

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        # The base class hands over the whole session's JSON text; a hash wants it key by key.
        try:
            fields = _fields(serializers.loads(payload))
        except ValueError:
            # Not a JSON object, so not from the base class (a test storing garbage on purpose): kept as it
            # is, as one string, which loads as corrupt and is refused by updates like any corrupt session.
            if must_create:
                return await self.add(key, payload, ttl)
            await self.set(key, payload, ttl)
            return True
        return bool(await self.client.run(_CREATE if must_create else _REPLACE, (key,), [ttl, *fields]))

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str | None:
        if changes.replace:
            removed: list[str] = []
        else:
            removed = [_field(name) for name in changes.removed]
        header = b"%d %d %d %d" % (ttl, backend.max_size, 1 if changes.replace else 0, len(removed))
        args: list[bytes | str | int] = [header, *removed]
        args += _fields(changes.changed) if changes.changed else ()
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                reply = await self.client.evalsha(_UPDATE, (key,), args)
            except _redis.RedisError as exc:
                if not _redis.is_noscript(exc):
                    raise
                reply = await self.client.run(_UPDATE, (key,), args)
            if reply == _WRITTEN:
                return None
            outcome = reply[0]
            if outcome == _MISSING:
                raise backend._gone()
            if outcome == _CORRUPT:
                reason = reply[1].decode("utf-8", "replace")
                security_logger.warning(
                    "%s: session data corrupted (%s); treated as empty.", type(backend).__name__, reason
                )
                raise backend._gone()
            if outcome == _TOO_LARGE:
                raise _too_large(reply[1], backend.max_size)
            # _STRING: merged here (logged and refused if corrupt), then written as a hash if still unchanged.
            payload = backend._merge(reply[1], changes)
            merged = [ttl, reply[1], *_fields(serializers.loads(payload))]
            if await self.client.run(_CONVERT, (key,), merged):
                return payload
            await _back_off(attempt)
        raise _contended(key)

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
    ``redis://[[user]:password@]host[:port][/db][?option=value]`` (``rediss://`` for TLS, ``unix:///path/to/redis.sock?db=N``
    for a Unix socket), reached through
    asession's own pipelined client with redis-py's URL options (``socket_timeout`` and
    ``socket_connect_timeout``, 5 seconds by default, ``max_connections``, 4 by default, ``ssl_cert_reqs``,
    ``ssl_ca_certs`` and the other ``ssl_*`` options: see :func:`asession.backends._redis.parse_url`), and
    ``memcached://host[:port][?pool_size=10]`` through aiocache.

    Each session is merged into as it is stored now when a request saves it (see the module's docstring:
    one Lua script on Redis, ``gets``/``cas`` on memcached, a lock in process memory), and
    :attr:`entries` lends the cache's plain string entries to a composite backend.

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
        self._store: _SessionStore | None = None
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
            self._store = _aiocache_store(cache_or_url)
        # An aiocache memcached cache handed in takes TTLs as they are; asession's own client converts them.
        self._memcached = isinstance(self._store, _MemcachedStore)

    @classmethod
    def from_url(cls, url: str) -> CacheBackend:
        """``cache+memory://``, ``memory://``, ``redis://``, ``rediss://``, ``unix://`` (Redis) or ``memcached://``."""
        return cls(url)

    def _parse(self, url: str) -> str:
        """Validate ``url`` and the extras it needs; keep the cache's options; return the scheme."""
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ImproperlyConfigured(
                f"CacheBackend cannot use {hide_password(url)!r}. Use 'memory://', 'redis://host:6379/0', "
                "'rediss://host:6380/0', 'unix:///run/redis/redis.sock?db=0' or 'memcached://host:11211'."
            )
        extra = _SCHEMES[scheme]
        for module in _EXTRA_MODULES[extra]:
            require(module, "CacheBackend", extra, "" if module == "aiocache" else f" for {scheme}:// URLs")
        try:
            if extra == "redis":
                options = _redis.parse_url(url)
                if options.ignored:
                    _redis.logger.warning(
                        "Redis URL options %s are redis-py tuning options this client does not use; they are ignored.",
                        ", ".join(sorted(set(options.ignored))),
                    )
                # Room for a stored session up to max_size (which then loads as too large, logged); a reply
                # beyond that is a broken server and fails the connection instead of filling memory.
                limit = max(_redis.DEFAULT_MAX_REPLY_SIZE, 2 * self.max_size + 1024)
                self._options = dataclasses.replace(options, max_reply_size=limit)
            elif extra == "memcached":
                self._options = _memcached.parse_url(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"CacheBackend cannot use {hide_password(url)!r}: {exc}.") from exc
        return scheme

    def _build(self) -> _SessionStore:
        """Create the store this backend's URL describes (nothing connects yet)."""
        if self._scheme == "memory":
            from aiocache import SimpleMemoryCache

            return _LocalStore(SimpleMemoryCache(serializer=_SERIALIZER, timeout=None))
        if self._scheme == "memcached":
            return _MemcachedClientStore(self._options)
        return _RedisStore(self._options)

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
