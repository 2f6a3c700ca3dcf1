"""redis-py underneath RedisBackend: a client handed in, and the Sentinel and Cluster topologies.

asession's own client (:mod:`asession.backends._redis`) talks to one server. Following a Sentinel failover
(ask the sentinels for the master, reconnect when it changes, drop connections to a demoted master that
answers ``READONLY``) and routing in a Redis Cluster (the slot map, ``MOVED`` and ``ASK`` redirections, a
topology refresh when a master fails over) are what redis-py's ``Sentinel`` and ``RedisCluster`` do, tested
by their users against every server release; ``benchmarks/REDIS_CLIENTS.md`` weighs that against their CPU
cost. :class:`RedisPyClient` lends any redis-py asyncio client the few calls :class:`RedisBackend
<asession.backends.redis.RedisBackend>` makes of asession's own, so the session format, the Lua scripts
and every feature stay one code path.

:func:`parse_topology_url` reads ``redis+sentinel://`` and ``redis+cluster://`` URLs and :func:`build_client`
makes the redis-py client they describe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from asession.backends._redis_url import DEFAULT_TIMEOUT, to_interval
from asession.backends._resp import RedisError, Script
from asession.backends._urls import to_positive_int, to_timeout

__all__ = ["RedisPyClient", "TopologyOptions", "build_client", "is_redis_py_client", "parse_topology_url"]

#: The port a host of a ``redis+sentinel://`` URL gets when it names none (Sentinel's own).
SENTINEL_PORT = 26379
#: The port a host of a ``redis+cluster://`` URL gets when it names none.
CLUSTER_PORT = 6379

_SCHEMES = ("redis+sentinel", "redis+cluster")
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")
#: Options each topology's URL takes, beyond the timeouts.
_OPTIONS = {
    "redis+sentinel": {
        "max_connections",
        "client_name",
        "health_check_interval",
        "sentinel_username",
        "sentinel_password",
    },
    "redis+cluster": {"max_connections", "client_name", "health_check_interval"},
}


def is_redis_py_client(client: object) -> bool:
    """Whether ``client`` is one of redis-py's asyncio clients (``Redis``, ``RedisCluster``, ``master_for()``)."""
    try:
        from redis.asyncio import Redis, RedisCluster
    except ImportError:
        return False
    return isinstance(client, (Redis, RedisCluster))


@dataclass(frozen=True)
class TopologyOptions:
    """A ``redis+sentinel://`` or ``redis+cluster://`` URL, parsed."""

    scheme: str
    #: The sentinels, or the cluster's seed nodes: ``(host, port)``.
    hosts: tuple[tuple[str, int], ...]
    #: The master's name, as the sentinels know it (Sentinel only).
    service: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    socket_timeout: float | None = DEFAULT_TIMEOUT
    socket_connect_timeout: float | None = DEFAULT_TIMEOUT
    max_connections: int | None = None
    client_name: str | None = None
    health_check_interval: float = 0
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def parse_topology_url(url: str) -> TopologyOptions:
    """Parse ``redis+sentinel://[user:pw@]host:port[,host:port...]/service[/db][?option=value]`` or
    ``redis+cluster://[user:pw@]host:port[,host:port...][?option=value]``; raise ``ValueError`` naming the part.

    The user and password are the Redis servers' (the master and its replicas, or every cluster node);
    sentinels that want a password of their own get ``?sentinel_password=`` (and ``sentinel_username``).
    Options: ``socket_timeout`` and ``socket_connect_timeout`` (seconds, or ``none``; 5 by default),
    ``max_connections``, ``client_name``, ``health_check_interval``.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError("the scheme must be redis+sentinel:// or redis+cluster://")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    kwargs: dict[str, Any] = {"scheme": scheme}
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if colon:
            kwargs["password"] = unquote(password)
    default_port = SENTINEL_PORT if scheme == "redis+sentinel" else CLUSTER_PORT
    if not hostlist:
        raise ValueError("the URL names no host; write host:port[,host:port...]")
    kwargs["hosts"] = tuple(_host(part, default_port) for part in hostlist.split(","))
    segments = [unquote(part) for part in path.split("/")] if slash else []
    if scheme == "redis+sentinel":
        if not segments or not segments[0]:
            raise ValueError("the path must name the master the sentinels watch, as in /mymaster (or /mymaster/0)")
        kwargs["service"] = segments[0]
        if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ValueError(f"after the master's name the path may only hold a database number, not {path!r}")
        if len(segments) == 2:
            kwargs["db"] = int(segments[1])
    elif any(segments):
        raise ValueError(f"a cluster URL has no path (a Redis Cluster has database 0 only), not /{path}")
    for name, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1]
        if name not in _TIMEOUTS and name not in _OPTIONS[scheme]:
            raise ValueError(f"unknown option {name!r}; {scheme}:// URLs take {', '.join(sorted(_known(scheme)))}")
        try:
            kwargs[name] = _option(name, value)
        except ValueError as exc:
            raise ValueError(f"invalid value {value!r} for option {name!r} ({exc})") from None
    return TopologyOptions(**kwargs)


def _known(scheme: str) -> set[str]:
    return {*_TIMEOUTS, *_OPTIONS[scheme]}


def _host(part: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` of a URL's host list."""
    if not part:
        raise ValueError("the host list has an empty entry; write host:port[,host:port...]")
    if part.startswith("["):
        host, bracket, after = part[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"malformed host {part!r}")
        port_text = after[1:]
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"the host {part!r} has no name")
    if not port_text:
        return unquote(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port of {part!r} is not a number from 1 to 65535")
    return unquote(host), int(port_text)


def _option(name: str, value: str) -> Any:
    if name in _TIMEOUTS:
        return to_timeout(value)
    if name == "max_connections":
        return to_positive_int(value)
    if name == "health_check_interval":
        return to_interval(value)
    return value


def build_client(options: TopologyOptions) -> RedisPyClient:
    """The redis-py client ``options`` describe, owned by the caller (nothing connects yet)."""
    connection: dict[str, Any] = {
        "username": options.username,
        "password": options.password,
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.socket_connect_timeout,
        "client_name": options.client_name,
        "health_check_interval": options.health_check_interval,
    }
    if options.scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        sentinel_kwargs = {
            "username": options.sentinel_username,
            "password": options.sentinel_password,
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.socket_connect_timeout,
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves its __init__ unannotated
            list(options.hosts), sentinel_kwargs=sentinel_kwargs, **connection
        )
        pool: dict[str, Any] = {} if options.max_connections is None else {"max_connections": options.max_connections}
        master = sentinel.master_for(options.service or "", db=options.db, **pool)
        return RedisPyClient(master, owned=[master, *sentinel.sentinels])
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    if options.max_connections is not None:
        connection["max_connections"] = options.max_connections
    cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in options.hosts], **connection)
    return RedisPyClient(cluster, owned=[cluster])


