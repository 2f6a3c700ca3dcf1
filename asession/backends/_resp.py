"""RESP2, the Redis protocol, for asession's own client: commands encoded, replies parsed, scripts named.

Commands are arrays of bulk strings (:func:`_command`). :func:`_parse` reads one reply from a buffer that may
hold part of it, part of the next or several, without copying what it has not consumed: the client's
connection calls it on every chunk it receives. Error replies come back as :class:`RedisError` values for the
caller to raise; anything that is not RESP2, or is larger than the reply limit, raises
:class:`ProtocolError`, which drops the connection. :class:`Script` is a Lua script known by its SHA-1.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "DEFAULT_MAX_REPLY_SIZE",
    "AuthenticationError",
    "ProtocolError",
    "RedisError",
    "Script",
    "is_noscript",
]

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


# -- encoding and parsing ------------------------------------------------------------------------------


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
