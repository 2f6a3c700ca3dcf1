"""A lean asyncio Redis client: what RedisBackend needs of Redis, at a fraction of redis-py's CPU per command.

Why: issue #5 asks for Redis sessions at 3x the throughput of starsessions, which goes through redis-py.
redis-py 8.1 spends 36-77 µs of Python CPU per command (``benchmarks/REDIS_CLIENTS.md`` measures it beside
hiredis, coredis and valkey-glide); this client spends a few µs, so the session layer's Redis work stays
small beside the HTTP server's.

How it works:

- :class:`RedisClient` keeps up to ``max_connections`` connections and **pipelines** commands over them:
  each command is written at once (commands issued in the same event-loop pass go out in one write) and
  its reply is matched to it by order, through one FIFO of futures per connection. A command goes to an
  idle connection when there is one, else to the least busy one, and a new connection is opened in the
  background while all are busy and there are fewer than ``max_connections``.
- :class:`_Connection` is an :class:`asyncio.Protocol` parsing RESP2 replies (simple strings, errors,
  integers, bulk strings, arrays). It sends ``AUTH [user] password``, ``SELECT db`` and ``CLIENT SETNAME``
  when it connects; TLS is ``loop.create_connection(ssl=context)``.
- **Timeouts** cost no task per command: each connection has one ``loop.call_later`` timer, re-armed only
  every ``socket_timeout`` seconds while commands are pending; when the connection has received nothing
  for ``socket_timeout`` seconds while a command waits, it is aborted. Connecting (TCP, TLS, AUTH,
  SELECT) is bounded by ``socket_connect_timeout``.
- **Atomic read-modify-write is a Lua script** (:class:`Script`, :meth:`RedisClient.run`: ``EVALSHA``, then
  ``EVAL`` once when the server answers ``NOSCRIPT``). ``MULTI``/``EXEC`` and ``WATCH`` cannot be used here:
  they are state of a connection, and every connection carries the commands of many callers at once, so
  another caller's commands would land inside the transaction or clear the watch.
- **No reply ever reaches the wrong command.** A connection that fails (timeout, reset, malformed reply)
  fails every command in flight on it and is dropped; the next command opens a new connection, which is
  how a restarted server is reconnected to. A command cancelled by its caller keeps its place in the FIFO,
  so its reply is read and dropped and the replies after it still go to their own commands; its
  connection stays in use.

- **A connection silent for ``health_check_interval`` seconds** (30 by default) is checked before it is
  lent again: a ``PING`` first, the command only once the ``PING`` is answered, on a new connection when
  it is not. A server's ``timeout`` setting, a restart or a NAT that forgot the connection while the app
  was idle then costs one reconnection instead of the first request's failure.

The protocol is in :mod:`asession.backends._resp`, the URLs in :mod:`asession.backends._redis_url`, the pool
in :mod:`asession.backends._pool`. Sentinel and Cluster are redis-py's (:mod:`asession.backends.redis` says
why).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any

from asession.backends._pool import ConnectionPool, PipelinedConnection
from asession.backends._redis_url import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, RedisOptions, parse_url
from asession.backends._resp import (
    _INCOMPLETE,
    DEFAULT_MAX_REPLY_SIZE,
    AuthenticationError,
    ProtocolError,
    RedisError,
    Script,
    _arg,
    _command,
    _parse,
    is_noscript,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REPLY_SIZE",
    "DEFAULT_TIMEOUT",
    "AuthenticationError",
    "ProtocolError",
    "RedisClient",
    "RedisError",
    "RedisOptions",
    "Script",
    "is_noscript",
    "parse_url",
]

logger = logging.getLogger("asession.backends.redis")

_PING = _command(b"PING")


# -- one connection ----------------------------------------------------------------------------------------


class _Connection(PipelinedConnection["asyncio.Future[Any]"]):
    """One Redis socket (:class:`asession.backends._pool.PipelinedConnection`): replies resolve futures in order."""

    def __init__(self, client: RedisClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(client, loop, client.options.socket_timeout)
        self._limit = client.options.max_reply_size

    @staticmethod
    def _future_of(entry: asyncio.Future[Any]) -> asyncio.Future[Any]:
        return entry

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray = self._buffer
        else:
            buf = data
        self._last_activity = self._loop.time()
        waiters = self.waiters
        size = len(buf)
        limit = self._limit
        pos = 0
        try:
            while pos < size:
                value, end = _parse(buf, pos, limit)
                if end == _INCOMPLETE:
                    break
                pos = end
                if not waiters:
                    raise ProtocolError("Redis sent a reply to no command")
                future = waiters.popleft()
                if future.done():  # cancelled by its caller: the reply is dropped, the order kept
                    continue
                if isinstance(value, RedisError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except ProtocolError as exc:
            self.fail(exc)
            return
        if pos == size:
            if self._buffer:
                self._buffer = bytearray()
        elif pos or buf is not self._buffer:
            self._buffer = bytearray(buf[pos:])

    # commands

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command`` and return the future its reply will resolve.

        On a connection that has failed already the future fails at once: nothing would ever answer it.
        """
        future = self._loop.create_future()
        if self.closed:
            future.set_exception(ConnectionError(f"the connection to {self._where()} was lost"))
            return future
        if not self.waiters:
            self._last_activity = self._loop.time()
            if self._timer is None and self._timeout is not None:
                self._timer = self._loop.call_later(self._timeout, self._check_timeout)
        self.waiters.append(future)
        if self._out is None:
            self._out = [command]
            self._loop.call_soon(self._flush)
        else:
            self._out.append(command)
        return future


