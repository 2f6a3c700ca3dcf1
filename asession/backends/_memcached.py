"""A small asyncio memcached client: what CacheBackend needs of memcached, without aiomcache's two failures.

Why: CacheBackend used to reach memcached through aiocache and aiomcache 0.8, and a chaos soak found two
serious bugs there:

1. A command cancelled mid-flight (aiocache's timeout, a request's task cancelled) returns its connection
   to aiomcache's pool with the reply still unread, so the *next* command on that connection reads the
   previous command's reply: ``add failed: VALUE asession:<another key>``, sessions read back empty, and a
   ``get`` could in principle return another session's data.
2. A reply cut in the middle of a line freezes the whole event loop at 100 % CPU: aiomcache's
   ``_execute_simple_command`` loops on ``readline()`` at the end of the stream without ever yielding.

How it works (the design of asession's own Redis client, :mod:`asession.backends._redis`):

- :class:`MemcachedClient` keeps up to ``max_connections`` connections and **pipelines** commands over
  them: each command is written at once (commands issued in the same event-loop pass go out in one write)
  and its reply is matched to it by order, through one FIFO of waiters per connection. A command goes to an
  idle connection when there is one, else to the least busy one, and a new connection is opened in the
  background while all are busy and there are fewer than ``max_connections``.
- :class:`_Connection` is an :class:`asyncio.Protocol` parsing the text protocol's replies. memcached's
  replies do not say which command they answer, so each waiter remembers its command's kind and key and
  the reply is parsed for it: a ``VALUE`` line must name the key asked for (anything else is a
  :class:`ProtocolError` that drops the connection: one key's value is never handed to another), values
  larger than ``max_value_size`` and header lines longer than 64 KiB are refused the same way, and every
  pass of the parser either consumes a whole reply or stops to wait for more data: it never spins.
- **No reply ever reaches the wrong command.** A command cancelled by its caller keeps its place in the
  FIFO, so its reply is read and dropped and the replies after it still go to their own commands. A
  connection that fails (timeout, reset, malformed reply, end of stream) fails every command in flight on
  it and is dropped; the next command opens a new connection, which is how a restarted server is
  reconnected to. A command sent on a connection already closed fails at once, and a connection is pooled
  only once it has answered ``version``, so one the server closes as soon as it accepts it is never used.
- ``ERROR``, ``CLIENT_ERROR`` and ``SERVER_ERROR`` replies raise :class:`MemcachedError` for their command
  only: memcached stays in step after them, so the connection is kept.
- **Timeouts** cost no task per command: each connection has one ``loop.call_later`` timer, re-armed only
  every ``socket_timeout`` seconds while commands are pending; when the connection has received nothing for
  ``socket_timeout`` seconds while a command waits, it is aborted. Connecting is bounded by
  ``socket_connect_timeout``.
- TTLs are seconds from now; memcached reads an expiry time above 30 days as a Unix time, so longer TTLs
  are sent as ``time.time() + ttl``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from asession.backends._pool import ConnectionPool, PipelinedConnection
from asession.backends._urls import to_positive_int, to_timeout

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_VALUE_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_KEY_LENGTH",
    "MAX_RELATIVE_TTL",
    "MemcachedClient",
    "MemcachedError",
    "MemcachedOptions",
    "ProtocolError",
    "parse_url",
]

#: Seconds to connect and to wait for a reply, unless the URL says otherwise.
DEFAULT_TIMEOUT = 5.0
#: Connections per client unless the URL says ``?max_connections=N`` (or ``?pool_size=N``).
DEFAULT_MAX_CONNECTIONS = 4
#: The largest value this client reads or writes, unless ``MemcachedOptions.max_value_size`` says otherwise.
#: memcached keeps items of at most 1 MiB by default and asession never stores more than a backend's
#: ``max_size``, so a larger value in a reply comes from a broken or hostile server: it fails the connection
#: instead of filling memory.
DEFAULT_MAX_VALUE_SIZE = 4 * 1024 * 1024
#: The longest key memcached accepts.
MAX_KEY_LENGTH = 250
#: memcached reads an expiry time above 30 days as an absolute Unix time, not as seconds from now.
MAX_RELATIVE_TTL = 30 * 24 * 3600
#: The longest reply line (``VALUE ...``, ``SERVER_ERROR ...``) before the reply counts as garbage.
_MAX_LINE = 64 * 1024

_CRLF = b"\r\n"
_END = b"\r\nEND\r\n"
_INCOMPLETE = -1
_KEY = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_KEY_LENGTH)


class MemcachedError(Exception):
    """An error reply from the server: ``ERROR``, ``CLIENT_ERROR ...`` or ``SERVER_ERROR ...``."""


class ProtocolError(MemcachedError):
    """The server sent something that is not a reply to the command; the connection is dropped."""


# -- URLs ------------------------------------------------------------------------------------------------


_OPTIONS = {
    "socket_timeout": ("socket_timeout", to_timeout),
    "socket_connect_timeout": ("socket_connect_timeout", to_timeout),
    "max_connections": ("max_connections", to_positive_int),
    "pool_size": ("max_connections", to_positive_int),  # aiocache's name, which existing URLs use
    "max_value_size": ("max_value_size", to_positive_int),
}


@dataclass(frozen=True)
class MemcachedOptions:
    """Where and how to connect, as a ``memcached://`` URL says."""

    host: str = "127.0.0.1"
    port: int = 11211
    socket_timeout: float | None = DEFAULT_TIMEOUT
    socket_connect_timeout: float | None = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE


