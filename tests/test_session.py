"""The Session facade over every backend: flags, mapping, lifecycle and expiry (Django's SessionTestsMixin)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from asession import Session, SessionConfig, SessionError
from asession.backends.base import SessionBackend
from tests.conftest import Clock, let_expire


async def saved(backend: SessionBackend, **data: object) -> Session:
    session = Session(backend)
    session.update(data)
    await session.save()
    return session


async def reload(session: Session) -> Session:
    fresh = Session(session.backend, session.session_key, session.config)
    await fresh.load()
    return fresh


def test_new_session_is_an_empty_unflagged_dict(backend: SessionBackend) -> None:
    """A new session is a dict, empty, with both flags False and no key."""
    session = Session(backend)
    assert isinstance(session, dict)
    assert session.session_key is None
    assert (session.modified, session.accessed) == (False, False)
    assert len(session) == 0


def test_reads_set_accessed_only(backend: SessionBackend) -> None:
    """Every read sets accessed and leaves modified alone."""
    session = Session(backend)
    dict.__setitem__(session, "x", 1)
    reads: list[Callable[[], object]] = [
        lambda: session["x"],
        lambda: session.get("x"),
        lambda: "x" in session,
        lambda: session.has_key("x"),
        lambda: session.keys(),
        lambda: session.values(),
        lambda: session.items(),
        lambda: list(session.iterkeys()),
        lambda: list(session.itervalues()),
        lambda: list(session.iteritems()),
        lambda: list(session),
        lambda: session.pop("absent", None),
        lambda: session.setdefault("x", 2),
    ]
    for read in reads:
        session.accessed = session.modified = False
        read()
        assert (session.accessed, session.modified) == (True, False), read


def test_writes_set_modified_and_accessed(backend: SessionBackend) -> None:
    """Every write sets both flags."""
    session = Session(backend)
    writes: list[Callable[[], object]] = [
        lambda: session.__setitem__("x", 1),
        lambda: session.__delitem__("x"),
        lambda: session.update({"y": 2}),
        lambda: session.pop("y"),
        lambda: session.setdefault("z", 3),
        lambda: session.popitem(),
        lambda: session.clear(),
        lambda: session.__ior__({"w": 4}),
        lambda: session.mark_modified(),
    ]
    for write in writes:
        session.accessed = session.modified = False
        write()
        assert (session.accessed, session.modified) == (True, True), write


def test_mapping_behaves_like_a_dict(backend: SessionBackend) -> None:
    """The dict operations give the results a dict gives."""
    session = Session(backend)
    session["a"] = 1
    session.update({"b": 2}, c=3)
    assert session.pop("a") == 1
    with pytest.raises(KeyError):
        session.pop("a")
    with pytest.raises(KeyError):
        del session["a"]
    assert session.setdefault("b", 9) == 2
    assert sorted(session.keys()) == ["b", "c"]
    assert dict(session.items()) == {"b": 2, "c": 3}
    assert json.loads(json.dumps(session)) == {"b": 2, "c": 3}
    session |= {"d": 4}
    assert session == {"b": 2, "c": 3, "d": 4}
    session.mark_accessed()
    assert session.accessed


async def test_save_and_reload_round_trips_data(backend: SessionBackend) -> None:
    """Saved data comes back in a new Session for the same key."""
    session = await saved(backend, cat="dog", n=[1, 2])
    assert session.session_key is not None
    fresh = await reload(session)
    assert fresh == {"cat": "dog", "n": [1, 2]}
    assert (fresh.modified, fresh.accessed) == (False, False)  # dict equality is a C-level read


async def test_unloaded_session_with_key_refuses_mapping_access(backend: SessionBackend) -> None:
    """Touching the mapping of an unloaded keyed session raises SessionError telling to load first."""
    session = await saved(backend, a=1)
    unloaded = Session(backend, session.session_key)
    for touch in (lambda: unloaded["a"], lambda: unloaded.get("a"), lambda: len(unloaded), lambda: "a" in unloaded):
        with pytest.raises(SessionError, match=r"await session\.load\(\)"):
            touch()


async def test_async_accessors_load_on_demand(backend: SessionBackend) -> None:
    """aget/aset/apop/... load the session first and then act like their sync twins."""
    session = await saved(backend, a=1, b=2)

    def fresh() -> Session:
        return Session(backend, session.session_key)

    assert await fresh().aget("a") == 1
    assert await fresh().aget("zz", "default") == "default"
    assert await fresh().ahas_key("b")
    assert sorted(await fresh().akeys()) == ["a", "b"]
    assert sorted(await fresh().avalues()) == [1, 2]
    assert sorted(await fresh().aitems()) == [("a", 1), ("b", 2)]
    s = fresh()
    await s.aset("c", 3)
    assert s.modified and s["c"] == 3
    s = fresh()
    assert await s.apop("a") == 1
    assert await s.apop("a", "gone") == "gone"
    s = fresh()
    assert await s.asetdefault("a", 9) == 1
    s = fresh()
    await s.aupdate({"x": 1}, y=2)
    assert s["x"] == 1 and s["y"] == 2
    s = fresh()
    await s.aclear()
    assert len(s) == 0 and s.modified


async def test_invalid_key_loads_empty_and_gets_new_key_on_save(backend: SessionBackend) -> None:
    """A malformed key is dropped: the session is empty and saving creates a fresh key."""
    session = Session(backend, "1")
    assert session.session_key is None
    assert session.get("cat") is None
    session["cat"] = "dog"
    await session.save()
    assert session.session_key not in (None, "1")


async def test_unknown_key_loads_empty_creates_nothing_and_gets_new_key(server_backend: SessionBackend) -> None:
    """A well-formed but unknown key loads empty, stores nothing, and saving picks a new key."""
    unknown = "abcdefgh12345678abcdefgh12345678"
    session = Session(server_backend, unknown)
    await session.load()
    assert session == {} and session.session_key is None
    assert not await server_backend.exists(unknown)
    await session.save()
    assert session.session_key != unknown
    assert not await server_backend.exists(unknown)


async def test_exists_and_delete(server_backend: SessionBackend) -> None:
    """exists() and delete() work on the current key and on any given key."""
    session = await saved(server_backend, a=1)
    key = session.session_key
    assert key is not None
    assert await session.exists(key)
    await session.delete()
    assert not await session.exists(key)
    other = await saved(server_backend, b=1)
    assert other.session_key is not None
    await session.delete(other.session_key)
    assert not await session.exists(other.session_key)
    await Session(server_backend).delete()  # no key: nothing to do


async def test_flush_deletes_data_and_drops_the_key(backend: SessionBackend) -> None:
    """flush() empties the session, deletes its record and leaves both flags True and no key."""
    session = await saved(backend, foo="bar")
    previous = session.session_key
    assert previous is not None
    await session.flush()
    assert session == {} and session.session_key is None
    assert (session.modified, session.accessed) == (True, True)
    if backend.hashes_keys:
        assert not await backend.exists(previous)


async def test_cycle_key_keeps_data_under_a_new_key(backend: SessionBackend) -> None:
    """cycle_key() moves the data to a new key, deletes the old record and leaves modified True."""
    session = await saved(backend, user=42)
    old = session.session_key
    assert old is not None
    loaded = Session(backend, old)
    await loaded.cycle_key()
    assert loaded.session_key not in (None, old)
    assert loaded == {"user": 42} and loaded.modified
    assert await reload(loaded) == {"user": 42}
    if backend.hashes_keys:
        assert not await backend.exists(old)


async def test_create_stores_an_empty_session_under_a_new_key(server_backend: SessionBackend) -> None:
    """create() gives a new session a fresh key and stores it."""
    session = Session(server_backend)
    await session.create()
    assert session.session_key is not None
    assert await server_backend.exists(session.session_key)
    assert session.modified


async def test_save_must_create_refuses_an_existing_key(server_backend: SessionBackend) -> None:
    """save(must_create=True) on a stored key raises CreateError."""
    from asession import CreateError

    session = await saved(server_backend, a=1)
    with pytest.raises(CreateError):
        await session.save(must_create=True)


async def test_unloaded_save_does_not_wipe_stored_data(backend: SessionBackend) -> None:
    """Saving a keyed session that was never loaded loads it first instead of storing an empty dict."""
    session = await saved(backend, keep="me")
    unloaded = Session(backend, session.session_key)
    await unloaded.save()
    assert await reload(unloaded) == {"keep": "me"}


async def test_unserializable_value_raises_type_error_and_writes_nothing(backend: SessionBackend) -> None:
    """save() of data JSON cannot carry raises TypeError naming the key; the stored data is untouched."""
    session = await saved(backend, a=1)
    loaded = await reload(session)
    loaded["when"] = datetime.now()
    with pytest.raises(TypeError, match="'when'"):
        await loaded.save()
    assert await reload(session) == {"a": 1}


# -- expiry ----------------------------------------------------------------------------------------------


def test_default_expiry_is_the_configured_age(backend: SessionBackend, clock: Clock) -> None:
    """Without set_expiry, age and date follow SessionConfig.max_age."""
    session = Session(backend, config=SessionConfig(max_age=600))
    assert session.get_expiry_age() == 600
    assert session.get_expiry_date() == clock.current + timedelta(seconds=600)
    assert session.get_expiry_date().tzinfo is not None
    assert not session.get_expire_at_browser_close()


def test_set_expiry_accepts_int_timedelta_datetime_and_none(backend: SessionBackend, clock: Clock) -> None:
    """set_expiry understands every value Django does."""
    session = Session(backend)
    session.set_expiry(10)
    assert session.get_expiry_age() == 10 and session.modified
    session.set_expiry(timedelta(seconds=20))
    assert session.get_expiry_age() == 20
    session.set_expiry(clock.current + timedelta(seconds=30))
    assert session.get_expiry_age() == 30
    naive_local = (clock.current + timedelta(seconds=40)).astimezone().replace(tzinfo=None)
    session.set_expiry(naive_local)
    assert session.get_expiry_age() == 40
    assert session.get_expiry_date() == clock.current + timedelta(seconds=40)
    session.set_expiry(0)
    assert session.get_expire_at_browser_close()
    assert session.get_expiry_age() == session.config.max_age
    session.set_expiry(None)
    assert session.get_expiry_age() == session.config.max_age


@pytest.mark.parametrize("bad", ["10", 1.5, True, [1]])
def test_set_expiry_rejects_other_types(backend: SessionBackend, bad: object) -> None:
    """set_expiry raises TypeError for values it cannot interpret."""
    with pytest.raises(TypeError, match="set_expiry"):
        Session(backend).set_expiry(bad)  # type: ignore[arg-type]


def test_set_expiry_none_without_custom_expiry_changes_nothing(backend: SessionBackend) -> None:
    """Going back to the default when already there does not mark the session modified."""
    session = Session(backend)
    session.set_expiry(None)
    assert not session.modified


def test_expire_at_browser_close_follows_config(backend: SessionBackend) -> None:
    """The configured default applies until set_expiry overrides it."""
    session = Session(backend, config=SessionConfig(expire_at_browser_close=True))
    assert session.get_expire_at_browser_close()
    session.set_expiry(10)
    assert not session.get_expire_at_browser_close()
    session.set_expiry(0)
    assert session.get_expire_at_browser_close()


async def test_custom_expiry_is_stored_with_the_session(backend: SessionBackend, clock: Clock) -> None:
    """A custom expiry survives save and load, and does not appear in the mapping."""
    session = Session(backend)
    session["a"] = 1
    fixed = clock.current + timedelta(hours=1)
    session.set_expiry(fixed)
    await session.save()
    fresh = await reload(session)
    assert fresh == {"a": 1}
    assert fresh.get_expiry_date() == fixed.astimezone(timezone.utc)
    seconds = Session(backend)
    seconds["b"] = 2
    seconds.set_expiry(0)
    await seconds.save()
    assert (await reload(seconds)).get_expire_at_browser_close()


async def test_session_expires_after_its_custom_age(backend: SessionBackend, clock: Clock) -> None:
    """A session saved with set_expiry(1) is gone once that second has passed."""
    session = Session(backend)
    session["a"] = 1
    session.set_expiry(1)
    await session.save()
    assert await reload(session) == {"a": 1}
    await let_expire(backend, clock, 1)
    expired = await reload(session)
    assert expired == {} and expired.session_key is None


@pytest.mark.parametrize("browser_close", [False, True], ids=["default", "expire-at-browser-close"])
def test_cookie_lifetime_agrees_with_the_expiry_getters(
    backend: SessionBackend, clock: Clock, browser_close: bool
) -> None:
    """The middleware's (Max-Age, Expires) equal get_expiry_age() and get_expiry_date() in every case."""
    session = Session(backend, config=SessionConfig(expire_at_browser_close=browser_close))
    for value in (None, 0, 300, timedelta(seconds=20), clock.current + timedelta(seconds=30)):
        session.set_expiry(value)
        lifetime = session.cookie_lifetime()
        if session.get_expire_at_browser_close():
            assert lifetime is None
        else:
            expected = (session.get_expiry_age(), int(session.get_expiry_date().timestamp()))
            assert lifetime == expected, value
