"""RedisBackend: sessions in Redis, one hash per session, merged by a Lua script in one round trip.

``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs go through asession's own pipelined client
(:mod:`asession.backends._redis`), which spends a few µs of CPU per command where redis-py spends 36-77
(``benchmarks/REDIS_CLIENTS.md``): the plain one-server case is the hot path of most deployments.

``redis+sentinel://`` and ``redis+cluster://`` URLs, and any redis-py asyncio client handed in
(``redis.asyncio.Redis``, ``RedisCluster``, a Sentinel's ``master_for(...)``), go through redis-py
(:mod:`asession.backends._redis_py`): following a failover and routing by slot are redis-py's well-trodden
code, and a client the user built carries settings (TLS, credentials providers, retries) asession should
not second-guess. Both clients send the same commands and scripts, so every feature works on each.

**How a session is stored**: :mod:`asession.backends._redis_hash`. **Concurrent requests**: one Lua script
(``UPDATE``) refuses when the session is gone, when a value it would keep is not JSON and when the merged
session would exceed ``max_size``, then writes only the changed fields and refreshes the TTL; a session
stored as one string by an earlier version is merged in Python and converted by a compare-and-set script.

**Redis Cluster.** Every command and every script touches exactly one key: a session is one hash, a user's
index (:mod:`asession.users`) one more key, and revocation deletes sessions one key at a time. Nothing needs
two keys in one slot, so asession uses no hash tags: sessions spread over every shard by their hashed key,
instead of a user's sessions piling into one slot. ``MOVED`` and ``ASK`` redirections and topology refreshes
are redis-py's. A shard that loses its master answers errors until its replica takes over: those requests
get 503 (:class:`~asession.exceptions.BackendUnavailableError`), never another session's data, since a key
lives on one shard only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from asession import serializers
from asession.backends import _redis, _redis_hash, _redis_py
from asession.backends._extras import require
from asession.backends._resp import RedisError, Script, is_noscript
from asession.backends._urls import hide_password
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.backends.cache import (
    OPEN_CHECK_KEY,
    UPDATE_ATTEMPTS,
    CacheBackend,
    SessionStore,
    back_off,
    contended,
    security_logger,
)
from asession.changes import Changes
from asession.exceptions import ImproperlyConfigured

__all__ = ["SCHEMES", "RedisBackend"]

#: The URL schemes RedisBackend takes.
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


class RedisCommands(Protocol):
    """The calls RedisBackend makes of a Redis client: asession's own, or redis-py's through an adapter."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def get(self, key: str) -> Awaitable[bytes | None]: ...

    def hgetall(self, key: str) -> Awaitable[list[bytes] | None]: ...

    def set(self, key: str, value: str | bytes, ex: int, nx: bool = False) -> Awaitable[bytes | None]: ...

    def exists(self, key: str) -> Awaitable[int]: ...

    def delete(self, key: str) -> Awaitable[int]: ...

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Awaitable[Any]: ...

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any: ...


class _RedisStore:
    """Sessions as hashes (:mod:`asession.backends._redis_hash`) through either Redis client.

    ``client`` is asession's own :class:`~asession.backends._redis.RedisClient` or a redis-py client lent
    its calls (:class:`~asession.backends._redis_py.RedisPyClient`). Plain entries are strings; their methods
    hand back the client's awaitables as they are.
    """

    def __init__(self, client: RedisCommands) -> None:
        self.client = client

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
        except RedisError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return await self.client.get(key)  # a session stored as one string by an earlier version
        return _redis_hash.join(fields) if fields else None

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        # The base class hands over the whole session's JSON text; a hash wants it key by key.
        try:
            fields = _redis_hash.as_fields(serializers.loads(payload))
        except ValueError:
            # Not a JSON object, so not from the base class (a test storing garbage on purpose): kept as it
            # is, as one string, which loads as corrupt and is refused by updates like any corrupt session.
            if must_create:
                return await self.add(key, payload, ttl)
            await self.set(key, payload, ttl)
            return True
        return bool(
            await self.client.run(_redis_hash.CREATE if must_create else _redis_hash.REPLACE, (key,), [ttl, *fields])
        )

    async def update(self, key: str, changes: Changes, ttl: int, backend: SessionBackend) -> str | None:
        if changes.replace:
            removed: list[str] = []
        else:
            removed = [_redis_hash.field_name(name) for name in changes.removed]
        header = b"%d %d %d %d" % (ttl, backend.max_size, 1 if changes.replace else 0, len(removed))
        args: list[bytes | str | int] = [header, *removed]
        args += _redis_hash.as_fields(changes.changed) if changes.changed else ()
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                reply = await self.client.evalsha(_redis_hash.UPDATE, (key,), args)
            except RedisError as exc:
                if not is_noscript(exc):
                    raise
                reply = await self.client.run(_redis_hash.UPDATE, (key,), args)
            if reply == _redis_hash.WRITTEN:
                return None
            outcome = reply[0]
            if outcome == _redis_hash.MISSING:
                raise backend._gone()
            if outcome == _redis_hash.CORRUPT:
                reason = reply[1].decode("utf-8", "replace")
                security_logger.warning(
                    "%s: session data corrupted (%s); treated as empty.", type(backend).__name__, reason
                )
                raise backend._gone()
            if outcome == _redis_hash.TOO_LARGE:
                raise _redis_hash.too_large(reply[1], backend.max_size)
            # STRING: merged here (logged and refused if corrupt), then written as a hash if still unchanged.
            payload = backend._merge(reply[1], changes)
            merged = [ttl, reply[1], *_redis_hash.as_fields(serializers.loads(payload))]
            if await self.client.run(_redis_hash.CONVERT, (key,), merged):
                return payload
            await back_off(attempt)
        raise contended(key)

    async def check(self) -> None:
        await self.client.open()
        await self.client.exists(OPEN_CHECK_KEY)

    async def close(self) -> None:
        await self.client.close()


