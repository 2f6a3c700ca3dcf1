"""Redis URLs for asession's own client: ``redis://``, ``rediss://`` (TLS) and ``unix://`` (a socket path).

:func:`parse_url` turns one into :class:`RedisOptions`, with the option names redis-py's URLs use, so a URL
written for redis-py works here; redis-py tuning options this client has no use for are accepted and listed
in :attr:`RedisOptions.ignored`, for the backend to warn about once. ``redis+sentinel://`` and
``redis+cluster://`` URLs are parsed in :mod:`asession.backends.redis`, which hands them to redis-py.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from asession.backends._resp import DEFAULT_MAX_REPLY_SIZE
from asession.backends._urls import to_timeout

__all__ = ["DEFAULT_HEALTH_CHECK_INTERVAL", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "RedisOptions", "parse_url"]

#: Seconds to connect and to wait for a reply, unless the URL says otherwise (as redis-py).
DEFAULT_TIMEOUT = 5.0
#: Connections per client unless the URL says ``?max_connections=N``; commands are pipelined over them.
DEFAULT_MAX_CONNECTIONS = 4
#: Seconds a connection may stay silent before the client checks it with a ``PING`` before lending it again
#: (``?health_check_interval=N``, ``0`` to never check).
DEFAULT_HEALTH_CHECK_INTERVAL = 30.0


_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def _to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def to_interval(value: str) -> float:
    """``health_check_interval``'s seconds: 0 (never check) or a positive number."""
    seconds = float(value)
    if seconds < 0:
        raise ValueError("must be 0 (never check) or a positive number of seconds")
    return seconds


def _to_verify_flags(value: str) -> list[ssl.VerifyFlags]:
    return [ssl.VerifyFlags[name.strip()] for name in value.split(",") if name.strip()]


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

#: Query options redis-py's URLs take that mean nothing here; they are accepted so existing URLs keep working.
_IGNORED = frozenset(
    {
        "retry_on_timeout",
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
    #: A connection silent this long is checked with ``PING`` before its next command; 0 never checks.
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL
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
    ``socket_keepalive``, ``max_connections``, ``health_check_interval``, ``client_name``, and for TLS ``ssl_cert_reqs``
    (none/optional/required), ``ssl_check_hostname``, ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_ca_data``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``, ``ssl_ciphers``, ``ssl_min_version`` and
    ``ssl_include_verify_flags`` / ``ssl_exclude_verify_flags``: the names redis-py's URLs use.
    redis-py tuning knobs with no meaning here (``retry_on_timeout``, ``socket_read_size``, ...) are
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
        kwargs[name] = to_timeout(value)
    elif name == "health_check_interval":
        kwargs[name] = to_interval(value)
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
