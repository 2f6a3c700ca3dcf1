"""Bounded store calls: asession.deadline, the middleware's 503 past store_timeout, and the burst log."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asession import ImproperlyConfigured, SessionConfig, SessionMiddleware
from asession.backends.memory import MemoryBackend
from asession.changes import Changes
from asession.deadline import TICK, bounded
from asession.exceptions import BackendUnavailableError
from asession.failure_log import BURST_SECONDS, FailureLog

KEY = "abcdefgh12345678abcdefgh12345678"


# -- bounded() ----------------------------------------------------------------------------------------------


async def test_bounded_call_past_its_bound_raises_backend_unavailable() -> None:
    """A call that never ends is cancelled between timeout and timeout + 2 TICK, as BackendUnavailableError."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"'the store' did not answer within 0.2 s"):
        await bounded(never, 0.2, "the store")
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.2 + TICK + 1.5  # the margin: a parallel run under coverage delays the loop
    assert never.cancelled()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the task is not left half-cancelled
    await asyncio.sleep(0)  # and no cancellation is pending for a later await


async def test_bounded_call_that_finishes_returns_its_result() -> None:
    """A call within its bound returns its value; None means no bound at all."""

    async def slow(value: int) -> int:
        await asyncio.sleep(0.05)
        return value

    assert await bounded(slow(1), 1.0, "store") == 1
    assert await bounded(slow(2), None, "store") == 2


async def test_bounded_passes_the_callers_own_cancellation_through() -> None:
    """A request cancelled from outside is cancelled, not turned into a store error."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(bounded(never, 5.0, "store"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_bounded_inside_bounded_runs_under_the_outer_bound() -> None:
    """A bounded call made inside another one of the same task is bounded by the outer one."""

    async def inner() -> None:
        await bounded(asyncio.sleep(10), 5.0, "inner")

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="'outer'"):
        await bounded(inner(), 0.1, "outer")
    assert time.monotonic() - started < 1


async def test_bounded_call_that_swallows_the_cancellation_leaves_no_cancel_behind() -> None:
    """A driver that catches the cancellation and returns: its result counts and the task is not cancelled."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"  # pragma: no cover - the sleep is always cut

    assert await bounded(stubborn(), 0.1, "store") == "finished anyway"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)