def parse_url(url: str) -> MemcachedOptions:
    """Parse ``memcached://host[:port][?option=value&...]``; raise ``ValueError``.

    Options: ``socket_timeout``, ``socket_connect_timeout`` (seconds, or ``none``), ``max_connections``
    (``pool_size`` is the same, as aiocache calls it) and ``max_value_size`` (bytes). memcached's text
    protocol has no passwords and no databases: a user, a password or a path is an error, as is any other
    option.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "memcached":
        raise ValueError("the scheme must be memcached://")
    port = parts.port  # raises ValueError for a port that is not a number
    if parts.username or parts.password:
        raise ValueError("memcached has no passwords over its text protocol; remove the user and password")
    if unquote(parts.path).strip("/"):
        raise ValueError("memcached has no databases; remove the path")
    if parts.fragment:
        raise ValueError("a memcached URL has no fragment")
    kwargs: dict[str, Any] = {}
    if parts.hostname:
        kwargs["host"] = unquote(parts.hostname)
    if port:
        kwargs["port"] = port
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if name not in _OPTIONS:
            raise ValueError(f"unknown option {name!r}; the options are {', '.join(sorted(_OPTIONS))}")
        field_name, convert = _OPTIONS[name]
        try:
            kwargs[field_name] = convert(value)
        except ValueError as exc:
            raise ValueError(f"invalid value {value!r} for option {name!r} ({exc})") from None
    return MemcachedOptions(**kwargs)


# -- the text protocol ------------------------------------------------------------------------------------

# What a waiter's reply is parsed as. _SEEN is a ``gets`` whose caller wants the value only, the token being
# remembered by the client (MemcachedClient.get_remembering); it sorts with _GET and _GETS (kind <= _GETS).
_GET, _SEEN, _GETS, _STORE, _CAS, _DELETE, _TOUCH, _VERSION = range(8)
#: Values the client remembers with their CAS tokens (get_remembering), and the largest it remembers (bytes):
#: at most 4 MiB per client; an update of a value forgotten costs one ``gets`` more.
_SEEN_SIZE = 512
_SEEN_VALUE = 8192

#: The one-line replies each kind of command may get, and what they mean.
_STATUS: dict[int, dict[bytes, bool | None]] = {
    _STORE: {b"STORED": True, b"NOT_STORED": False},
    _CAS: {b"STORED": True, b"EXISTS": False, b"NOT_FOUND": None},
    _DELETE: {b"DELETED": True, b"NOT_FOUND": False},
    _TOUCH: {b"TOUCHED": True, b"NOT_FOUND": False},
    _VERSION: {},
}


def _key(key: str) -> bytes:
    """``key`` as memcached reads it: 1 to 250 printable ASCII characters, no spaces; else ``ValueError``."""
    raw = key.encode() if key.isascii() else b""
    if _KEY.fullmatch(raw) is None:
        raise ValueError(f"not a memcached key (1 to {MAX_KEY_LENGTH} printable ASCII characters, no spaces)")
    return raw


def _exptime(ttl: int) -> int:
    """memcached's expiry time for a TTL in seconds (0: no expiry; more than 30 days: a Unix time)."""
    ttl = int(ttl)
    if ttl > MAX_RELATIVE_TTL:
        return int(time.time()) + ttl
    return ttl


