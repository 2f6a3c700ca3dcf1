"""Users on every backend: login, the per-user index, listing, revocation, logout (issue #12).

One parametrised suite over every server-side backend (``server_backend``), so a behaviour holds for all of
them or visibly fails for one; signed cookies, which keep no index, are checked to say so.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from asession import Session, SessionConfig, SessionInfo, expiry, users
from asession.backends.base import SessionBackend
from asession.backends.file import FileBackend
from asession.backends.memory import MemoryBackend
from asession.users import MAX_USER_AGENT_LENGTH, USER_ID_KEY, session_handle, user_of_handle
from tests.conftest import Clock, let_expire


def _session(backend: SessionBackend, key: str | None = None, *, agent: str | None = None, **config: Any) -> Session:
    session = Session(backend, key, SessionConfig(**config))
    if agent is not None:
        session._headers = [(b"user-agent", agent.encode())]
    return session


async def _logged_in(backend: SessionBackend, user: str | int, agent: str | None = None, **config: Any) -> Session:
    session = _session(backend, agent=agent, **config)
    await session.login(user)
    return session


# -- login ---------------------------------------------------------------------------------------------------


async def test_login_cycles_the_key_binds_the_user_and_keeps_the_data(server_backend: SessionBackend) -> None:
    session = _session(server_backend)
    session["cart"] = [1, 2]
    await session.save()
    old_key = session.session_key
    assert session.user_id is None

    await session.login(42)

    assert session.user_id == "42"  # an int is stored as its string
    assert session.session_key not in (None, old_key)
    assert old_key is not None and await server_backend.load(old_key) is None  # fixation: the old key is gone
    reloaded = _session(server_backend, session.session_key)
    await reloaded.load()
    assert dict(reloaded) == {"cart": [1, 2], USER_ID_KEY: "42"}
    assert reloaded.user_id == "42"


async def test_login_as_another_user_drops_the_previous_users_data(server_backend: SessionBackend) -> None:
    session = await _logged_in(server_backend, "alice")
    session["secret"] = "alice's"
    await session.save()
    await session.login("bob")
    assert dict(session) == {USER_ID_KEY: "bob"}
    assert await server_backend.user_sessions("alice") == []
    assert [info.user_id for info in await server_backend.user_sessions("bob")] == ["bob"]


async def test_a_session_holding_only_the_user_id_is_logged_in(server_backend: SessionBackend) -> None:
    """Django's rule: the binding is the data under "_auth_user_id", nothing else is needed."""
    key = await server_backend.create({USER_ID_KEY: "7"}, 60)
    session = _session(server_backend, key)
    await session.load()
    assert session.user_id == "7"


# -- the index -------------------------------------------------------------------------------------------------


async def test_user_sessions_lists_live_sessions_newest_first_without_keys(
    server_backend: SessionBackend, clock: Clock
) -> None:
    phone = await _logged_in(server_backend, "alice", agent="Phone/1")
    clock.advance(5)
    laptop = await _logged_in(server_backend, "alice", agent="Laptop/2")
    await _logged_in(server_backend, "bob")

    infos = await server_backend.user_sessions("alice")

    assert [info.user_agent for info in infos] == ["Laptop/2", "Phone/1"]
    assert all(isinstance(info, SessionInfo) and info.user_id == "alice" for info in infos)
    for info, session in zip(infos, (laptop, phone), strict=True):
        key = session.session_key
        assert key is not None and key not in info.id and info.id == server_backend.handle(key, "alice")
        assert info.created_at.tzinfo is timezone.utc and info.created_at <= info.last_seen < info.expires_at
    assert infos[0].created_at > infos[1].created_at


async def test_user_agent_is_cut_to_256_characters(server_backend: SessionBackend) -> None:
    await _logged_in(server_backend, "u", agent="A" * 1000)
    [info] = await server_backend.user_sessions("u")
    assert info.user_agent == "A" * MAX_USER_AGENT_LENGTH