async def test_many_bounded_calls_each_end_in_time() -> None:
    """Hundreds of concurrent hung calls all end within the bound, and the watchdog stops when idle."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(300)]
    started = time.monotonic()
    outcomes = await asyncio.gather(*(bounded(f, 0.2, "store") for f in futures), return_exceptions=True)
    assert all(isinstance(outcome, BackendUnavailableError) for outcome in outcomes)
    # Ended, not hung: a generous margin over the bound, since a parallel run under coverage delays the loop.
    assert time.monotonic() - started < 0.2 + TICK + 3.0
    from asession import deadline

    await asyncio.sleep(TICK * 2)
    watchdog = deadline.current()
    assert watchdog is not None and watchdog.timer is None and not watchdog.deadlines


# -- SessionConfig.store_timeout ---------------------------------------------------------------------------


def test_store_timeout_defaults_to_five_seconds() -> None:
    """A request waits at most 5 s for its store unless configured otherwise."""
    assert SessionConfig().store_timeout == 5.0
    assert SessionConfig(store_timeout=None).store_timeout is None
    assert SessionConfig(store_timeout=1).store_timeout == 1


@pytest.mark.parametrize("value", [0, -1, True, "5", math.nan, math.inf])
def test_store_timeout_must_be_positive_seconds(value: Any) -> None:
    """store_timeout refuses zero, negatives, booleans, strings, NaN and infinity."""
    with pytest.raises(ImproperlyConfigured, match="store_timeout"):
        SessionConfig(store_timeout=value)


# -- the middleware --------------------------------------------------------------------------------------------


class HangingBackend(MemoryBackend):
    """A memory store whose open, load or save can be made to hang, as a black-holed server would."""

    waits = True  # unlike the MemoryBackend it extends, its calls may wait: store_timeout must bound them

    def __init__(self) -> None:
        super().__init__()
        self.hang: set[str] = set()

    async def _wait(self, what: str) -> None:
        if what in self.hang:
            await asyncio.Event().wait()

    async def _open(self) -> None:
        await self._wait("open")

    async def _load(self, skey: str) -> str | None:
        await self._wait("load")
        return await super()._load(skey)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        await self._wait("save")
        await super()._save(skey, payload, expiry_age, must_create)

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        await self._wait("save")
        return await super()._update(skey, changes, expiry_age)

    async def _delete(self, skey: str) -> None:
        await self._wait("delete")
        await super()._delete(skey)


async def view(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.session))


async def update(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse(dict(request.session))


async def cycle(request: Request) -> JSONResponse:
    await request.session.cycle_key()  # type: ignore[attr-defined]
    request.session["cycled"] = True
    return JSONResponse(dict(request.session))


async def logout(request: Request) -> JSONResponse:
    await request.session.flush()  # type: ignore[attr-defined]
    return JSONResponse({})


def app_for(backend: MemoryBackend, timeout: float = 0.3) -> Starlette:
    routes = [
        Route("/view", view),
        Route("/update", update, methods=["POST"]),
        Route("/cycle", cycle, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
    config = SessionConfig(store_timeout=timeout)
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend, config=config)])


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.mark.parametrize("stage", ["load", "save", "open"])
async def test_store_that_hangs_answers_503_within_the_bound(stage: str) -> None:
    """A store that hangs on open, load or save gives a 503 within store_timeout, not a request that waits for ever."""
    backend = HangingBackend()
    async with client_for(app_for(backend)) as client:
        if stage != "open":
            response = await client.post("/update", json={"a": 1})
            assert response.status_code == 200
        backend.hang.add(stage)
        if stage == "open":
            await backend.close()
        started = time.monotonic()
        if stage == "save":
            response = await client.post("/update", json={"a": 2})
        else:
            response = await client.get("/view", headers={"Cookie": f"session={client.cookies.get('session') or KEY}"})
        assert response.status_code == 503
        assert time.monotonic() - started < 0.3 + TICK + 1
        backend.hang.clear()
        if stage != "open":
            assert (await client.get("/view")).json() == {"a": 1}  # nothing was lost
    await backend.close()


async def test_view_that_deletes_on_a_hanging_store_ends_in_bounded_time() -> None:
    """A logout whose delete hangs raises BackendUnavailableError in the view (here: a 500) instead of waiting."""
    backend = HangingBackend()
    app = app_for(backend)
    async with backend, client_for(app) as client:
        await client.post("/update", json={"a": 1})
        backend.hang.add("delete")
        with pytest.raises(BackendUnavailableError, match="did not answer within 0.3 s"):
            await client.post("/logout")


async def test_first_request_without_lifespan_may_cycle_the_key() -> None:
    """With no lifespan, a cookie-less request whose view calls cycle_key() works (the backend opens first)."""
    backend = MemoryBackend()
    async with client_for(app_for(backend)) as client:
        response = await client.post("/cycle")
        assert response.status_code == 200 and response.json() == {"cycled": True}
        assert (await client.get("/view")).json() == {"cycled": True}
    await backend.close()


async def test_store_failures_are_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    """Fifty requests failing together give one error with traceback, then one warning when the store is back."""
    backend = HangingBackend()
    async with backend, client_for(app_for(backend, timeout=0.1)) as client:
        await client.post("/update", json={"a": 1})
        backend.hang.add("load")
        responses = await asyncio.gather(*(client.get("/view") for _ in range(50)))
        assert {response.status_code for response in responses} == {503}
        backend.hang.clear()
        assert (await client.get("/view")).status_code == 200
    errors = [r for r in caplog.records if r.name == "asession.middleware" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    [recovered] = [r for r in caplog.records if r.name == "asession.middleware" and r.levelno == logging.WARNING]
    assert "answers again" in recovered.getMessage() and "49 of them not logged" in recovered.getMessage()


def test_failure_log_reports_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    """A failure after the quiet window is logged with the count of those held back since the last one."""
    now = [1000.0]
    log = FailureLog(logging.getLogger("asession.test"), clock=lambda: now[0])
    error = ConnectionError("down")
    for _ in range(5):
        log.failure("Store %s failed.", "X", exc=error)
        now[0] += 1
    now[0] += BURST_SECONDS
    log.failure("Store %s failed.", "X", exc=error)
    messages = [r.getMessage() for r in caplog.records if r.name == "asession.test"]
    assert messages[0] == "Store X failed."
    assert len(messages) == 2 and "4 more failures" in messages[1]


class SlowToCancel:
    """A store whose calls, once cancelled, take their time to clean up (as asyncpg's do)."""

    prompt_cancellation = False

    def __repr__(self) -> str:
        return "<SlowToCancel>"


async def test_call_of_a_store_slow_to_cancel_is_abandoned_at_the_bound() -> None:
    """A driver that cleans up for seconds after a cancellation still gives the request its error at the bound."""
    cleaned_up = asyncio.Event()

    async def query() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(2.0)  # the cancel request to the server, the connection reset ...
            cleaned_up.set()
            raise

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="<SlowToCancel> did not answer within 0.1 s"):
        await bounded(query(), 0.1, SlowToCancel())
    assert time.monotonic() - started < 1.5  # abandoned at the bound, not waited for (2 s of clean-up)
    assert not cleaned_up.is_set()
    await asyncio.wait_for(cleaned_up.wait(), 5)  # the abandoned call still finishes its clean-up


async def test_call_of_a_store_slow_to_cancel_returns_its_result() -> None:
    """Within the bound, a call of such a store returns its value or raises its own error."""

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 7

    async def fail() -> None:
        raise ConnectionError("refused")

    assert await bounded(answer(), 1.0, SlowToCancel()) == 7
    with pytest.raises(ConnectionError):
        await bounded(fail(), 1.0, SlowToCancel())
