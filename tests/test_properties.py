"""Property-based tests: the Session facade against a plain dict, and hostile keys and cookies end to end.

The facade is driven by a hypothesis state machine that applies the same operation to a ``Session`` and to a
plain ``dict`` and compares values, exceptions and both flags after every step, following API.md's rules.
Hostile keys go straight at the backends, hostile ``Cookie`` headers through the middleware, over the memory
and the file backend: never a 500, never a file outside the store, never a header injection, and never
another visitor's data.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from asession import Session, SessionError
from asession.backends.base import SessionBackend
from asession.backends.memory import MemoryBackend
from tests.apps import counter_app

T = TypeVar("T")
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_MISSING: Any = object()
_JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
# A small alphabet of keys makes hits (present keys) as likely as misses.
MAPPING_KEYS = st.sampled_from(["a", "b", "user", "é", ""]) | st.text(max_size=3)


# -- (1) the Session facade against a dict ----------------------------------------------------------------


class SessionModel(RuleBasedStateMachine):
    """Apply every mapping operation to a Session and to a dict; both must agree on result and flags."""

    def __init__(self) -> None:
        super().__init__()
        # A new session has no key, so the mapping is usable without load() and no backend call happens.
        self.session = Session(MemoryBackend())
        self.model: dict[str, Any] = {}
        self.accessed = False
        self.modified = False

    def _both(self, on_session: Callable[[Session], Any], on_model: Callable[[dict[str, Any]], Any]) -> Any:
        """Run one operation on both; results (or the exception type) must match. Returns the result."""
        try:
            expected: Any = ("value", on_model(self.model))
        except Exception as exc:
            expected = ("raises", type(exc))
        try:
            actual: Any = ("value", on_session(self.session))
        except Exception as exc:
            actual = ("raises", type(exc))
        assert actual == expected
        return actual

    def _read(self) -> None:
        self.accessed = True

    def _write(self) -> None:
        self.accessed = self.modified = True

    # reads ------------------------------------------------------------------------------------------------

    @rule(key=MAPPING_KEYS)
    def getitem(self, key: str) -> None:
        self._both(lambda s: s[key], lambda m: m[key])
        self._read()

    @rule(key=MAPPING_KEYS, default=st.none() | st.integers())
    def get(self, key: str, default: int | None) -> None:
        self._both(lambda s: s.get(key, default), lambda m: m.get(key, default))
        self._read()

    @rule(key=MAPPING_KEYS)
    def contains(self, key: str) -> None:
        self._both(lambda s: key in s, lambda m: key in m)
        self._read()

    @rule(key=MAPPING_KEYS)
    def has_key(self, key: str) -> None:
        self._both(lambda s: s.has_key(key), lambda m: key in m)
        self._read()

    @rule(view=st.sampled_from(["keys", "values", "items", "iterkeys", "itervalues", "iteritems", "iter"]))
    def iterate(self, view: str) -> None:
        model_view = {"iter": "keys", "iterkeys": "keys", "itervalues": "values", "iteritems": "items"}.get(view, view)
        self._both(
            lambda s: list(iter(s)) if view == "iter" else list(getattr(s, view)()),
            lambda m: list(getattr(m, model_view)()),
        )
        self._read()

    @rule()
    def length(self) -> None:
        self._both(len, len)

    # writes -----------------------------------------------------------------------------------------------

    @rule(key=MAPPING_KEYS, value=JSON_VALUES)
    def setitem(self, key: str, value: Any) -> None:
        self._both(lambda s: s.__setitem__(key, value), lambda m: m.__setitem__(key, value))
        self._write()

    @rule(key=MAPPING_KEYS)
    def delitem(self, key: str) -> None:
        present = key in self.model
        self._both(lambda s: s.__delitem__(key), lambda m: m.__delitem__(key))
        self._write() if present else self._read()

    @rule(key=MAPPING_KEYS, default=st.just(_MISSING) | st.none() | st.integers())
    def pop(self, key: str, default: Any) -> None:
        present = key in self.model
        if default is _MISSING:
            self._both(lambda s: s.pop(key), lambda m: m.pop(key))
        else:
            self._both(lambda s: s.pop(key, default), lambda m: m.pop(key, default))
        # pop of a present key modifies; of an absent key (KeyError or default) it only reads.
        self._write() if present else self._read()

    @rule()
    def popitem(self) -> None:
        present = bool(self.model)
        self._both(lambda s: s.popitem(), lambda m: m.popitem())
        self._write() if present else self._read()

    @rule(key=MAPPING_KEYS, default=JSON_VALUES)
    def setdefault(self, key: str, default: Any) -> None:
        present = key in self.model
        self._both(lambda s: s.setdefault(key, default), lambda m: m.setdefault(key, default))
        self._read() if present else self._write()

    @rule(other=st.dictionaries(MAPPING_KEYS, JSON_VALUES, max_size=3), as_kwargs=st.booleans())
    def update(self, other: dict[str, Any], as_kwargs: bool) -> None:
        if as_kwargs and all(key.isidentifier() for key in other):
            self._both(lambda s: s.update(**other), lambda m: m.update(**other))
        else:
            self._both(lambda s: s.update(other), lambda m: m.update(other))
        self._write()

    @rule(other=st.dictionaries(MAPPING_KEYS, JSON_VALUES, max_size=3))
    def inplace_or(self, other: dict[str, Any]) -> None:
        def on_session(session: Session) -> None:
            session |= other

        self._both(on_session, lambda m: m.update(other))
        self._write()

    @rule()
    def clear(self) -> None:
        self._both(lambda s: s.clear(), lambda m: m.clear())
        self._write()

    # flags ------------------------------------------------------------------------------------------------

    @rule()
    def reset_flags(self) -> None:
        # What a fresh request would see: both flags down, data kept.
        self.session.accessed = self.session.modified = False
        self.accessed = self.modified = False

    @rule()
    def mark_accessed(self) -> None:
        self.session.mark_accessed()
        self._read()

    @rule()
    def mark_modified(self) -> None:
        self.session.mark_modified()
        self._write()

    @invariant()
    def agrees_with_model(self) -> None:
        # dict.items() reads the storage directly and must not disturb the flags being checked.
        assert list(dict.items(self.session)) == list(self.model.items())
        assert (self.session.accessed, self.session.modified) == (self.accessed, self.modified)
        assert self.session.session_key is None


def test_session_facade_matches_dict_model() -> None:
    """Any sequence of mapping operations gives the Session the values, exceptions and flags a dict model predicts."""
    run_state_machine_as_test(
        SessionModel,
        settings=settings(SETTINGS, max_examples=200, stateful_step_count=30),
    )


@given(key=st.text(max_size=3))
@SETTINGS
def test_session_unloaded_mapping_raises_session_error(key: str) -> None:
    """Every mapping operation on a keyed but unloaded session raises SessionError and sets no flag."""
    session = Session(MemoryBackend(), "a" * 32)
    operations: list[Callable[[], object]] = [
        lambda: session[key],
        lambda: session.get(key),
        lambda: key in session,
        lambda: session.has_key(key),
        lambda: session.keys(),
        lambda: session.items(),
        lambda: list(session.iterkeys()),
        lambda: session.__setitem__(key, 1),
        lambda: session.__delitem__(key),
        lambda: session.pop(key, None),
        lambda: session.setdefault(key, 1),
        lambda: session.update({key: 1}),
        lambda: session.clear(),
        lambda: session.popitem(),
    ]
    for operation in operations:
        with pytest.raises(SessionError, match="load"):
            operation()
    assert (session.accessed, session.modified) == (False, False)


# -- (2) hostile keys and cookies -------------------------------------------------------------------------

VALID_COOKIE = re.compile(
    r"session=([a-z0-9]{32}); Max-Age=\d+; Expires=[A-Za-z]{3}, \d\d [A-Za-z]{3} \d{4} \d\d:\d\d:\d\d GMT; "
    r"Path=/; HttpOnly; SameSite=Lax"
)
EXPIRED_COOKIE = 'session=""; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; SameSite=Lax'
STORE_FILE = re.compile(r"[0-9a-f]{64}")
_HEADER_BREAKERS = (b"\r", b"\n", b"\x00")

HOSTILE_TEXT = st.sampled_from(
    [
        "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "../" * 40 + "tmp/x",
        "/etc/passwd",
        "..",
        ".",
        "a" * 7,
        "a" * 65,
        "A" * 32,
        "abc\x00defghijklmnop",
        "abcdefgh\r\nSet-Cookie: session=pwned",
        "abcdefgh\nX-Injected: 1",
        "abcdefgh;Path=/evil",
        "ǅǆǄaaaaaaaaaa",
        "１２３４５６７８９０",  # full-width digits
        "session",
        '"' + "a" * 32 + '"',
        "x" * 100_000,
        "",
        " ",
    ]
) | st.text(max_size=80)
HOSTILE_BYTES = st.binary(max_size=120) | HOSTILE_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass"))
COOKIE_NAMES = st.sampled_from([b"session", b" session", b"session ", b"SESSION", b"other", b"sess", b"session\x00"])


@st.composite
def cookie_headers(draw: st.DrawFn, stored_key: str) -> list[tuple[bytes, bytes]]:
    """One or more Cookie headers, each with several ``name=value`` pairs, some of them hostile."""
    headers = []
    for _ in range(draw(st.integers(1, 3))):
        pairs = []
        for _ in range(draw(st.integers(1, 8))):
            value = draw(HOSTILE_BYTES | st.just(stored_key.encode()) | st.just(b'"' + stored_key.encode() + b'"'))
            pairs.append(draw(COOKIE_NAMES) + b"=" + value)
        separator = draw(st.sampled_from([b"; ", b";", b" ; ", b","]))
        headers.append((draw(st.sampled_from([b"cookie", b"Cookie"])), separator.join(pairs)))
    return headers


def _make_backend(kind: str, directory: Path) -> SessionBackend:
    if kind == "file":
        from asession.backends.file import FileBackend

        return FileBackend(str(directory))
    return MemoryBackend()


class _Loop:
    """One event loop for a whole hypothesis run (``asyncio.Runner`` needs Python 3.11)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)


