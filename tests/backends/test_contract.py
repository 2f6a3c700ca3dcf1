"""The storage contract of SessionBackend, run on every server-side backend."""

from __future__ import annotations

import logging

import pytest

from asession import keys
from asession.backends.base import BackendState, SessionBackend
from asession.exceptions import CreateError, SessionError
from tests.conftest import Clock, let_expire

DAY = 86400


async def test_load_missing_key_returns_none(server_backend: SessionBackend) -> None:
    """A well-formed key that was never saved loads as None."""
    assert await server_backend.load(keys.new_key()) is None


async def test_save_then_load_returns_the_same_dict(server_backend: SessionBackend) -> None:
    """load() returns exactly the dict save() was given, nested values included."""
    key = keys.new_key()
    data = {"cat": "dog", "n": 3, "f": 1.5, "ok": True, "none": None, "list": [1, "a"], "nested": {"é": "ü"}}
    await server_backend.save(key, data, DAY)
    assert await server_backend.load(key) == data


async def test_save_overwrites_previous_data(server_backend: SessionBackend) -> None:
    """A second save under the same key replaces the data."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1}, DAY)
    await server_backend.save(key, {"b": 2}, DAY)
    assert await server_backend.load(key) == {"b": 2}


async def test_exists_reflects_save_and_delete(server_backend: SessionBackend) -> None:
    """exists() is True after save and False after delete."""
    key = keys.new_key()
    assert not await server_backend.exists(key)
    await server_backend.save(key, {}, DAY)
    assert await server_backend.exists(key)
    await server_backend.delete(key)
    assert not await server_backend.exists(key)
    assert await server_backend.load(key) is None


async def test_delete_missing_key_is_silent(server_backend: SessionBackend) -> None:
    """Deleting a key that is not stored raises nothing."""
    await server_backend.delete(keys.new_key())


async def test_sessions_are_independent(server_backend: SessionBackend) -> None:
    """Deleting one session leaves another untouched."""
    first, second = keys.new_key(), keys.new_key()
    await server_backend.save(first, {"who": "first"}, DAY)
    await server_backend.save(second, {"who": "second"}, DAY)
    await server_backend.delete(first)
    assert await server_backend.load(second) == {"who": "second"}


async def test_must_create_raises_create_error_for_existing_key(server_backend: SessionBackend) -> None:
    """save(must_create=True) refuses a key that is already stored and keeps the stored data."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY, must_create=True)
    with pytest.raises(CreateError):
        await server_backend.save(key, {"v": 2}, DAY, must_create=True)
    assert await server_backend.load(key) == {"v": 1}


async def test_must_create_succeeds_for_an_expired_key(server_backend: SessionBackend, clock: Clock) -> None:
    """An expired record does not block must_create."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, 1)
    await let_expire(server_backend, clock, 1)
    await server_backend.save(key, {"v": 2}, DAY, must_create=True)
    assert await server_backend.load(key) == {"v": 2}


async def test_expired_session_loads_as_none(server_backend: SessionBackend, clock: Clock) -> None:
    """A session past its expiry age is neither loaded nor reported as existing."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, 1)
    assert await server_backend.load(key) == {"v": 1}
    await let_expire(server_backend, clock, 1)
    assert await server_backend.load(key) is None
    assert not await server_backend.exists(key)


async def test_clear_expired_removes_only_expired(server_backend: SessionBackend, clock: Clock) -> None:
    """clear_expired() counts and removes expired sessions and keeps live ones."""
    short, long = keys.new_key(), keys.new_key()
    await server_backend.save(short, {"v": "short"}, 1)
    await server_backend.save(long, {"v": "long"}, DAY)
    await let_expire(server_backend, clock, 1)
    removed = await server_backend.clear_expired()
    assert removed == (0 if server_backend.expires_by_itself else 1)
    assert await server_backend.load(long) == {"v": "long"}
    assert await server_backend.clear_expired() == 0