def _malformed(line: bytes | bytearray) -> ProtocolError:
    return ProtocolError(f"malformed reply from memcached: {bytes(line[:60])!r}")


def _parse(buf: bytes | bytearray, pos: int, kind: int, key: bytes, limit: int) -> tuple[Any, int]:
    """Parse the reply to one command of ``kind`` on ``key`` at ``pos``: ``(value, end)``.

    ``(None, _INCOMPLETE)`` when more data is needed. Error replies come back as a :class:`MemcachedError`
    instance (returned, not raised). Raises :class:`ProtocolError` for anything that is not a reply to this
    command: a ``VALUE`` for another key, a value larger than ``limit``, a line longer than 64 KiB.
    """
    end = buf.find(_CRLF, pos, pos + _MAX_LINE + 2)
    if end < 0:
        if len(buf) - pos > _MAX_LINE:
            raise ProtocolError(f"malformed reply from memcached: no line end in {_MAX_LINE} bytes")
        return None, _INCOMPLETE
    line = bytes(buf[pos:end])
    after = end + 2
    if kind <= _GETS:
        if line == b"END":
            return None, after
        if line.startswith(b"VALUE "):
            parts = line.split(b" ")
            if len(parts) != (4 if kind == _GET else 5) or not all(part.isdigit() for part in parts[2:]):
                raise _malformed(line)
            if parts[1] != key:
                raise ProtocolError(f"memcached answered a get of {key[:60]!r} with the value of {parts[1][:60]!r}")
            size = int(parts[3])
            if size > limit:
                raise ProtocolError(f"value of {size} bytes from memcached exceeds the limit of {limit} bytes")
            stop = after + size
            if len(buf) < stop + 7:
                return None, _INCOMPLETE
            if buf[stop : stop + 7] != _END:
                raise _malformed(buf[stop : stop + 7])
            data = bytes(buf[after:stop])
            return (data if kind == _GET else (data, int(parts[4]))), stop + 7
    else:
        status = _STATUS[kind]
        if line in status:
            return status[line], after
        if kind == _VERSION and line.startswith(b"VERSION "):
            return line[8:].decode("ascii", "replace"), after
    if line == b"ERROR" or line.startswith((b"CLIENT_ERROR ", b"SERVER_ERROR ")):
        return MemcachedError(line.decode("utf-8", "replace")), after
    raise _malformed(line)


# -- one connection ----------------------------------------------------------------------------------------