@contextmanager
def _running(kind: str, tmp_path: Path) -> Iterator[tuple[_Loop, SessionBackend, httpx.AsyncClient, Path]]:
    """An event loop, an opened backend and a client over the app, kept across hypothesis examples."""
    store = tmp_path / "store"
    store.mkdir()
    runner = _Loop()
    try:
        backend = _make_backend(kind, store)
        runner.run(backend.open())
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=counter_app(backend), raise_app_exceptions=False),
            base_url="http://testserver",
        )
        try:
            yield runner, backend, client, store
        finally:
            runner.run(client.aclose())
            runner.run(backend.close())
    finally:
        runner.loop.close()


def _check_no_escape(kind: str, tmp_path: Path, store: Path) -> None:
    """Nothing but the store directory next to it, and nothing in it but ``<prefix><64 hex>`` files."""
    assert sorted(os.listdir(tmp_path)) == ["store"]
    if kind != "file":
        assert os.listdir(store) == []
        return
    from asession.backends.file import FILE_PREFIX, LOCK_PREFIX

    pattern = re.compile(re.escape(FILE_PREFIX) + STORE_FILE.pattern + "|" + re.escape(LOCK_PREFIX) + "[0-9a-f]{2}")
    for name in os.listdir(store):
        assert pattern.fullmatch(name), f"unexpected entry {name!r} in the store"
        assert (store / name).is_file()


