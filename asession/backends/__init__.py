"""Backends and :func:`backend_from_url`, which picks one from a URL.

Backend modules are imported on demand, so an optional extra that is not installed fails only when its
backend is constructed, never at ``import asession``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from asession.backends._urls import hide_password
from asession.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from asession.backends.base import SessionBackend

__all__ = ["SCHEMES", "backend_from_url"]

#: URL scheme -> (module, class); the class's ``from_url()`` builds the backend from the whole URL.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("asession.backends.memory", "MemoryBackend"),
    "sqlite": ("asession.backends.db", "DatabaseBackend"),
    "postgres": ("asession.backends.db", "DatabaseBackend"),
    "postgresql": ("asession.backends.db", "DatabaseBackend"),
    "file": ("asession.backends.file", "FileBackend"),
    "cache+memory": ("asession.backends.cache", "CacheBackend"),
    "redis": ("asession.backends.redis", "RedisBackend"),
    "rediss": ("asession.backends.redis", "RedisBackend"),
    "unix": ("asession.backends.redis", "RedisBackend"),
    "redis+sentinel": ("asession.backends.redis", "RedisBackend"),
    "redis+cluster": ("asession.backends.redis", "RedisBackend"),
    "memcached": ("asession.backends.cache", "CacheBackend"),
}


def backend_from_url(url: str) -> SessionBackend:
    """Construct the backend a URL names, unopened.

    ========================================  =========================================================
    ``memory://``                             :class:`~asession.backends.memory.MemoryBackend`
    ``sqlite:///relative.db``,                :class:`~asession.backends.db.DatabaseBackend` on SQLite
    ``sqlite:////absolute/path.db``
    ``postgresql://user:pw@host:5432/db``     :class:`~asession.backends.db.DatabaseBackend` on PostgreSQL
    ``file:///absolute/dir``                  :class:`~asession.backends.file.FileBackend`
    ``cache+memory://``                       :class:`~asession.backends.cache.CacheBackend`, in memory
    ``redis://host:6379/0``, ``rediss://``,   :class:`~asession.backends.redis.RedisBackend`
    ``unix:///run/redis.sock?db=0``,
    ``redis+sentinel://h:26379/mymaster``,
    ``redis+cluster://h:7000,h:7001``
    ``memcached://host:11211``                :class:`~asession.backends.cache.CacheBackend` on memcached
    ========================================  =========================================================

    Raises :class:`ImproperlyConfigured` for an unknown scheme, a malformed URL or a missing extra.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ImproperlyConfigured(f"{url!r} is not a session backend URL; expected e.g. 'sqlite:///sessions.db'.")
    scheme = url.split("://", 1)[0].lower()
    try:
        module_name, class_name = SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in sorted(SCHEMES))
        raise ImproperlyConfigured(
            f"Unknown session backend scheme {scheme!r} in {hide_password(url)!r}. Known schemes: {known}."
        ) from None
    backend_class: type[SessionBackend] = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_url(url)