class _Connection(PipelinedConnection["tuple[asyncio.Future[Any], int, bytes]"]):
    """One memcached socket (:class:`asession.backends._pool.PipelinedConnection`): replies matched to a FIFO
    of ``(future, kind, key)``."""

    def __init__(self, client: MemcachedClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(client, loop, client.options.socket_timeout)
        self._limit = client.options.max_value_size
        self._remember = client.remember

    @staticmethod
    def _future_of(entry: tuple[asyncio.Future[Any], int, bytes]) -> asyncio.Future[Any]:
        return entry[0]

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
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
                if not waiters:
                    raise ProtocolError(f"memcached sent a reply to no command: {bytes(buf[pos : pos + 60])!r}")
                future, kind, key = waiters[0]
                value, end = _parse(buf, pos, kind, key, limit)
                if end == _INCOMPLETE:
                    break
                pos = end  # every reply parsed consumes input: this loop cannot spin
                waiters.popleft()
                if future.done():  # cancelled by its caller: the reply is dropped, the order kept
                    continue
                if isinstance(value, MemcachedError):
                    future.set_exception(value)
                elif kind == _SEEN and value is not None:
                    self._remember(key, value)
                    future.set_result(value[0])
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

    def send(self, command: bytes, kind: int, key: bytes) -> asyncio.Future[Any]:
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
        self.waiters.append((future, kind, key))
        if self._out is None:
            self._out = [command]
            self._loop.call_soon(self._flush)
        else:
            self._out.append(command)
        return future


# -- the client -------------------------------------------------------------------------------------------


class MemcachedClient(ConnectionPool["_Connection"]):
    """Pipelined commands over up to ``options.max_connections`` connections (:mod:`asession.backends._pool`).

    The commands return awaitables (a future when a connection is ready, so the hot path runs no coroutine
    of its own); a key that memcached would refuse raises ``ValueError`` at once. Failures raise
    :class:`ConnectionError`, :class:`OSError`, :class:`TimeoutError`, :class:`MemcachedError` or
    :class:`ProtocolError`. TTLs are seconds from now; 0 means no expiry.
    """

    server = "memcached"

    def __init__(self, options: MemcachedOptions) -> None:
        super().__init__(f"{options.host}:{options.port}", options.max_connections)
        self.options = options
        #: The value and CAS token of keys read by :meth:`get_remembering`, until :meth:`remembered` takes them.
        self._seen: dict[bytes, tuple[bytes, int]] = {}

    @classmethod
    def from_url(cls, url: str) -> MemcachedClient:
        return cls(parse_url(url))

    async def __aenter__(self) -> MemcachedClient:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- connections --------------------------------------------------------------------------------------

    async def _open_connection(self) -> _Connection:
        options = self.options
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            return _Connection(self, loop)

        connect = loop.create_connection(factory, options.host, options.port)
        _, connection = await asyncio.wait_for(connect, options.socket_connect_timeout)
        try:
            # One round trip before the connection is pooled: a server that is not memcached fails here, and
            # so does one that drops the connection it has just accepted (too many connections, a proxy):
            # such a connection must never be pooled, or the commands sent on it would fail or wait.
            try:
                await asyncio.wait_for(connection.send(b"version\r\n", _VERSION, b""), options.socket_connect_timeout)
            except MemcachedError as exc:
                raise ProtocolError(
                    f"the server at {self.address} does not answer like memcached ({exc}); check the port"
                ) from exc
            if connection.closed:
                raise ConnectionError(f"memcached at {self.address} closed the connection as soon as it was opened")
        except BaseException:
            connection.fail(ConnectionError("the connection to memcached was not set up"))
            raise
        return connection

    # -- commands -----------------------------------------------------------------------------------------

    def _send(self, command: bytes, kind: int, key: bytes) -> Awaitable[Any]:
        connection = self._pick()
        if connection is None:
            return self._send_when_connected(command, kind, key)
        return connection.send(command, kind, key)

    async def _send_when_connected(self, command: bytes, kind: int, key: bytes) -> Any:
        connection = await self._connection()
        return await connection.send(command, kind, key)

    def _data(self, value: bytes | str) -> bytes:
        data = value.encode() if isinstance(value, str) else bytes(value)
        if len(data) > self.options.max_value_size:
            raise ValueError(f"a value of {len(data)} bytes exceeds max_value_size ({self.options.max_value_size})")
        return data

    def get(self, key: str) -> Awaitable[bytes | None]:
        """``get key``: the value, or ``None``."""
        raw = _key(key)
        return self._send(b"get %b\r\n" % raw, _GET, raw)

    def get_remembering(self, key: str) -> Awaitable[bytes | None]:
        """:meth:`get` through ``gets``: the value, whose CAS token :meth:`remembered` then hands out once.

        For a read that an update may follow (a session loaded by a request, then saved by it): the update
        can then go straight to :meth:`cas`, one round trip instead of ``gets`` and ``cas``. Values larger
        than 8 KiB are not remembered, nor more than 512 keys at a time.
        """
        raw = _key(key)
        return self._send(b"gets %b\r\n" % raw, _SEEN, raw)

    def remembered(self, key: str) -> tuple[bytes, int] | None:
        """The value and CAS token :meth:`get_remembering` last read for ``key``, once; ``None`` if none.

        The token may be out of date (another write since): :meth:`cas` with it then answers ``False``.
        """
        return self._seen.pop(key.encode(), None) if self._seen else None

    def remember(self, key: bytes, found: tuple[bytes, int]) -> None:
        """Keep ``found`` (value, CAS token) for :meth:`remembered`; called by the connection's parser."""
        if len(found[0]) <= _SEEN_VALUE:
            seen = self._seen
            if len(seen) >= _SEEN_SIZE:
                seen.clear()
            seen[key] = found

    def gets(self, key: str) -> Awaitable[tuple[bytes, int] | None]:
        """``gets key``: the value and its CAS token for :meth:`cas`, or ``None``."""
        raw = _key(key)
        return self._send(b"gets %b\r\n" % raw, _GETS, raw)

    def set(self, key: str, value: bytes | str, ttl: int) -> Awaitable[bool]:
        """``set``: store ``value`` for ``ttl`` seconds; ``True`` once stored."""
        raw, data = _key(key), self._data(value)
        return self._send(b"set %b 0 %d %d\r\n%b\r\n" % (raw, _exptime(ttl), len(data), data), _STORE, raw)

    def add(self, key: str, value: bytes | str, ttl: int) -> Awaitable[bool]:
        """``add``: store ``value`` only if ``key`` holds nothing; ``False`` when it is taken."""
        raw, data = _key(key), self._data(value)
        return self._send(b"add %b 0 %d %d\r\n%b\r\n" % (raw, _exptime(ttl), len(data), data), _STORE, raw)

    def cas(self, key: str, value: bytes | str, ttl: int, cas_token: int) -> Awaitable[bool | None]:
        """``cas``: store ``value`` if ``key`` is unchanged since :meth:`gets` gave ``cas_token``.

        ``True`` stored, ``False`` changed in between (``EXISTS``), ``None`` gone (``NOT_FOUND``).
        """
        raw, data = _key(key), self._data(value)
        command = b"cas %b 0 %d %d %d\r\n%b\r\n" % (raw, _exptime(ttl), len(data), int(cas_token), data)
        return self._send(command, _CAS, raw)

    def delete(self, key: str) -> Awaitable[bool]:
        """``delete key``: ``True`` when it held something."""
        raw = _key(key)
        return self._send(b"delete %b\r\n" % raw, _DELETE, raw)

    def touch(self, key: str, ttl: int) -> Awaitable[bool]:
        """``touch``: ``key`` now expires in ``ttl`` seconds; ``False`` when it holds nothing."""
        raw = _key(key)
        return self._send(b"touch %b %d\r\n" % (raw, _exptime(ttl)), _TOUCH, raw)

    def version(self) -> Awaitable[str]:
        """``version``: the server's version, e.g. ``"1.6.18"`` (a health check)."""
        return self._send(b"version\r\n", _VERSION, b"")