def _check_headers(response: httpx.Response) -> list[str]:
    """No CR, LF or NUL in any response header; return the Set-Cookie values."""
    for name, value in response.headers.raw:
        assert not any(c in name or c in value for c in _HEADER_BREAKERS), (name, value)
    return response.headers.get_list("set-cookie")


BACKEND_KINDS = [pytest.param("memory", id="memory"), pytest.param("file", id="file")]


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_backend_hostile_keys_never_reach_the_store(kind: str, tmp_path: Path) -> None:
    """Any malformed key loads None, is not found, deletes nothing, is refused on save, and writes no file."""
    with _running(kind, tmp_path) as (runner, backend, _, store):
        stored = runner.run(backend.create({"who": "victim"}, 3600))

        @given(key=(HOSTILE_TEXT | st.binary(max_size=70) | st.integers()).filter(lambda k: not backend.accepts_key(k)))
        @SETTINGS
        def check(key: Any) -> None:
            assert runner.run(backend.load(key)) is None
            assert runner.run(backend.exists(key)) is False
            runner.run(backend.delete(key))
            with pytest.raises(SessionError, match="malformed key"):
                runner.run(backend.save(key, {"x": 1}, 3600))
            assert runner.run(backend.load(stored)) == {"who": "victim"}

        check()
        _check_no_escape(kind, tmp_path, store)


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_middleware_hostile_cookies_never_fail_inject_or_leak(kind: str, tmp_path: Path) -> None:
    """Hostile Cookie headers get a 200, at most one well-formed Set-Cookie, and only their own session's data."""
    with _running(kind, tmp_path) as (runner, backend, client, store):
        stored = runner.run(backend.create({"n": 1000}, 3600))

        @given(headers=cookie_headers(stored), path=st.sampled_from(["/count", "/read", "/logout"]))
        @SETTINGS
        def check(headers: list[tuple[bytes, bytes]], path: str) -> None:
            before = runner.run(backend.load(stored))
            assert before is not None
            method = "POST" if path == "/count" else "GET"
            response = runner.run(client.request(method, path, headers=headers))
            assert response.status_code == 200, response.text
            set_cookies = _check_headers(response)
            assert len(set_cookies) <= 1, set_cookies
            body = response.json()
            if path == "/count":
                assert len(set_cookies) == 1
                match = VALID_COOKIE.fullmatch(set_cookies[0])
                assert match, set_cookies[0]
                if match.group(1) == stored:
                    assert body == {"n": before["n"] + 1}
                else:
                    # A fresh session: nobody else's counter was served or touched.
                    assert body == {"n": 1}
                    assert runner.run(backend.load(stored)) == before
                    assert runner.run(backend.load(match.group(1))) == {"n": 1}
            elif path == "/read":
                assert set_cookies == []
                assert body == {"n": before["n"]} or body == {"n": None}
            else:
                assert set_cookies in ([], [EXPIRED_COOKIE])
            if runner.run(backend.load(stored)) is None:  # logged out with the real key: store it again
                runner.run(backend.save(stored, before, 3600))

        check()
        _check_no_escape(kind, tmp_path, store)


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_middleware_many_session_cookies_use_the_first(kind: str, tmp_path: Path) -> None:
    """With many session cookies in one header, only the first decides; a valid first one reads its own data."""
    with _running(kind, tmp_path) as (runner, backend, client, store):
        first = runner.run(backend.create({"n": 1}, 3600))
        second = runner.run(backend.create({"n": 2}, 3600))
        header = "; ".join(f"session={key}" for key in [first, second] + ["../x"] * 200).encode()
        response = runner.run(client.get("/read", headers=[(b"cookie", header)]))
        assert (response.status_code, response.json()) == (200, {"n": 1})
        response = runner.run(client.get("/read", headers=[(b"cookie", header.replace(first.encode(), b"..%00"))]))
        assert (response.status_code, response.json()) == (200, {"n": None})
        _check_no_escape(kind, tmp_path, store)


def test_response_headers_check_catches_injection() -> None:
    """The header check used above rejects a CR/LF in a header value (it is not vacuous)."""
    response = httpx.Response(200, headers=[(b"set-cookie", b"session=a\r\nX-Evil: 1")])
    with pytest.raises(AssertionError):
        _check_headers(response)
