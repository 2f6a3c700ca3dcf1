"""A lean asyncio Redis client: what CacheBackend needs of Redis, at a fraction of redis-py's CPU per command.

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

Redis Cluster is not supported yet. It needs: the slot map (``CLUSTER SHARDS`` / ``CLUSTER SLOTS`` at open,
CRC16 of the key modulo 16384), one :class:`RedisClient`-like pool per primary, and ``-MOVED slot host:port``
(refresh the map, resend) and ``-ASK slot host:port`` (send ``ASKING`` then the command to that node once)
error replies handled by resending instead of failing. Each command here is already a single key (a
script's one key follows its key count), built as bytes in one place (:func:`_command`) and answered
through one future, so routing fits in :meth:`RedisClient._send` without changing callers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from asession.backends._pool import ConnectionPool, PipelinedConnection

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "AuthenticationError",
    "ProtocolError",
    "RedisClient",
    "RedisError",
    "RedisOptions",
    "Script",
    "parse_url",
]

logger = logging.getLogger("asession.backends.redis")

#: Seconds to connect and to wait for a reply, unless the URL says otherwise (as redis-py).
DEFAULT_TIMEOUT = 5.0
#: Connections per client unless the URL says ``?max_connections=N``; commands are pipelined over them.
DEFAULT_MAX_CONNECTIONS = 4

#: The longest reply this client reads (a bulk string or the whole of one reply being buffered), unless
#: ``RedisOptions.max_reply_size`` says otherwise. asession never stores more than a backend's ``max_size``
#: (1 MiB by default), so a larger reply comes from a broken or hostile server: it fails the connection
#: instead of filling memory.
DEFAULT_MAX_REPLY_SIZE = 4 * 1024 * 1024
#: The longest line of a reply header (``$123``, ``*2``, ``-ERR ...``) before the reply counts as garbage.
_MAX_LINE = 64 * 1024

_CRLF = b"\r\n"
_INCOMPLETE = -1


class RedisError(Exception):
    """An error reply from the server (``-ERR ...``)."""


class AuthenticationError(RedisError):
    """The server refused AUTH: wrong password, unknown user, or a password where none is set."""


class ProtocolError(RedisError):
    """The server sent something that is not a RESP2 reply to a command; the connection is dropped."""


# -- URLs ------------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def _to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _to_timeout(value: str) -> float | None:
    if value.lower() in ("none", ""):
        return None
    seconds = float(value)
    if seconds <= 0:
        raise ValueError("must be a positive number of seconds")
    return seconds


def _to_verify_flags(value: str) -> list[ssl.VerifyFlags]:
    return [ssl.VerifyFlags[name.strip()] for name in value.split(",") if name.strip()]


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

#: Query options redis-py's URLs take that mean nothing here; they are accepted so existing URLs keep working.
_IGNORED = frozenset(
    {
        "retry_on_timeout",
        "health_check_interval",
        "socket_read_size",
        "legacy_responses",
        "decode_responses",
        "encoding",
        "encoding_errors",
        "protocol",  # replies to GET/SET/EXISTS/DEL read the same in RESP2 and RESP3
    }
)


@dataclass(frozen=True)
class RedisOptions:
    """Where and how to connect, as a ``redis://`` or ``rediss://`` URL says."""

    host: str = "127.0.0.1"
    port: int = 6379
    #: A Unix socket path (``unix://``); when set, ``host`` and ``port`` are not used.
    path: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    socket_timeout: float | None = DEFAULT_TIMEOUT
    socket_connect_timeout: float | None = DEFAULT_TIMEOUT
    socket_keepalive: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_reply_size: int = DEFAULT_MAX_REPLY_SIZE
    client_name: str | None = None
    #: redis-py options the URL gave that mean nothing to this client (logged once when it opens).
    ignored: tuple[str, ...] = ()
    ssl_cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    ssl_check_hostname: bool = True
    ssl_ca_certs: str | None = None
    ssl_ca_path: str | None = None
    ssl_ca_data: str | None = field(default=None, repr=False)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_ciphers: str | None = None
    ssl_min_version: ssl.TLSVersion | None = None
    ssl_include_verify_flags: tuple[ssl.VerifyFlags, ...] = ()
    ssl_exclude_verify_flags: tuple[ssl.VerifyFlags, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``rediss://`` (redis-py's defaults: certificates and host name checked)."""
        if not self.tls:
            return None
        context = ssl.create_default_context()
        context.check_hostname = self.ssl_check_hostname and self.ssl_cert_reqs != ssl.CERT_NONE
        context.verify_mode = self.ssl_cert_reqs
        for flag in self.ssl_include_verify_flags:
            context.verify_flags |= flag
        for flag in self.ssl_exclude_verify_flags:
            context.verify_flags &= ~flag
        if self.ssl_certfile or self.ssl_keyfile:
            context.load_cert_chain(self.ssl_certfile or "", self.ssl_keyfile, self.ssl_password)
        if self.ssl_ca_certs or self.ssl_ca_path or self.ssl_ca_data:
            context.load_verify_locations(self.ssl_ca_certs, self.ssl_ca_path, self.ssl_ca_data)
        if self.ssl_min_version is not None:
            context.minimum_version = self.ssl_min_version
        if self.ssl_ciphers is not None:
            context.set_ciphers(self.ssl_ciphers)
        return context


def parse_url(url: str) -> RedisOptions:
    """Parse ``redis[s]://[[user]:password@]host[:port][/db][?option=value&...]`` or
    ``unix://[[user]:password@]/path/to/socket[?db=N&...]``; raise ``ValueError``.

    Options: ``db``, ``socket_timeout``, ``socket_connect_timeout`` (seconds, or ``none``),
    ``socket_keepalive``, ``max_connections``, ``client_name``, and for TLS ``ssl_cert_reqs``
    (none/optional/required), ``ssl_check_hostname``, ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``, ``ssl_ciphers``, ``ssl_min_version`` and
    ``ssl_include_verify_flags`` / ``ssl_exclude_verify_flags``: the names redis-py's URLs use.
    redis-py tuning knobs with no meaning here (``retry_on_timeout``, ``health_check_interval``, ...) are
    accepted and ignored; anything else is an error.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("the scheme must be redis://, rediss:// or unix://")
    kwargs: dict[str, Any] = {"tls": scheme == "rediss"}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if scheme == "unix":
        # unix://[[user]:password@]/path/to/redis.sock[?db=N]: the path is the socket, the database an option.
        socket_path = unquote(parts.path)
        if not socket_path.startswith("/") or (parts.hostname and parts.hostname != "localhost"):
            raise ValueError("a unix:// URL names an absolute socket path, as in unix:///run/redis/redis.sock")
        kwargs["path"] = socket_path
    else:
        port = parts.port  # raises ValueError for a port that is not a number
        if parts.hostname:
            kwargs["host"] = unquote(parts.hostname)
        if port:
            kwargs["port"] = port
        path = unquote(parts.path).strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"the path must be a database number such as /0, not /{path}")
            kwargs["db"] = int(path)
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        try:
            _parse_option(kwargs, name, value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"invalid value {value!r} for option {name!r} ({exc})") from None
    if kwargs.get("max_connections", 1) < 1:
        raise ValueError("max_connections must be at least 1")
    return RedisOptions(**kwargs)


def _parse_option(kwargs: dict[str, Any], name: str, value: str) -> None:
    if name in ("socket_timeout", "socket_connect_timeout"):
        kwargs[name] = _to_timeout(value)
    elif name in ("db", "max_connections"):
        kwargs[name] = int(value)
    elif name in ("socket_keepalive", "ssl_check_hostname"):
        kwargs[name] = _to_bool(value)
    elif name == "ssl_cert_reqs":
        kwargs[name] = _CERT_REQS[value.lower()]
    elif name == "ssl_min_version":
        kwargs[name] = ssl.TLSVersion(int(value))
    elif name in ("ssl_include_verify_flags", "ssl_exclude_verify_flags"):
        kwargs[name] = tuple(_to_verify_flags(value))
    elif name in (
        "client_name",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_ciphers",
    ):
        kwargs[name] = value
    elif name in _IGNORED:
        kwargs["ignored"] = (*kwargs.get("ignored", ()), name)
    else:
        raise ValueError("not an option this client understands")


# -- RESP2 -----------------------------------------------------------------------------------------------


def _command(*args: bytes) -> bytes:
    """Encode a command as a RESP array of bulk strings."""
    return b"*%d\r\n%b" % (len(args), b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args]))


def _parse(buf: bytes | bytearray, pos: int, limit: int = DEFAULT_MAX_REPLY_SIZE) -> tuple[Any, int]:
    """Parse one reply starting at ``pos``: ``(value, end)``, or ``(None, _INCOMPLETE)`` if more data is needed.

    Bulk strings come back as ``bytes``, simple strings as ``bytes``, integers as ``int``, errors as a
    :class:`RedisError` instance (returned, not raised), arrays as lists. Raises :class:`ProtocolError`,
    also for a bulk string longer than ``limit`` bytes or a header line that never ends.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        if len(buf) - pos > _MAX_LINE:
            raise ProtocolError(f"malformed reply from Redis: no line end in {_MAX_LINE} bytes")
        return None, _INCOMPLETE
    kind = buf[pos]
    try:
        if kind == 36:  # $ bulk string
            size = int(buf[pos + 1 : end])
            if size < 0:
                return None, end + 2
            if size > limit:
                raise ProtocolError(f"reply of {size} bytes from Redis exceeds the limit of {limit} bytes")
            stop = end + 2 + size
            if len(buf) < stop + 2:
                return None, _INCOMPLETE
            return bytes(buf[end + 2 : stop]), stop + 2
        if kind == 43:  # + simple string
            return bytes(buf[pos + 1 : end]), end + 2
        if kind == 58:  # : integer
            return int(buf[pos + 1 : end]), end + 2
        if kind == 45:  # - error
            return RedisError(bytes(buf[pos + 1 : end]).decode("utf-8", "replace")), end + 2
        if kind == 42:  # * array
            count = int(buf[pos + 1 : end])
            if count < 0:
                return None, end + 2
            items = []
            cursor = end + 2
            size = len(buf)
            for _ in range(count):
                # Bulk strings (HGETALL's fields and values, a script's reply) parsed in place; the rest,
                # and anything odd, through the general case.
                if cursor < size and buf[cursor] == 36:
                    line_end = buf.find(_CRLF, cursor)
                    if line_end > 0:
                        length = int(buf[cursor + 1 : line_end])
                        if 0 <= length <= limit:
                            stop = line_end + 2 + length
                            if size < stop + 2:
                                return None, _INCOMPLETE
                            items.append(bytes(buf[line_end + 2 : stop]))
                            cursor = stop + 2
                            continue
                item, cursor = _parse(buf, cursor, limit)
                if cursor == _INCOMPLETE:
                    return None, _INCOMPLETE
                items.append(item)
            return items, cursor
    except ValueError:
        pass
    raise ProtocolError(f"malformed reply from Redis: {bytes(buf[pos : min(end, pos + 40)])!r}")


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


# -- scripts ----------------------------------------------------------------------------------------------


class Script:
    """A Lua script for :meth:`RedisClient.run`, known to the server by its SHA-1 once it has been sent."""

    __slots__ = ("sha", "source", "evalsha")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()
        #: ``EVALSHA`` and the SHA-1 as RESP bulk strings, encoded once rather than on every call.
        self.evalsha = b"$7\r\nEVALSHA\r\n$%d\r\n%b\r\n" % (len(self.sha), self.sha)


def is_noscript(exc: RedisError) -> bool:
    """Whether ``exc`` is Redis saying it does not know a script (``EVALSHA`` ran nothing)."""
    return str(exc).startswith("NOSCRIPT")


def _arg(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


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
        if connection is None:
            return self._send_when_connected(command)
        return connection.send(command)

    async def _send_when_connected(self, command: bytes) -> Any:
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