async def test_expiry_and_last_seen_follow_saves(server_backend: SessionBackend, clock: Clock) -> None:
    session = await _logged_in(server_backend, "u", max_age=600)
    [before] = await server_backend.user_sessions("u")
    clock.advance(30)
    session["x"] = 1
    await session.save()
    [after] = await server_backend.user_sessions("u")
    assert after.created_at == before.created_at
    assert (after.last_seen - before.last_seen).total_seconds() == pytest.approx(30, abs=1)
    assert (after.expires_at - after.last_seen).total_seconds() == pytest.approx(600, abs=1)


async def test_expiry_and_last_seen_follow_touches(server_backend: SessionBackend, clock: Clock) -> None:
    """A read-only request past the touch interval moves the listing's last activity and expiry, and leaves
    the data as it was."""
    session = await _logged_in(server_backend, "u", idle_timeout=600, touch_interval=60)
    session["cart"] = [1, 2]
    await session.save()
    [before] = await server_backend.user_sessions("u")
    clock.advance(90)
    reader = _session(server_backend, session.session_key, idle_timeout=600, touch_interval=60)
    await reader.load()
    assert reader.needs_touch()
    await reader.touch()
    [after] = await server_backend.user_sessions("u")
    assert after.created_at == before.created_at
    assert (after.last_seen - before.last_seen).total_seconds() == pytest.approx(90, abs=1)
    assert (after.expires_at - after.last_seen).total_seconds() == pytest.approx(600, abs=1)
    again = _session(server_backend, session.session_key)
    await again.load()
    assert dict(again) == {"cart": [1, 2], USER_ID_KEY: "u"}


async def test_revoke_user_sessions_ends_all_or_all_but_one(server_backend: SessionBackend) -> None:
    sessions = [await _logged_in(server_backend, "alice") for _ in range(3)]
    other = await _logged_in(server_backend, "bob")
    keep = sessions[0].session_key
    assert keep is not None

    assert await server_backend.revoke_user_sessions("alice", except_key=keep) == 2

    assert await server_backend.load(keep) is not None
    for session in sessions[1:]:
        assert await server_backend.load(session.session_key) is None  # type: ignore[arg-type]
    assert [info.id for info in await server_backend.user_sessions("alice")] == [server_backend.handle(keep, "alice")]
    assert await server_backend.revoke_user_sessions("alice") == 1
    assert await server_backend.user_sessions("alice") == []
    assert await server_backend.load(other.session_key) is not None  # type: ignore[arg-type]  # bob keeps his