def _retrieve(refresh: asyncio.Future[Any]) -> None:
    """Mark a refresh's failure as seen: the calls waiting for it raise it, and one nobody awaited any
    more (every waiter gave up) is not reported as a never-retrieved exception."""
    if not refresh.cancelled():
        refresh.exception()


def _as_bytes(value: Any) -> Any:
    """A reply as asession's own client gives it: text as ``bytes`` (a client may decode responses)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_as_bytes(item) for item in value]
    return value


class RedisPyClient:
    """A redis-py asyncio client lent the calls RedisBackend makes of asession's own :class:`RedisClient`.

    Error replies are raised as :class:`asession.backends._resp.RedisError` with Redis' own text
    (``WRONGTYPE ...``, ``NOSCRIPT ...``), as the own client raises them; connection failures stay redis-py's
    exceptions. ``owned`` lists the clients :meth:`close` closes: none for a client handed in by the user,
    which stays its owner's to close.
    """

    def __init__(self, client: Any, *, owned: Sequence[Any] = ()) -> None:
        self.client = client
        self._owned = list(owned)
        self._refreshing: asyncio.Future[Any] | None = None
        from redis.exceptions import NoScriptError, ResponseError

        self._response_error = ResponseError
        self._noscript = NoScriptError

    async def _refresh(self) -> None:
        """A cluster's pending topology refresh, run to its end whoever waits for it.

        ``RedisCluster`` refreshes its slot map (``CLUSTER SLOTS``, then ``COMMAND``) inside the first call
        after a connection error, and a call that is cancelled mid-way (a request's ``store_timeout``) closes
        what the refresh had opened and leaves it to the next call. Under load a refresh can take longer
        than the bound, and then every request would cancel it and the app would never recover. Here the
        refresh is one task the calls wait for through :func:`asyncio.shield`: a call that gives up leaves
        it running, and the next call waits for the same one. redis-py has no public flag for a pending
        refresh; the calls read its ``_initialize`` attribute (no coroutine made when it is false), and a client
        without it (``Redis``, Sentinel's ``master_for``) never refreshes this way.
        """
        refreshing = self._refreshing
        if refreshing is None or refreshing.done():
            refreshing = self._refreshing = asyncio.ensure_future(self.client.initialize())
            refreshing.add_done_callback(_retrieve)
        await asyncio.shield(refreshing)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.client, "_initialize", False):  # a cluster's slot map to refresh first
            await self._refresh()
        try:
            return _as_bytes(await getattr(self.client, name)(*args, **kwargs))
        except self._noscript as exc:
            raise RedisError(f"NOSCRIPT {exc}") from exc
        except self._response_error as exc:
            raise RedisError(str(exc)) from exc

    async def open(self) -> None:
        """Reach the server (the master the sentinels name, or every cluster node) once now."""
        await self._call("ping")

    async def close(self) -> None:
        refreshing, self._refreshing = self._refreshing, None
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()  # nothing outlives the client: a refresh nobody waits for ends here
            await asyncio.wait([refreshing])
        for client in self._owned:
            await client.aclose()

    async def get(self, key: str) -> bytes | None:
        reply: bytes | None = await self._call("get", key)
        return reply

    async def hgetall(self, key: str) -> list[bytes]:
        """Fields and values in turn, as the own client's ``HGETALL`` (redis-py answers a dict)."""
        if getattr(self.client, "_initialize", False):  # a cluster's slot map to refresh first
            await self._refresh()
        try:
            mapping = await self.client.hgetall(key)
        except self._response_error as exc:
            raise RedisError(str(exc)) from exc
        return [_as_bytes(item) for pair in mapping.items() for item in pair]

    async def set(self, key: str, value: str | bytes, ex: int, nx: bool = False) -> bytes | None:
        written = await self._call("set", key, value, ex=ex, nx=nx)
        return b"OK" if written else None

    async def exists(self, key: str) -> int:
        count: int = await self._call("exists", key)
        return count

    async def delete(self, key: str) -> int:
        count: int = await self._call("delete", key)
        return count

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        return await self._call("evalsha", script.sha.decode(), len(keys), *keys, *args)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        try:
            return await self.evalsha(script, keys, args)
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._call("eval", script.source.decode(), len(keys), *keys, *args)