class RedisBackend(CacheBackend):
    """Store sessions in Redis: a URL, or a redis-py asyncio client the caller built.

    URLs (also through :func:`~asession.backends.backend_from_url`, and ``CacheBackend(url)``, an alias):

    - ``redis://[[user]:password@]host[:port][/db][?option=value]``, ``rediss://`` for TLS, and
      ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``: asession's own client, with redis-py's URL
      options (``socket_timeout`` and ``socket_connect_timeout``, 5 s by default, ``max_connections``, 4 by
      default, ``health_check_interval``, 30 s by default, ``client_name``, the ``ssl_*`` options: see
      :func:`asession.backends._redis_url.parse_url`). redis-py tuning options it has no use for are
      accepted with one warning, on the ``asession.backends.redis`` logger.
    - ``redis+sentinel://[user:pw@]host:port[,host:port...]/service[/db]``: the master the sentinels name
      ``service``, followed through failovers; ``redis+cluster://[user:pw@]host:port[,host:port...]``: a
      Redis Cluster from any of its nodes (see :func:`asession.backends._redis_py.parse_topology_url` for
      their options). Both need the ``redis`` extra (redis-py).

    A URL's client is the backend's: it connects in :meth:`open`, raising
    :class:`~asession.exceptions.BackendUnavailableError` (naming the server, password hidden) when the server
    cannot be reached or refuses the password, and is closed in :meth:`close`. A client handed in
    (``redis.asyncio.Redis``, ``RedisCluster``, ``Sentinel(...).master_for(...)``) is checked on open and
    never closed here: whoever built it closes it.

    Unknown URL options and malformed URLs raise :class:`~asession.exceptions.ImproperlyConfigured` naming
    the part at fault. ``max_size`` and ``encrypt_at_rest`` are :class:`~asession.backends.base.SessionBackend`'s.
    """

    def __init__(
        self, url_or_client: object, *, max_size: int = DEFAULT_MAX_SIZE, encrypt_at_rest: bool = False
    ) -> None:
        super().__init__(url_or_client, max_size=max_size, encrypt_at_rest=encrypt_at_rest)

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``."""
        return cls(url)

    def _parse(self, url: str) -> str:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in SCHEMES:
            raise ImproperlyConfigured(
                f"RedisBackend cannot use {hide_password(url)!r}. Use 'redis://host:6379/0', 'rediss://host:6380/0', "
                "'unix:///run/redis/redis.sock?db=0', 'redis+sentinel://host:26379/mymaster' or "
                "'redis+cluster://host:7000,host:7001'."
            )
        try:
            if scheme.startswith("redis+"):
                self._options = _redis_py.parse_topology_url(url)
                require("redis", "RedisBackend", "redis", f" for {scheme}:// URLs")
                return scheme
            options = _redis.parse_url(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"RedisBackend cannot use {hide_password(url)!r}: {exc}.") from exc
        if options.ignored:
            _redis.logger.warning(
                "Redis URL options %s are redis-py tuning options this client does not use; they are ignored.",
                ", ".join(sorted(set(options.ignored))),
            )
        # Room for a stored session up to max_size (which then loads as too large, logged); a reply beyond
        # that is a broken server and fails the connection instead of filling memory.
        limit = max(_redis.DEFAULT_MAX_REPLY_SIZE, 2 * self.max_size + 1024)
        self._options = dataclasses.replace(options, max_reply_size=limit)
        return scheme

    def _adopt(self, client: object) -> SessionStore:
        if not _redis_py.is_redis_py_client(client):
            raise ImproperlyConfigured(
                "RedisBackend takes a URL such as 'redis://127.0.0.1:6379/0' or a redis-py asyncio client "
                f"(redis.asyncio.Redis, RedisCluster, Sentinel(...).master_for(...)), not {client!r}."
            )
        return _RedisStore(_redis_py.RedisPyClient(client))

    def _build(self) -> SessionStore:
        if isinstance(self._options, _redis_py.TopologyOptions):
            return _RedisStore(_redis_py.build_client(self._options))
        return _RedisStore(_redis.RedisClient(self._options))

    def _describe(self) -> str:
        if self._url is not None:
            return hide_password(self._url)
        return f"{type(self._cache.client).__name__} handed in"
