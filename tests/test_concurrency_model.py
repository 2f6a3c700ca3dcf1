"""A hypothesis state machine of interleaved requests of one session, checked against a model of the merge.

Several requests load the session, change keys (set, delete, append in place, clear), and save in any
order; another may flush the session meanwhile. The model says what the store must hold: each save
merges just the keys its request changed into what is stored then (clear: replaces it), and a save that
finds the session flushed raises UpdateError and writes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from asession import Session, UpdateError
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend

T = TypeVar("T")
KEYS = st.sampled_from(["a", "b", "cart", "user"])
VALUES = st.integers(0, 9) | st.lists(st.integers(0, 9), max_size=2)
MAX_IN_FLIGHT = 4


class Request:
    """One request in flight: its Session and the model of what it changed."""

    def __init__(self, session: Session, loaded: dict[str, Any]) -> None:
        self.session = session
        self.local = copy.deepcopy(loaded)
        self.changed: set[str] = set()
        self.removed: set[str] = set()
        self.replace = False


class InterleavedRequests(RuleBasedStateMachine):
    backend_url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        url = self.backend_url.replace("{tmp}", self.tmp.name)
        self.backend: SessionBackend = backend_from_url(url)
        self.run(self.backend.open())
        self.stored: dict[str, Any] | None = {"user": 1, "cart": [1]}
        session = Session(self.backend)
        session.update(self.stored)
        self.run(session.save())
        assert session.session_key is not None
        self.key: str = session.session_key
        self.requests: list[Request] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.backend.close())
        self.loop.close()
        self.tmp.cleanup()

    # requests arrive ----------------------------------------------------------------------------------------

    @precondition(lambda self: self.stored is not None and len(self.requests) < MAX_IN_FLIGHT)
    @rule()
    def begin(self) -> None:
        session = Session(self.backend, self.key)
        self.run(session.load())
        assert dict(session) == self.stored
        assert self.stored is not None
        self.requests.append(Request(session, self.stored))

    @precondition(lambda self: self.stored is None)
    @rule(user=st.integers(0, 9))
    def sign_in_again(self, user: int) -> None:
        session = Session(self.backend)
        session["user"] = user
        self.run(session.save())
        assert session.session_key is not None and session.session_key != self.key
        self.key, self.stored = session.session_key, {"user": user}
        self.requests.clear()  # requests of the old key are still in flight, but on the old key

    # what a request does --------------------------------------------------------------------------------------

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), key=KEYS, value=VALUES)
    def set(self, data: st.DataObject, key: str, value: Any) -> None:
        request = data.draw(st.sampled_from(self.requests))
        request.session[key] = copy.deepcopy(value)
        request.local[key] = value
        request.changed.add(key)
        request.removed.discard(key)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), key=KEYS)
    def delete(self, data: st.DataObject, key: str) -> None:
        request = data.draw(st.sampled_from(self.requests))
        if key in request.local:
            del request.session[key]
            del request.local[key]
            request.removed.add(key)
            request.changed.discard(key)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), key=KEYS, item=st.integers(0, 9))
    def append_in_place(self, data: st.DataObject, key: str, item: int) -> None:
        request = data.draw(st.sampled_from(self.requests))
        if isinstance(request.local.get(key), list):
            request.session[key].append(item)  # no mark_modified()
            request.local[key].append(item)
            request.changed.add(key)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def clear(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.requests))
        request.session.clear()
        request.local.clear()
        request.replace = True
        request.changed.clear()
        request.removed.clear()

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.requests))
        self.requests.remove(request)
        if self.stored is None:
            with pytest.raises(UpdateError):
                self.run(request.session.save())
            return
        self.run(request.session.save())
        if request.replace:
            self.stored = copy.deepcopy(request.local)
        else:
            for key in request.removed:
                self.stored.pop(key, None)
            for key in request.changed:
                self.stored[key] = copy.deepcopy(request.local[key])

    @precondition(lambda self: self.requests and self.stored is not None)
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.requests))
        self.requests.remove(request)
        self.run(request.session.flush())
        self.stored = None

    # what the store holds -------------------------------------------------------------------------------------

    @invariant()
    def store_matches_the_model(self) -> None:
        assert self.run(self.backend.load(self.key)) == self.stored


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/s.db", "file://{tmp}"], ids=["memory", "sqlite", "file"])
def test_interleaved_requests_merge_as_the_model_says(url: str) -> None:
    """Any interleaving of loads, changes, saves and flushes leaves the store exactly as the merge model says."""
    machine = type(f"InterleavedRequests[{url}]", (InterleavedRequests,), {"backend_url": url})
    run_state_machine_as_test(machine, settings=SETTINGS)
