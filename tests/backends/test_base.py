"""What SessionBackend gives every backend: state, error translation, key creation, URL dispatch."""

from __future__ import annotations

import pytest

from asession import keys
from asession.backends import backend_from_url
from asession.backends._urls import hide_password
from asession.backends.base import BackendState, SessionBackend
from asession.backends.memory import MemoryBackend
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured, SessionError


class BrokenBackend(MemoryBackend):
    """Every storage call fails like a server that went away."""

    async def _load(self, skey: str) -> str | None:
        raise ConnectionError("server went away")

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        raise ConnectionError("server went away")

    async def _exists(self, skey: str) -> bool:
        raise ConnectionError("server went away")

    async def _delete(self, skey: str) -> None:
        raise ConnectionError("server went away")

    async def _clear_expired(self) -> int:
        raise ConnectionError("server went away")


class AlwaysTaken(MemoryBackend):
    """Reports every key as already stored."""

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        raise CreateError("taken")


async def test_backend_used_before_open_raises_session_error() -> None:
    """A backend that was never opened says so."""
    backend = MemoryBackend()
    assert backend.state is BackendState.UNOPENED
    with pytest.raises(SessionError, match="before open"):
        await backend.load(keys.new_key())
    with pytest.raises(SessionError, match="before open"):
        await backend.clear_expired()


async def test_open_is_idempotent_and_close_is_safe_unopened() -> None:
    """open() twice keeps it open; close() on an unopened backend just marks it closed."""
    backend = MemoryBackend()
    await backend.close()
    assert backend.state is BackendState.CLOSED
    async with backend:
        await backend.open()
        assert backend.is_open
    assert not backend.is_open


async def test_store_failures_become_backend_unavailable_errors() -> None:
    """Exceptions from the store are wrapped in BackendUnavailableError, chained to the cause."""
    async with BrokenBackend() as backend:
        key = keys.new_key()
        for call in (
            backend.load(key),
            backend.save(key, {}, 10),
            backend.exists(key),
            backend.delete(key),
            backend.clear_expired(),
        ):
            with pytest.raises(BackendUnavailableError) as info:
                await call
            assert isinstance(info.value.__cause__, ConnectionError)


async def test_create_gives_up_after_repeated_collisions() -> None:
    """create() retries CreateError a bounded number of times, then raises SessionError."""
    async with AlwaysTaken() as backend:
        with pytest.raises(SessionError, match="taken"):
            await backend.create({}, 10)


def test_max_size_must_be_positive() -> None:
    """A nonsensical max_size is refused at construction."""
    with pytest.raises(ValueError, match="max_size"):
        MemoryBackend(max_size=0)


async def test_corrupt_payload_loads_as_none_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Garbage in the store loads as None and is logged on asession.security; other sessions are fine."""
    async with MemoryBackend() as backend:
        good, bad = keys.new_key(), keys.new_key()
        await backend.save(good, {"ok": 1}, 100)
        backend._data[keys.storage_key(bad)] = ("{not json", 1e12)
        with caplog.at_level("WARNING", logger="asession.security"):
            assert await backend.load(bad) is None
        assert "corrupted" in caplog.text
        assert await backend.load(good) == {"ok": 1}


def test_backend_from_url_picks_memory_backend() -> None:
    """memory:// gives a MemoryBackend, unopened."""
    backend = backend_from_url("memory://")
    assert isinstance(backend, MemoryBackend) and backend.state is BackendState.UNOPENED


@pytest.mark.parametrize("url", ["nope://x", "sessions.db", "", "ftp://user:secret@host/"])
def test_backend_from_url_rejects_unknown_schemes(url: str) -> None:
    """An unknown scheme or a string that is no URL raises ImproperlyConfigured, password hidden."""
    with pytest.raises(ImproperlyConfigured) as info:
        backend_from_url(url)
    assert "secret" not in str(info.value)


def test_base_from_url_is_refused_for_backends_without_a_url_form() -> None:
    """SessionBackend.from_url says the class has no URL form."""
    with pytest.raises(ImproperlyConfigured, match="cannot be built from a URL"):
        SessionBackend.from_url("x://")


def test_hide_password_masks_only_the_password() -> None:
    """Passwords are replaced by *** and the rest of the URL is kept."""
    assert hide_password("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert hide_password("postgresql://user:pw@host/db") == "postgresql://user:***@host/db"
    assert hide_password("postgresql://user@host/db") == "postgresql://user@host/db"


async def test_memory_backend_repr_counts_sessions() -> None:
    """The repr names the class and the number of stored sessions."""
    async with MemoryBackend() as backend:
        await backend.save(keys.new_key(), {}, 10)
        assert repr(backend) == "<MemoryBackend 1 sessions>"
