"""Time bounds for store calls: :func:`bounded` awaits a call and fails it once it runs past its bound.

Every store call a request makes (open, load, save, delete, ...) is awaited through :func:`bounded`
with ``SessionConfig.store_timeout``, so a request ends in bounded time whatever the driver does: a
server that stops answering, a lock held for ever, a pool with no free connection. Past the bound the
call is cancelled and :class:`~asession.exceptions.BackendUnavailableError` is raised in its place,
which the middleware answers with a 503.

Why not ``asyncio.timeout()`` or ``asyncio.wait_for()``: each pushes a timer onto the event loop's heap
(and ``wait_for`` before Python 3.12 a task) per call, 3.7-4.3 µs of CPU per request on the benchmark
machine, where the whole in-process session layer of a ``/read`` costs about 7 µs
(``benchmarks/PROFILE.md``). Here each event loop has one watchdog: a call registers its task and the
tick at which it becomes overdue (a dict entry, about 0.35 µs in all), and a ticker that runs every
:data:`TICK` seconds while any call is registered cancels the overdue ones. A bounded call therefore
ends within ``timeout + 2 * TICK`` seconds.

Cancelling works only if the driver lets the cancellation through at once. asyncpg does not: a
cancelled query first sends PostgreSQL a cancel request and returns its connection to the pool, which
against a black-holed server waits seconds more (measured by ``benchmarks/soak.py``: 503s after 3-5 s
with a 2 s bound). A backend whose ``prompt_cancellation`` is ``False`` therefore has each call run as
a task of its own, which the request stops waiting for at the bound, leaving the task to finish its
clean-up in the background. That costs a task per call, nothing beside a PostgreSQL round trip.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from asession.exceptions import BackendUnavailableError

__all__ = ["TICK", "bounded"]

T = TypeVar("T")

#: Seconds between two checks of the watchdog: how late past its bound a call may be cancelled.
TICK = 0.05
_TICKS_PER_SECOND = round(1 / TICK)
_current_task = asyncio.current_task


class _Watchdog:
    """The calls in flight on one event loop, each with the tick at which it is overdue."""

    __slots__ = ("loop", "tick", "deadlines", "expired", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tick = 0
        self.deadlines: dict[asyncio.Task[object], int] = {}
        #: Tasks this watchdog cancelled, whose cancellation is still to be turned into an error.
        self.expired: set[asyncio.Task[object]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.timer = self.loop.call_later(TICK, self.check)

    def check(self) -> None:
        self.timer = None
        self.tick += 1
        tick = self.tick
        for task, due in list(self.deadlines.items()):
            if due <= tick and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        if self.deadlines:
            self.arm()


# Each thread's watchdog, of the loop that thread ran when it was made. Asking asyncio for the running loop
# or the current task costs a getpid() system call on Python 3.11 (a check against fork), 3-5 µs per call
# under load on the benchmark machine (py-spy, benchmarks/PROFILE.md), which is more than the whole rest of
# a bounded call. So the hot path finds the watchdog of its thread, and the current task of that watchdog's
# loop, without asking for the running loop: a thread runs one loop at a time, so a task running on the
# loop its watchdog recorded is this thread's. Only when there is none (a new thread, or a thread that has
# moved on to another loop, as a test client's does) does it ask asyncio and make a new watchdog.
_local = threading.local()


def _watchdog() -> _Watchdog:
    """This thread's watchdog for the running loop, made anew when the thread runs another loop now."""
    loop = asyncio.get_running_loop()
    watchdog: _Watchdog | None = getattr(_local, "watchdog", None)
    if watchdog is None or watchdog.loop is not loop:
        watchdog = _local.watchdog = _Watchdog(loop)
    return watchdog


def current() -> _Watchdog | None:
    """This thread's watchdog, if it has made one (for tests)."""
    watchdog: _Watchdog | None = getattr(_local, "watchdog", None)
    return watchdog


async def _abandoning(call: Awaitable[T], timeout: float, store: object) -> T:
    """Run ``call`` as a task and stop waiting for it after ``timeout``; it is cancelled and left to finish."""
    inner = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((inner,), timeout=timeout)
    except asyncio.CancelledError:  # the request itself was cancelled: so is its store call
        inner.cancel()
        inner.add_done_callback(_retrieve)
        raise
    if not done:
        inner.cancel()
        inner.add_done_callback(_retrieve)
        raise BackendUnavailableError(f"{store!r} did not answer within {timeout:g} s.")
    return inner.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of an abandoned call, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _uncancel(task: asyncio.Task[object]) -> None:
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the task no longer counts as being cancelled
    if uncancel is not None:
        uncancel()


async def bounded(call: Awaitable[T], timeout: float | None, store: object) -> T:
    """Await ``call``; past ``timeout`` seconds cancel it and raise :class:`BackendUnavailableError`.

    ``timeout=None``, or a ``store`` whose ``waits`` is ``False`` (it never waits on anything), awaits
    without a bound. ``store`` names what did not answer in the error (its
    ``repr``, which never shows a password). A call made while the same task already awaits a bounded
    call runs under that outer bound. A cancellation that does not come from the bound (the request's
    own task being cancelled) propagates unchanged.
    """
    if timeout is None or not getattr(store, "waits", True):
        return await call
    if not getattr(store, "prompt_cancellation", True):
        return await _abandoning(call, timeout, store)
    found: _Watchdog | None = getattr(_local, "watchdog", None)
    task: asyncio.Task[object] | None = None if found is None else _current_task(found.loop)
    if found is None or task is None:  # no watchdog in this thread yet, or of a loop it no longer runs
        found = _watchdog()
        task = _current_task(found.loop)
        if task is None:
            return await call
    watchdog = found
    deadlines = watchdog.deadlines
    if task in deadlines:
        return await call
    # The first tick may come at once (the ticker is already running), so two ticks more than the bound
    # holds: the call is cancelled between timeout and timeout + 2 * TICK seconds after it started.
    deadlines[task] = watchdog.tick + int(timeout * _TICKS_PER_SECOND) + 2
    if watchdog.timer is None:
        watchdog.arm()
    try:
        return await call
    except asyncio.CancelledError:
        if task not in watchdog.expired:
            raise
        watchdog.expired.discard(task)
        _uncancel(task)
        raise BackendUnavailableError(f"{store!r} did not answer within {timeout:g} s.") from None
    finally:
        del deadlines[task]
        if task in watchdog.expired:  # the call swallowed the cancellation and ended by itself
            watchdog.expired.discard(task)
            _uncancel(task)
