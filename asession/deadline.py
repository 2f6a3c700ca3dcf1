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
ends within ``timeout + TICK`` seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

from asession.exceptions import BackendUnavailableError

__all__ = ["TICK", "bounded"]

T = TypeVar("T")

#: Seconds between two checks of the watchdog: how late past its bound a call may be cancelled.
TICK = 0.05


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

    def due(self, timeout: float) -> int:
        # The first tick may come at once (the ticker is already running), so one more tick than the
        # bound holds: a call is cancelled between timeout and timeout + TICK seconds after it started.
        return self.tick + math.ceil(timeout / TICK) + 1

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


# The watchdog of the loop seen last. Each bounded() call keeps a reference to the watchdog it registered
# with, so a process that alternates between loops (a test client's thread) only builds one more.
_current: _Watchdog | None = None


def _watchdog() -> _Watchdog:
    global _current
    loop = asyncio.get_running_loop()
    watchdog = _current
    if watchdog is None or watchdog.loop is not loop:
        watchdog = _current = _Watchdog(loop)
    return watchdog


def _uncancel(task: asyncio.Task[object]) -> None:
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the task no longer counts as being cancelled
    if uncancel is not None:
        uncancel()


async def bounded(call: Awaitable[T], timeout: float | None, store: object) -> T:
    """Await ``call``; past ``timeout`` seconds cancel it and raise :class:`BackendUnavailableError`.

    ``timeout=None`` awaits without a bound. ``store`` names what did not answer in the error (its
    ``repr``, which never shows a password). A call made while the same task already awaits a bounded
    call runs under that outer bound. A cancellation that does not come from the bound (the request's
    own task being cancelled) propagates unchanged.
    """
    if timeout is None:
        return await call
    watchdog = _watchdog()
    task: asyncio.Task[object] | None = asyncio.current_task()
    deadlines = watchdog.deadlines
    if task is None or task in deadlines:
        return await call
    deadlines[task] = watchdog.due(timeout)
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
