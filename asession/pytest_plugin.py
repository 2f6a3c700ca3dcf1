"""asession's pytest plugin: fixtures for testing apps that keep sessions with asession.

pytest loads it by itself once asession is installed (the ``pytest11`` entry point ``asession``);
``-p no:asession`` turns it off. It defines:

``asession_backend``
    An open :class:`~asession.backends.memory.MemoryBackend`, empty, closed after the test. Hand it to
    the app under test (``SessionMiddleware(app, backend=asession_backend)``) and to
    :mod:`asession.testing`. Being open before the app starts, it stays the test's: the middleware
    neither reopens nor closes it, so what the test stored is still there after the app shut down
    (the end of ``with TestClient(app)``). Override the fixture in a ``conftest.py`` to test on
    another backend.

The fixture is synchronous, so sync tests (Starlette's ``TestClient``) and async tests under any
runner (pytest-asyncio in strict or auto mode, anyio's plugin) can use it alike: opening and closing a
memory store never waits, and is run to completion on the spot, without an event loop.

This module imports nothing of asession until a fixture runs: pytest imports every plugin at startup,
in every project of the environment, before a coverage plugin starts measuring.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from asession.backends.memory import MemoryBackend

__all__ = ["asession_backend"]

T = TypeVar("T")


@pytest.fixture
def asession_backend() -> Iterator[MemoryBackend]:
    """An open, empty :class:`~asession.backends.memory.MemoryBackend`, closed after the test."""
    from asession.backends.memory import MemoryBackend

    backend = MemoryBackend()
    _run_at_once(backend.open())
    try:
        yield backend
    finally:
        _run_at_once(backend.close())


def _run_at_once(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (no I/O, no event loop involved) and return its result.

    Raises ``RuntimeError`` if it suspends after all, rather than leave it half done.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError(f"{coroutine!r} waited for an event loop; it cannot run inside a synchronous fixture.")