async def test_non_positive_expiry_stores_nothing(server_backend: SessionBackend) -> None:
    """An expiry age of zero or less forgets the key instead of storing a dead session."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY)
    await server_backend.save(key, {"v": 2}, 0)
    assert await server_backend.load(key) is None


@pytest.mark.parametrize(
    "bad_key", ["", "short", "UPPERCASE123", "../../etc/passwd", "abc\x00defghij", "ünïcödé-key", "a" * 65, "a b c d e"]
)
async def test_malformed_keys_never_reach_the_store(server_backend: SessionBackend, bad_key: str) -> None:
    """Malformed keys load as None, do not exist, delete silently and cannot be saved."""
    assert await server_backend.load(bad_key) is None
    assert not await server_backend.exists(bad_key)
    await server_backend.delete(bad_key)
    with pytest.raises(SessionError, match="malformed key"):
        await server_backend.save(bad_key, {"v": 1}, DAY)


async def test_unserializable_data_raises_type_error_naming_the_key(server_backend: SessionBackend) -> None:
    """Data that JSON cannot carry raises TypeError naming the key, and nothing is written."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY)
    with pytest.raises(TypeError, match="'when'"):
        await server_backend.save(key, {"ok": 1, "when": {1, 2}}, DAY)
    assert await server_backend.load(key) == {"v": 1}


async def test_data_over_max_size_raises_session_error(server_backend: SessionBackend) -> None:
    """A session larger than max_size is refused at save with its size named."""
    key = keys.new_key()
    server_backend.max_size = 1000
    with pytest.raises(SessionError, match="bytes once serialized"):
        await server_backend.save(key, {"blob": "x" * 2000}, DAY)
    assert await server_backend.load(key) is None


async def test_stored_data_over_max_size_loads_as_none(
    server_backend: SessionBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Stored data over the (lowered) size limit loads as None and is logged on asession.security."""
    key = keys.new_key()
    await server_backend.save(key, {"blob": "x" * 2000}, DAY)
    server_backend.max_size = 1000
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        assert await server_backend.load(key) is None
    assert any(record.name == "asession.security" for record in caplog.records)


async def test_store_keeps_only_a_hash_of_the_key(server_backend: SessionBackend) -> None:
    """The storage key is the SHA-256 of the session key, never the key itself."""
    from asession.backends.django import DjangoDatabaseBackend

    key = keys.new_key()
    if isinstance(server_backend, DjangoDatabaseBackend):
        # The one documented exception: Django looks its sessions up by the raw key.
        assert not server_backend.hashes_keys and server_backend._storage_key(key) == key
        return
    assert server_backend.hashes_keys
    assert server_backend._storage_key(key) == keys.storage_key(key) != key


async def test_create_makes_a_fresh_unique_key(server_backend: SessionBackend) -> None:
    """create() returns a new valid key holding the data."""
    first = await server_backend.create({"n": 1}, DAY)
    second = await server_backend.create({"n": 2}, DAY)
    assert first != second
    assert keys.is_valid_key(first) and len(first) == keys.KEY_LENGTH
    assert await server_backend.load(first) == {"n": 1}
    assert await server_backend.load(second) == {"n": 2}


async def test_unicode_and_large_values_round_trip(server_backend: SessionBackend) -> None:
    """Non-ASCII text and a 100 KB value survive storage unchanged."""
    key = keys.new_key()
    data = {"text": '日本語 \u2603 \U0001f600 "quotes" \\ back', "big": "y" * 100_000}
    await server_backend.save(key, data, DAY)
    assert await server_backend.load(key) == data


async def test_use_before_open_and_after_close_raises(server_backend: SessionBackend) -> None:
    """A closed backend refuses work with a SessionError that says so, and can be opened again."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY)
    await server_backend.close()
    assert server_backend.state is BackendState.CLOSED
    with pytest.raises(SessionError, match="after close"):
        await server_backend.load(key)
    await server_backend.close()  # idempotent
    await server_backend.open()
    assert await server_backend.load(key) == {"v": 1}
