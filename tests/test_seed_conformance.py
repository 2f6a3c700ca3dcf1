"""The two Django doctests asession was specified from (shared/seeds/), ported block by block, in order.

Seed 000 is the longer doctest; seed 001 is its earlier subset. The storage blocks run on the backends
the seeds name: DatabaseSession -> SQLite, FileSession -> files, CacheSession -> aiocache memory.
``SessionBase()`` blocks run on a MemoryBackend. Datetimes are timezone-aware.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from asession import ImproperlyConfigured, Session, SessionConfig
from asession.backends.base import SessionBackend
from asession.backends.memory import MemoryBackend

SESSION_COOKIE_AGE = SessionConfig().max_age


async def _store_block(backend: SessionBackend, *, full: bool) -> None:
    """The db/file/cache block: flags, pop, save, exists, delete, then (seed 000) flush and unknown keys."""
    s = Session(backend)
    assert s.modified is False
    assert s.get("cat") is None
    s["cat"] = "dog"
    assert s.modified is True
    assert s.pop("cat") == "dog"
    assert s.pop("some key", "does not exist") == "does not exist"
    await s.save()
    assert s.session_key is not None
    assert await s.exists(s.session_key) is True
    await s.delete(s.session_key)
    assert await s.exists(s.session_key) is False
    if not full:
        return
    s["foo"] = "bar"
    await s.save()
    assert await s.exists(s.session_key) is True
    prev_key = s.session_key
    await s.flush()
    assert await s.exists(prev_key) is False
    assert s.session_key != prev_key
    assert (s.modified, s.accessed) == (True, True)
    # Submitting an invalid session key (guessed, or removed from the store) gives a new key.
    s["foo"] = "bar"
    await s.save()
    removed_key = s.session_key
    assert removed_key is not None
    await backend.delete(removed_key)
    s = Session(backend, removed_key)
    await s.save()
    assert s.session_key not in (None, removed_key)
    assert Session(backend, "1").get("cat") is None


def _file_path_check() -> None:
    from asession.backends.file import FileBackend

    path = "/if/this/directory/exists/you/have/a/weird/computer"
    with pytest.raises(ImproperlyConfigured) as info:
        FileBackend(path)
    assert str(info.value) == (
        f"The session storage path '{path}' doesn't exist. Please set the file backend's path to an existing "
        "directory in which asession can store session data."
    )


def _pop_and_setdefault_block() -> Session:
    s = Session(MemoryBackend())
    dict.__setitem__(s, "some key", "exists")  # s._session['some key'] = 'exists'
    s.accessed = False
    assert (s.accessed, s.modified) == (False, False)
    assert s.pop("non existant key", "does not exist") == "does not exist"
    assert (s.accessed, s.modified) == (True, False)
    assert s.setdefault("foo", "bar") == "bar"
    assert s.setdefault("foo", "baz") == "bar"
    s.accessed = False
    assert s.pop("some key") == "exists"
    assert (s.accessed, s.modified) == (True, True)
    assert s.pop("some key", "does not exist") == "does not exist"
    return s


# -- seed 000 ---------------------------------------------------------------------------------------------


async def test_seed000_database_session(sqlite_backend: SessionBackend) -> None:
    """DatabaseSession block of seed 000 on SQLite."""
    await _store_block(sqlite_backend, full=True)


async def test_seed000_file_session(file_backend: SessionBackend) -> None:
    """FileSession block of seed 000."""
    await _store_block(file_backend, full=True)


def test_seed000_file_backend_checks_storage_dir() -> None:
    """A missing storage directory raises ImproperlyConfigured with the exact message."""
    _file_path_check()


async def test_seed000_cache_session(cache_memory_backend: SessionBackend) -> None:
    """CacheSession block of seed 000."""
    await _store_block(cache_memory_backend, full=True)


def test_seed000_pop_and_setdefault_flags() -> None:
    """SessionBase pop/setdefault flag block."""
    _pop_and_setdefault_block()


def test_seed000_update_has_key_and_iterators() -> None:
    """update, has_key, values, iter* and clear blocks."""
    s = _pop_and_setdefault_block()
    assert s.get("update key", None) is None
    s.modified = s.accessed = False
    s.update({"update key": 1})
    assert (s.accessed, s.modified) == (True, True)
    assert s.get("update key", None) == 1
    s.modified = s.accessed = False
    assert s.has_key("update key") is True
    assert (s.accessed, s.modified) == (True, False)

    s = Session(MemoryBackend())
    assert list(s.values()) == []
    assert s.accessed is True
    s["x"] = 1
    assert list(s.values()) == [1]
    s.accessed = False
    i = s.iterkeys()
    assert hasattr(i, "__iter__")
    assert s.accessed is True
    assert list(i) == ["x"]
    s.accessed = False
    i2 = s.itervalues()
    assert hasattr(i2, "__iter__")
    assert s.accessed is True
    assert list(i2) == [1]
    s.accessed = False
    i3 = s.iteritems()
    assert hasattr(i3, "__iter__")
    assert s.accessed is True
    assert list(i3) == [("x", 1)]
    s.modified = s.accessed = False
    assert list(s.items()) == [("x", 1)]
    s.clear()
    assert list(s.items()) == []
    assert (s.accessed, s.modified) == (True, True)


def test_seed000_custom_session_expiry() -> None:
    """Custom session expiry block: default age, 0, int, timedelta, datetime, None."""
    s = Session(MemoryBackend())
    td10 = timedelta(seconds=10)
    assert s.get_expiry_age() == SESSION_COOKIE_AGE
    s.set_expiry(0)
    assert s.get_expiry_age() == SESSION_COOKIE_AGE
    s.set_expiry(10)
    delta = s.get_expiry_date() - datetime.now(timezone.utc)
    assert delta.seconds in (9, 10)
    assert s.get_expiry_age() in (9, 10)
    s.set_expiry(td10)
    delta = s.get_expiry_date() - datetime.now(timezone.utc)
    assert delta.seconds in (9, 10)
    assert s.get_expiry_age() in (9, 10)
    s.set_expiry(datetime.now(timezone.utc) + td10)
    delta = s.get_expiry_date() - datetime.now(timezone.utc)
    assert delta.seconds in (9, 10)
    assert s.get_expiry_age() in (9, 10)
    s.set_expiry(None)
    assert s.get_expiry_age() == SESSION_COOKIE_AGE
    s.set_expiry(None)


@pytest.mark.parametrize("expire_at_browser_close", [False, True])
def test_seed000_expire_at_browser_close(expire_at_browser_close: bool) -> None:
    """get_expire_at_browser_close under both settings of SESSION_EXPIRE_AT_BROWSER_CLOSE."""
    s = Session(MemoryBackend(), config=SessionConfig(expire_at_browser_close=expire_at_browser_close))
    s.set_expiry(10)
    assert s.get_expire_at_browser_close() is False
    s.set_expiry(0)
    assert s.get_expire_at_browser_close() is True
    s.set_expiry(None)
    assert s.get_expire_at_browser_close() is expire_at_browser_close


# -- seed 001 ---------------------------------------------------------------------------------------------


async def test_seed001_database_session(sqlite_backend: SessionBackend) -> None:
    """DatabaseSession block of seed 001 on SQLite."""
    await _store_block(sqlite_backend, full=False)


async def test_seed001_file_session(file_backend: SessionBackend) -> None:
    """FileSession block of seed 001."""
    await _store_block(file_backend, full=False)


def test_seed001_file_backend_checks_storage_dir(tmp_path: Path) -> None:
    """The storage directory check of seed 001."""
    _file_path_check()


async def test_seed001_cache_session(cache_memory_backend: SessionBackend) -> None:
    """CacheSession block of seed 001 (save, delete, exists)."""
    await _store_block(cache_memory_backend, full=False)


def test_seed001_pop_and_setdefault_flags() -> None:
    """SessionBase block of seed 001."""
    _pop_and_setdefault_block()