async def test_a_malformed_except_key_revokes_nothing(server_backend: SessionBackend) -> None:
    session = await _logged_in(server_backend, "alice")
    handle = server_backend.handle(session.session_key, "alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="except_key"):
        await server_backend.revoke_user_sessions("alice", except_key=handle)  # an id, not a key
    assert len(await server_backend.user_sessions("alice")) == 1


async def test_revoke_other_sessions_from_the_session(server_backend: SessionBackend) -> None:
    here = await _logged_in(server_backend, "alice")
    there = await _logged_in(server_backend, "alice")
    assert await here.revoke_other_sessions() == 1
    assert await server_backend.load(there.session_key) is None  # type: ignore[arg-type]
    assert await server_backend.load(here.session_key) is not None  # type: ignore[arg-type]
    assert await _session(server_backend).revoke_other_sessions() == 0  # nobody signed in


async def test_revoke_session_by_its_id(server_backend: SessionBackend) -> None:
    one = await _logged_in(server_backend, "alice")
    two = await _logged_in(server_backend, "alice")
    target = server_backend.handle(two.session_key, "alice")  # type: ignore[arg-type]
    assert target is not None

    assert await server_backend.revoke_session(target) is True
    assert await server_backend.revoke_session(target) is False  # already ended
    assert await server_backend.load(two.session_key) is None  # type: ignore[arg-type]
    assert [info.id for info in await server_backend.user_sessions("alice")] == [
        server_backend.handle(one.session_key, "alice")  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(
    "handle", ["", "nope", "x.y", "YWxpY2U.0000000000000000000000000000000g", "YWxpY2U." + "0" * 32, "." + "0" * 32, 7]
)
async def test_revoking_an_unknown_or_malformed_id_returns_false(server_backend: SessionBackend, handle: Any) -> None:
    await _logged_in(server_backend, "alice")
    assert await server_backend.revoke_session(handle) is False
    assert len(await server_backend.user_sessions("alice")) == 1


async def test_unknown_user_has_nothing(server_backend: SessionBackend) -> None:
    assert await server_backend.user_sessions("nobody") == []
    assert await server_backend.revoke_user_sessions("nobody") == 0


async def test_logout_flushes_and_unindexes(server_backend: SessionBackend) -> None:
    session = await _logged_in(server_backend, "alice")
    key = session.session_key
    await session.logout()
    assert session.session_key is None and dict(session) == {} and session.user_id is None
    assert await server_backend.load(key) is None  # type: ignore[arg-type]
    assert await server_backend.user_sessions("alice") == []
    assert await server_backend.revoke_user_sessions("alice") == 0


async def test_cycle_key_of_a_logged_in_session_moves_its_index_entry(server_backend: SessionBackend) -> None:
    session = await _logged_in(server_backend, "alice")
    await session.cycle_key()
    infos = await server_backend.user_sessions("alice")
    assert [info.id for info in infos] == [server_backend.handle(session.session_key, "alice")]  # type: ignore[arg-type]


async def test_ended_sessions_are_pruned_and_never_listed(server_backend: SessionBackend) -> None:
    """A session deleted behind the index's back (flush without user, expiry, a store-side delete) is dropped."""
    kept = await _logged_in(server_backend, "alice")
    gone = await _logged_in(server_backend, "alice")
    await server_backend.delete(gone.session_key)  # type: ignore[arg-type]
    assert [info.id for info in await server_backend.user_sessions("alice")] == [
        server_backend.handle(kept.session_key, "alice")  # type: ignore[arg-type]
    ]


async def test_logins_drop_ended_sessions_from_the_index(
    server_backend: SessionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions that end without a logout (expiry, a store-side delete) leave their entries behind; a login
    at each multiple of PRUNE_EVERY entries drops them, and never an entry of a live session."""
    monkeypatch.setattr(users, "PRUNE_EVERY", 4)
    live = [await _logged_in(server_backend, "alice") for _ in range(5)]  # more live ones than PRUNE_EVERY
    for _ in range(11):
        ended = await _logged_in(server_backend, "alice")
        await server_backend.delete(ended.session_key)  # type: ignore[arg-type]
        entries = await users._entries(server_backend, users.index_key("alice"))
        assert len(entries) <= len(live) + 4
    last = await _logged_in(server_backend, "alice")
    expected = {server_backend.handle(s.session_key, "alice") for s in [*live, last]}  # type: ignore[arg-type]
    assert expected <= set(await users._entries(server_backend, users.index_key("alice")))
    assert {info.id for info in await server_backend.user_sessions("alice")} == expected


async def test_a_user_who_signs_in_again_and_again_can_always_sign_in() -> None:
    """With no listing or logout in between, the index stays the size of the live sessions: 300 logins whose
    sessions all ended fit an index limited to 16 kB (it passed that limit at about 150 before pruning)."""
    backend = MemoryBackend(max_size=16384)
    async with backend:
        for _ in range(300):
            session = await _logged_in(backend, "a-user-with-a-longer-id@example.com")
            await backend.delete(session.session_key)  # type: ignore[arg-type]
        assert await backend.user_sessions("a-user-with-a-longer-id@example.com") == []


async def test_expired_sessions_are_not_listed(server_backend: SessionBackend, clock: Clock) -> None:
    await _logged_in(server_backend, "alice", max_age=1)
    await let_expire(server_backend, clock, 1)
    assert await server_backend.user_sessions("alice") == []
    assert await server_backend.revoke_user_sessions("alice") == 0


async def test_listing_reads_only_that_users_sessions(server_backend: SessionBackend) -> None:
    """The cost of user_sessions() is the user's sessions, not the store's: count the reads it makes."""
    for index in range(20):
        await _logged_in(server_backend, f"other-{index}")
    await _logged_in(server_backend, "alice")
    await _logged_in(server_backend, "alice")
    reads: list[str] = []
    load = server_backend._load

    def counting(skey: str) -> Any:
        reads.append(skey)
        return load(skey)

    server_backend._load = counting  # type: ignore[method-assign]
    try:
        assert len(await server_backend.user_sessions("alice")) == 2
    finally:
        del server_backend._load
    assert len(reads) == 3  # the index, then each of the two sessions


async def test_parallel_logins_of_one_user_are_all_indexed(server_backend: SessionBackend) -> None:
    import asyncio

    sessions = [_session(server_backend) for _ in range(12)]
    await asyncio.gather(*(session.login("alice") for session in sessions))
    listed = {info.id for info in await server_backend.user_sessions("alice")}
    assert listed == {server_backend.handle(s.session_key, "alice") for s in sessions}  # type: ignore[arg-type]


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["", True, False, 1.5, None, b"bytes", ["x"], "x" * 257, "x" * 10240])
async def test_login_refuses_bad_user_ids(server_backend: SessionBackend, user: Any) -> None:
    session = _session(server_backend)
    with pytest.raises(ValueError):
        await session.login(user)
    assert session.session_key is None and session.user_id is None
    with pytest.raises(ValueError):
        await server_backend.user_sessions(user)


@pytest.mark.parametrize(
    "user",
    ["../x", "*", "%", "a\x00b", "ü ✓", "x" * 256, "é" * 200, "\U0001f600" * 256, "a/b\\c", "'; DROP TABLE x; --"],
)
async def test_odd_user_ids_are_stored_safely(server_backend: SessionBackend, user: str, tmp_path: Path) -> None:
    session = await _logged_in(server_backend, user)
    bystander = await _logged_in(server_backend, "bystander")
    infos = await server_backend.user_sessions(user)
    assert [info.user_id for info in infos] == [user]
    assert user_of_handle(infos[0].id) == user
    if isinstance(server_backend, FileBackend):  # nothing named after the user id on disk
        names = os.listdir(server_backend.path)
        assert all(user not in name for name in names if user not in ("*", "%"))
    assert await server_backend.revoke_session(infos[0].id) is True
    assert await server_backend.load(session.session_key) is None  # type: ignore[arg-type]
    assert await server_backend.load(bystander.session_key) is not None  # type: ignore[arg-type]


def test_handles_round_trip_the_user_and_hide_the_key() -> None:
    skey = "ab" * 32
    handle = session_handle("alice", skey)
    assert user_of_handle(handle) == "alice" and skey not in handle
    assert session_handle(None, skey).startswith(".") and user_of_handle(session_handle(None, skey)) is None
    assert session_handle("alice", skey) == handle  # stable


# -- signed cookies --------------------------------------------------------------------------------------------


async def test_signed_cookies_keep_no_index(signed_cookies_backend: SessionBackend) -> None:
    session = _session(signed_cookies_backend)
    await session.login("alice")  # the binding travels in the cookie like everything else
    assert session.user_id == "alice"
    for call in (
        signed_cookies_backend.user_sessions("alice"),
        signed_cookies_backend.revoke_user_sessions("alice"),
        signed_cookies_backend.revoke_session("YWxpY2U." + "0" * 32),
        session.revoke_other_sessions(),
    ):
        with pytest.raises(NotImplementedError, match="cookies"):
            await call


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


async def test_session_info_times_come_from_the_session(server_backend: SessionBackend, clock: Clock) -> None:
    session = await _logged_in(server_backend, "alice", max_age=300)
    [info] = await server_backend.user_sessions("alice")
    now = expiry.timestamp()
    assert abs((info.created_at - _utc(now)).total_seconds()) < 2
    assert abs((info.expires_at - _utc(now + 300)).total_seconds()) < 2
    assert session.user_id == "alice"
