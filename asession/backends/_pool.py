"""The connection pool both of asession's own clients share (Redis in ``_redis.py``, memcached in ``_memcached.py``).

A client keeps up to ``max_connections`` connections and pipelines commands over them: a command goes to an
idle connection, else to the least busy one, and another connection is opened in the background while there
are fewer than the maximum. One connection is opened at a time; callers that find none wait for it.

After a failed connection attempt the pool backs off: the next attempt comes after :data:`BACKOFF_BASE`
seconds, doubling per failure in a row up to :data:`BACKOFF_MAX`, each wait jittered down to half (so many
workers do not reconnect in step), and commands in the meantime fail at once instead of each dialling a
server that is down. A connection is pooled only once its client's setup (handshake, first round trip)
succeeded, and never after the client was closed. :class:`PipelinedConnection` holds what both clients'
connections share; among it, a server that stops reading fails the connection instead of filling the worker's
memory.
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sized
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

__all__ = ["BACKOFF_BASE", "BACKOFF_MAX", "MAX_WRITE_BUFFER", "ConnectionPool", "PipelinedConnection"]

#: Seconds before the first retry after a failed connection attempt; doubled per failure in a row.
BACKOFF_BASE = 0.05
#: The longest wait between two connection attempts, in seconds.
BACKOFF_MAX = 2.0
#: The most a connection buffers unsent before it counts as failed: asyncio's transport would buffer
#: without end for a server that stops reading.
MAX_WRITE_BUFFER = 8 * 1024 * 1024


class PooledConnection(Protocol):
    """What the pool needs of a connection: its commands in flight, whether it failed, and how to fail it."""

    @property
    def waiters(self) -> Sized: ...

    @property
    def closed(self) -> bool: ...

    def fail(self, exc: Exception) -> None: ...


C = TypeVar("C", bound=PooledConnection)


W = TypeVar("W")


class PipelinedConnection(asyncio.Protocol, ABC, Generic[W]):
    """One socket of a pool: commands written in order, replies matched to a FIFO of waiter entries.

    What both clients' connections share: the write of the commands queued in one loop iteration, the
    reply timeout (``socket_timeout`` without any reply while commands wait), and failing every command in
    flight at once. Each client's connection adds its own ``send`` (the hot path, kept free of extra calls)
    and ``data_received`` (its protocol's parser); a waiter entry is a future, or a tuple starting with one.
    """

    def __init__(self, pool: ConnectionPool[Any], loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._client = pool
        self._loop = loop
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self.waiters: deque[W] = deque()
        self._buffer = bytearray()
        self._out: list[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self.closed = False

    @staticmethod
    @abstractmethod
    def _future_of(entry: W) -> asyncio.Future[Any]:
        """The future a waiter entry resolves."""

    def _where(self) -> str:
        return f"{self._client.server} at {self._client.address}"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._last_activity = self._loop.time()

    def silent_for(self) -> float:
        """Seconds since this connection last sent a command to an idle server or received anything."""
        return self._loop.time() - self._last_activity

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self.fail(ConnectionError(f"the connection to {self._where()} was lost{reason}"))

    def _flush(self) -> None:
        out, self._out = self._out, None
        # A closing transport is about to report connection_lost(), which fails the waiting commands.
        transport = self._transport
        if out and not self.closed and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.fail(
                    ConnectionError(
                        f"{self._where()} stopped reading: over {MAX_WRITE_BUFFER} bytes of commands are waiting "
                        "to be sent"
                    )
                )

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.waiters or self.closed or self._timeout is None:
            return
        idle = self._loop.time() - self._last_activity
        if idle >= self._timeout * 0.999:
            self.fail(TimeoutError(f"{self._where()} sent no reply within {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_later(self._timeout - idle, self._check_timeout)

    def fail(self, exc: Exception) -> None:
        """Fail every command in flight with ``exc`` and drop the connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._client._forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self.waiters = self.waiters, deque()
        self._buffer = bytearray()
        for entry in waiters:
            future = self._future_of(entry)
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


class ConnectionPool(ABC, Generic[C]):
    """Connections to one server, opened on demand with backoff; subclasses open and set up one connection."""

    #: How errors name the server: ``"Redis"``, ``"memcached"``.
    server: ClassVar[str]

    def __init__(self, address: str, max_connections: int) -> None:
        self.address = address
        self._max_connections = max_connections
        self._connections: list[C] = []
        self._connecting: asyncio.Task[C] | None = None
        self.closed = False
        #: Connection attempts failed in a row, when the next may start (loop time), and why the last failed.
        self._failed_attempts = 0
        self._retry_at = 0.0
        self._last_error: BaseException | None = None

    @abstractmethod
    async def _open_connection(self) -> C:
        """Open and set up one connection, failing it (and raising) when the server does not answer right."""

    async def open(self) -> None:
        """Connect once now, so a wrong address, password or server fails here rather than later."""
        self.closed = False
        self._retry_at = 0.0  # an explicit open() tries now, whatever the backoff
        if not self._connections:
            await self._connection()

    async def close(self) -> None:
        """Drop every connection; commands in flight fail with :class:`ConnectionError` (idempotent)."""
        self.closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        for connection in list(self._connections):
            connection.fail(ConnectionError(f"the {self.server} client was closed"))

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _forget(self, connection: C) -> None:
        try:
            self._connections.remove(connection)
        except ValueError:
            pass

    def _pick(self) -> C | None:
        """An idle connection, else the least busy one; start another while below max_connections."""
        best: C | None = None
        for connection in self._connections:
            if not connection.waiters:
                return connection
            if best is None or len(connection.waiters) < len(best.waiters):
                best = connection
        if (
            len(self._connections) < self._max_connections
            and self._connecting is None
            and not self.closed
            and not (self._retry_at and self._backing_off())
        ):
            self._start_connecting()
        return best

    def _start_connecting(self) -> asyncio.Task[C]:
        task = asyncio.get_running_loop().create_task(self._connect())
        self._connecting = task
        task.add_done_callback(self._connected)
        return task

    def _connected(self, task: asyncio.Task[C]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled():
            return
        error = task.exception()  # retrieved here; whoever awaits the task gets it too
        if error is None:
            self._failed_attempts = 0
            self._retry_at = 0.0
            return
        self._failed_attempts += 1
        self._last_error = error
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self._failed_attempts - 1)) * random.uniform(0.5, 1.0)
        self._retry_at = task.get_loop().time() + delay

    def _backing_off(self) -> bool:
        return self._retry_at > 0.0 and asyncio.get_running_loop().time() < self._retry_at

    async def _connection(self) -> C:
        """The connection being opened, or a new one (callers found none to send on)."""
        if self.closed:
            raise ConnectionError(f"the {self.server} client is closed")
        if self._connecting is None and self._backing_off():
            wait = self._retry_at - asyncio.get_running_loop().time()
            raise ConnectionError(
                f"{self.server} at {self.address} could not be reached ({self._last_error!r}); the next attempt "
                f"is in {wait:.2f} s"
            )
        task = self._connecting or self._start_connecting()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self.closed:  # close() stopped the attempt; this caller was not cancelled
                raise ConnectionError(f"the {self.server} client was closed") from None
            raise

    async def _connect(self) -> C:
        connection = await self._open_connection()
        if self.closed:  # close() ran while this connection was being set up: it would never be closed
            connection.fail(ConnectionError(f"the {self.server} client was closed"))
            raise ConnectionError(f"the {self.server} client was closed")
        self._connections.append(connection)
        return connection