# -- the client -------------------------------------------------------------------------------------------


class RedisClient(ConnectionPool["_Connection"]):
    """Pipelined commands over up to ``options.max_connections`` connections (:mod:`asession.backends._pool`).

    :meth:`get`, :meth:`hgetall`, :meth:`set`, :meth:`exists` and :meth:`delete` return awaitables (a future when a
    connection is ready, so the hot path runs no coroutine of its own). Failures raise
    :class:`ConnectionError`, :class:`OSError`, :class:`TimeoutError` or :class:`RedisError`.
    """

    server = "Redis"

    def __init__(self, options: RedisOptions) -> None:
        super().__init__(
            options.path if options.path is not None else f"{options.host}:{options.port}", options.max_connections
        )
        self.options = options
        #: Seconds of silence after which a connection is checked before its next command (0: never).
        self._check_after = options.health_check_interval
        self._ssl: ssl.SSLContext | None = None
        self._ssl_built = False
        handshake = []
        self._auth = options.password is not None or options.username is not None
        if self._auth:
            credentials = [options.username.encode()] if options.username else []
            handshake.append(_command(b"AUTH", *credentials, (options.password or "").encode()))
        if options.db:
            handshake.append(_command(b"SELECT", str(options.db).encode()))
        if options.client_name:
            handshake.append(_command(b"CLIENT", b"SETNAME", options.client_name.encode()))
        self._handshake = handshake

    @classmethod
    def from_url(cls, url: str) -> RedisClient:
        return cls(parse_url(url))

    # -- connections --------------------------------------------------------------------------------------

    async def _open_connection(self) -> _Connection:
        options = self.options
        loop = asyncio.get_running_loop()
        if not self._ssl_built:
            self._ssl = options.ssl_context()
            self._ssl_built = True

        def factory() -> _Connection:
            return _Connection(self, loop)

        if options.path is not None:
            connect = loop.create_unix_connection(factory, options.path)
        else:
            timeout = options.socket_connect_timeout
            if self._ssl is not None and timeout is not None:
                # asyncio's own handshake timeout closes the transport; cancelling a handshake from outside
                # (wait_for below) can leave it unclosed on Python 3.11. The outer bound stays as a backstop.
                connect = loop.create_connection(
                    factory, options.host, options.port, ssl=self._ssl, ssl_handshake_timeout=timeout
                )
            else:
                connect = loop.create_connection(factory, options.host, options.port, ssl=self._ssl)
        outer = options.socket_connect_timeout
        transport, connection = await asyncio.wait_for(
            connect, None if outer is None else outer + (1.0 if self._ssl is not None else 0.0)
        )
        try:
            if options.socket_keepalive:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._handshake:
                replies = [connection.send(command) for command in self._handshake]
                results = await asyncio.wait_for(
                    asyncio.gather(*replies, return_exceptions=True), options.socket_connect_timeout
                )
                for index, result in enumerate(results):
                    if isinstance(result, ProtocolError):
                        raise ProtocolError(
                            f"the server at {self.address} does not answer like Redis ({result}); check the port"
                        ) from result
                    if isinstance(result, RedisError) and index == 0 and self._auth:
                        raise AuthenticationError(str(result)) from result
                    if isinstance(result, BaseException):
                        raise result
            # The server may drop a connection it has just accepted (maxclients, CLIENT KILL, a proxy):
            # such a connection must never be pooled, or the commands sent on it would wait for ever.
            if connection.closed:
                raise ConnectionError(f"Redis at {self.address} closed the connection as soon as it was opened")
        except BaseException:
            connection.fail(ConnectionError("the connection to Redis was not set up"))
            raise
        return connection

    # -- commands -----------------------------------------------------------------------------------------

    def _send(self, command: bytes) -> Awaitable[Any]:
        connection = self._pick()
        if connection is None or (
            self._check_after and not connection.waiters and connection.silent_for() > self._check_after
        ):
            return self._send_when_connected(command, connection)
        return connection.send(command)

    async def _send_when_connected(self, command: bytes, silent: _Connection | None = None) -> Any:
        """Send ``command`` once a connection is ready: a new one, or ``silent`` once it has answered a ``PING``."""
        if silent is not None:
            try:
                await silent.send(_PING)
            except (ConnectionError, OSError, TimeoutError) as exc:
                logger.info(
                    "Redis at %s: a connection silent for a while failed its check (%s); reconnecting.",
                    self.address,
                    exc,
                )
            else:
                return await silent.send(command)
        connection = await self._connection()
        return await connection.send(command)

    def execute(self, *args: bytes | str | int) -> Awaitable[Any]:
        """Send any command; the reply as parsed by :func:`_parse` (errors raised as :class:`RedisError`)."""
        return self._send(_command(*map(_arg, args)))

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Awaitable[Any]:
        """``EVALSHA`` of ``script``: its reply, or :class:`RedisError` ``NOSCRIPT ...`` (nothing ran) when the
        server does not know the script yet; :meth:`run` handles that. Callers on a hot path await this and
        fall back to :meth:`run` on ``NOSCRIPT``, which spares them a coroutine."""
        parts = [b"%d" % len(keys), *map(str.encode, keys)]
        parts += [arg if type(arg) is bytes else str(arg).encode() for arg in args]
        return self._send(
            b"*%d\r\n%b%b" % (len(parts) + 2, script.evalsha, b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts]))
        )

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """Run ``script`` atomically on ``keys`` with ``args``: its reply, as :meth:`execute` gives it.

        ``EVALSHA`` first; a server that does not know the script yet (restarted, ``SCRIPT FLUSH``) answers
        ``NOSCRIPT`` without running anything, and gets the source once through ``EVAL``, which caches it.
        """
        try:
            return await self.evalsha(script, keys, args)
        except RedisError as exc:
            if not is_noscript(exc):
                raise
        return await self._send(
            _command(b"EVAL", script.source, b"%d" % len(keys), *map(str.encode, keys), *map(_arg, args))
        )

    def get(self, key: str) -> Awaitable[bytes | None]:
        """``GET key``: the value as bytes, or ``None``."""
        raw = key.encode()
        return self._send(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(raw), raw))

    def hgetall(self, key: str) -> Awaitable[list[bytes] | None]:
        """``HGETALL key``: fields and values in turn, ``[]`` when the key is missing.

        Raises :class:`RedisError` (``WRONGTYPE ...``) when the key holds something other than a hash.
        """
        raw = key.encode()
        return self._send(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n" % (len(raw), raw))

    def set(self, key: str, value: str | bytes, ex: int, nx: bool = False) -> Awaitable[bytes | None]:
        """``SET key value EX ex [NX]``: ``b"OK"``, or ``None`` when NX found the key taken."""
        raw = key.encode()
        data = value.encode() if isinstance(value, str) else value
        seconds = b"%d" % ex
        if nx:
            head = b"*6\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n$%d\r\n%b\r\n$2\r\nNX\r\n"
        else:
            head = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n$%d\r\n%b\r\n"
        return self._send(head % (len(raw), raw, len(data), data, len(seconds), seconds))

    def exists(self, key: str) -> Awaitable[int]:
        """``EXISTS key``: 1 or 0."""
        return self._send(_command(b"EXISTS", key.encode()))

    def delete(self, key: str) -> Awaitable[int]:
        """``DEL key``: how many keys were removed."""
        return self._send(_command(b"DEL", key.encode()))
