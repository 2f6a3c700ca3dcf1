"""The update contract (issue #11): changes merged atomically into the session as stored now, on every server store."""

from __future__ import annotations

import asyncio
import logging

import pytest

from asession import keys
from asession.backends.base import SessionBackend
from asession.exceptions import SessionError, UpdateError
from tests.conftest import Clock, let_expire

DAY = 86400


async def test_update_merges_into_what_is_stored_now(server_backend: SessionBackend) -> None:
    """Keys an update does not name keep what a parallel save stored after this request loaded."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1, "b": 1}, DAY)
    await server_backend.update(key, {"a": 2}, (), DAY)  # request one changes a
    await server_backend.update(key, {"c": 3}, (), DAY)  # request two, loaded before, adds c
    assert await server_backend.load(key) == {"a": 2, "b": 1, "c": 3}


async def test_update_removes_keys_and_a_later_set_wins_per_key(server_backend: SessionBackend) -> None:
    """Removed keys go; two updates of one key: the later one wins for that key only."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1, "b": 1, "gone": True}, DAY)
    await server_backend.update(key, {"b": 2}, ["gone", "never-there"], DAY)
    await server_backend.update(key, {"b": 3, "nested": {"x": [1, 2]}}, (), DAY)
    assert await server_backend.load(key) == {"a": 1, "b": 3, "nested": {"x": [1, 2]}}


async def test_update_with_replace_stores_exactly_the_changes(server_backend: SessionBackend) -> None:
    """replace=True (a request that cleared the session) drops every key it does not set."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1, "b": 2}, DAY)
    await server_backend.update(key, {"c": 3}, (), DAY, replace=True)
    assert await server_backend.load(key) == {"c": 3}
    await server_backend.update(key, {}, (), DAY, replace=True)
    assert await server_backend.load(key) == {}
    assert await server_backend.exists(key)


async def test_update_of_a_missing_key_raises_and_creates_nothing(server_backend: SessionBackend) -> None:
    """No session stored: UpdateError, and the key stays unknown (a logout is never undone)."""
    key = keys.new_key()
    with pytest.raises(UpdateError, match="Nothing was written"):
        await server_backend.update(key, {"user": "alice"}, (), DAY)
    assert await server_backend.load(key) is None
    await server_backend.save(key, {"user": "alice"}, DAY)
    await server_backend.delete(key)
    with pytest.raises(UpdateError):
        await server_backend.update(key, {"user": "alice"}, (), DAY, replace=True)
    assert not await server_backend.exists(key)


async def test_update_of_a_malformed_key_raises_update_error(server_backend: SessionBackend) -> None:
    """A key that can never be stored cannot be updated either."""
    with pytest.raises(UpdateError):
        await server_backend.update("../etc/passwd", {"a": 1}, (), DAY)


async def test_update_of_an_expired_session_raises_and_creates_nothing(
    server_backend: SessionBackend, clock: Clock
) -> None:
    """An expired session is gone: updating it raises UpdateError and does not bring it back."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1}, 1)
    await let_expire(server_backend, clock, 1)
    with pytest.raises(UpdateError):
        await server_backend.update(key, {"a": 2}, (), DAY)
    assert await server_backend.load(key) is None


async def test_update_refreshes_the_expiry(server_backend: SessionBackend, clock: Clock) -> None:
    """An update gives the session its new expiry age, counted from now."""
    key = keys.new_key()
    await server_backend.save(key, {"a": 1}, 1)
    await server_backend.update(key, {"b": 2}, (), DAY)
    await let_expire(server_backend, clock, 1)
    assert await server_backend.load(key) == {"a": 1, "b": 2}


async def test_update_with_unserializable_value_raises_type_error_naming_the_key(
    server_backend: SessionBackend,
) -> None:
    """A value JSON cannot carry raises TypeError naming its key, and nothing is written."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY)
    with pytest.raises(TypeError, match="'when'"):
        await server_backend.update(key, {"ok": 2, "when": {1, 2}}, ["v"], DAY)
    assert await server_backend.load(key) == {"v": 1}


async def test_update_over_max_size_raises_and_writes_nothing(server_backend: SessionBackend) -> None:
    """A merge that would exceed max_size raises SessionError and leaves the stored session as it was."""
    key = keys.new_key()
    await server_backend.save(key, {"blob": "x" * 600}, DAY)
    server_backend.max_size = 1000
    with pytest.raises(SessionError, match="bytes once serialized"):
        await server_backend.update(key, {"more": "y" * 600}, (), DAY)
    assert await server_backend.load(key) == {"blob": "x" * 600}


async def test_update_of_a_corrupt_session_is_refused_and_logged(
    server_backend: SessionBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored session that is not JSON is treated as missing by update (never half-merged) and logged."""
    key = keys.new_key()
    await server_backend.save(key, {"v": 1}, DAY)
    await server_backend._save(server_backend._storage_key(key), '{"user": "alice", "tru', DAY, False)
    with caplog.at_level(logging.WARNING, logger="asession.security"), pytest.raises(UpdateError):
        await server_backend.update(key, {"a": 1}, (), DAY)
    assert [r for r in caplog.records if r.name == "asession.security"]
    assert await server_backend.load(key) is None


async def test_concurrent_updates_of_distinct_keys_all_survive(server_backend: SessionBackend) -> None:
    """Twenty-four updates of one session at once, each setting its own key: all 24 are stored."""
    key = keys.new_key()
    await server_backend.save(key, {"start": True}, DAY)
    await asyncio.gather(*(server_backend.update(key, {f"k{i}": i}, (), DAY) for i in range(24)))
    assert await server_backend.load(key) == {"start": True, **{f"k{i}": i for i in range(24)}}


async def test_concurrent_update_and_delete_never_resurrect(server_backend: SessionBackend) -> None:
    """Updates racing a delete either land before it or fail: afterwards the session stays deleted."""
    for _ in range(5):
        key = keys.new_key()
        await server_backend.save(key, {"user": "alice"}, DAY)
        outcomes = await asyncio.gather(
            *(server_backend.update(key, {f"k{i}": i}, (), DAY) for i in range(8)),
            server_backend.delete(key),
            *(server_backend.update(key, {f"late{i}": i}, (), DAY) for i in range(8)),
            return_exceptions=True,
        )
        assert all(outcome is None or isinstance(outcome, UpdateError) for outcome in outcomes)
        assert await server_backend.load(key) is None
