"""A small asyncio TCP proxy that injects network faults between an app and its store (Redis, PostgreSQL, ...).

In the same process::

    async with FaultProxy("127.0.0.1", 6379) as proxy:       # listens on a free 127.0.0.1 port
        url = f"redis://127.0.0.1:{proxy.port}/13"            # point the app here
        proxy.latency(3.0)       # every chunk, either way, waits 3 s before it is forwarded
        proxy.blackhole()        # accept, read nothing, forward nothing; sockets stay open
        proxy.reset(refuse=True) # RST every connection (SO_LINGER 0), and every new one until normal()
        proxy.cut(keep=5)        # the next server->client chunk: forward 5 bytes, then close that link
        proxy.bandwidth(2000)    # at most 2000 bytes/s each way, all links together
        proxy.normal()           # all of the above off; whatever they held back is forwarded now

From another process, run the proxy standalone with a control port and send it one-line commands::

    python -m tests.faultproxy serve --upstream 127.0.0.1:6379 --control-port 0
        # prints {"port": ..., "control_port": ...} on one line, then runs until SIGINT/SIGTERM
    python -m tests.faultproxy send --control-port PORT latency 3

The commands are those of :meth:`FaultProxy.command`: ``normal``, ``latency SECONDS``, ``blackhole``,
``reset [refuse]``, ``cut [KEEP|half] [COUNT|all]``, ``bandwidth BYTES_PER_SECOND|off``, ``status``.

How the faults behave:

- Faults combine (latency and a bandwidth limit, say); each setter changes only its own fault, and
  :meth:`FaultProxy.normal` clears them all.
- A black hole stops reading: bytes wait in the kernel's socket buffers, as in a network partition, and a
  chunk already read waits in the proxy. Connections accepted meanwhile are not connected upstream yet.
  When the black hole ends everything held back flows again, in order, unless that link was reset.
- Latency is per chunk and per direction: a chunk is forwarded ``seconds`` after it was read; the next
  read waits for that, so under sustained traffic a chunk can wait up to twice as long. Lowering the
  latency (or :meth:`~FaultProxy.normal`) releases the chunks that have waited long enough at once.
- The bandwidth limit is shared by all links, per direction: each slice of about 50 ms worth of bytes
  reserves its time on the "wire" and is forwarded when that time is over.
- A cut applies to the next server->client chunks (``count`` of them, or all until :meth:`normal`): the
  first ``keep`` bytes (half by default, never the whole chunk) are forwarded, then that link is closed
  (FIN to the client, the upstream connection dropped).
- A reset sends RST on both sides of every link; with ``refuse`` every new connection is accepted and
  reset at once (the port stays ours) until :meth:`normal`.

Nothing is left behind: :meth:`FaultProxy.close` (or leaving ``async with``) closes the listening sockets,
aborts every link and awaits every task the proxy started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

__all__ = ["FaultProxy", "ProxyStats", "send_command"]

HOST = "127.0.0.1"
#: Largest read from either side, in bytes.
CHUNK = 65536
#: Seconds the proxy waits for the upstream server to accept a connection before resetting the client.
UPSTREAM_CONNECT_TIMEOUT = 5.0
#: With a bandwidth limit, bytes go out in slices of this many seconds' worth.
BANDWIDTH_SLICE = 0.05
#: Seconds a link that ends cleanly gets to flush what it still has to write before it is aborted.
FLUSH_TIMEOUT = 1.0


class Direction(enum.Enum):
    """Which way a chunk travels."""

    UP = "client->server"
    DOWN = "server->client"


@dataclass
class ProxyStats:
    """Counters since the proxy started."""

    #: Connections accepted and connected upstream (or waiting in a black hole to be).
    accepted: int = 0
    #: Connections reset at accept time because of ``reset(refuse=True)``.
    refused: int = 0
    #: Links reset by :meth:`FaultProxy.reset`.
    reset: int = 0
    #: Server->client chunks cut short.
    cut: int = 0
    #: Connections reset because the upstream server could not be reached.
    upstream_failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def _send_rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket so that the peer gets RST rather than FIN (SO_LINGER on with a 0 timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _finish(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` after flushing it (bounded by :data:`FLUSH_TIMEOUT`), then make sure it is gone."""
    if not writer.transport.is_closing():
        writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), FLUSH_TIMEOUT)
    writer.transport.abort()


class _Link:
    """One client connection and, once made, its upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.was_reset = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client_writer] + ([self.upstream_writer] if self.upstream_writer is not None else [])

    def send_rst(self) -> None:
        self.was_reset = True
        for writer in self.writers():
            _send_rst(writer)


class FaultProxy:
    """A TCP proxy on ``host:port`` (a free port by default) forwarding to ``upstream_host:upstream_port``.

    Start it with ``async with`` or :meth:`start`, stop it with :meth:`close`. The fault setters are plain
    methods: they take effect at once for every link, current and future. With ``control_port`` (0 for a
    free one) it also accepts one-line commands (:meth:`command`) on that port, for another process.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = HOST,
        port: int = 0,
        control_port: int | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.control_port = control_port
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._control: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Faults in force.
        self._latency = 0.0
        self._blackhole = False
        self._refuse = False
        self._cut_keep: int | None = None
        self._cuts_left = 0  # chunks still to cut; -1: every chunk until normal()
        self._bandwidth: float | None = None
        self._wire_free_at = {Direction.UP: 0.0, Direction.DOWN: 0.0}
        # Set, and replaced by a fresh event, whenever a fault changes: whatever waits on a fault wakes up.
        self._changed = asyncio.Event()

    # -- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Listen (and listen for commands, with ``control_port``); return the proxy."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._closed = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.control_port is not None:
            self._control = await asyncio.start_server(self._accept_control, self.host, self.control_port)
            self.control_port = self._control.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, abort every link and await every task the proxy started; safe to call twice."""
        self._closed = True
        servers = [server for server in (self._server, self._control) if server is not None]
        self._server = self._control = None
        for server in servers:
            server.close()
        self._notify()
        tasks: list[asyncio.Task[None]] = []
        for link in list(self._links):
            for writer in link.writers():
                writer.transport.abort()
            if link.task is not None:
                link.task.cancel()
                tasks.append(link.task)
        for task in list(self._control_tasks):
            task.cancel()
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports run their connection_lost callbacks

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        return self.host, self.port

    @property
    def active_links(self) -> int:
        """How many client connections are open right now."""
        return len(self._links)

    # -- faults -----------------------------------------------------------------------------------------

    def normal(self) -> None:
        """Clear every fault: forward everything at once, with nothing lost that was not reset or cut."""
        self._latency = 0.0
        self._blackhole = self._refuse = False
        self._cuts_left, self._cut_keep = 0, None
        self._bandwidth = None
        self._wire_free_at = {Direction.UP: 0.0, Direction.DOWN: 0.0}
        self._notify()

    def latency(self, seconds: float) -> None:
        """Forward each chunk, either way, ``seconds`` after it was read (0 to stop)."""
        if seconds < 0:
            raise ValueError(f"latency must not be negative, not {seconds!r}")
        self._latency = float(seconds)
        self._notify()

    def blackhole(self, on: bool = True) -> None:
        """Accept connections but read and forward nothing, keeping every socket open, until turned off."""
        self._blackhole = on
        self._notify()

    def reset(self, *, refuse: bool = False) -> None:
        """Reset every link (RST to the client and to the server); with ``refuse``, reset new ones too."""
        self._refuse = refuse
        for link in list(self._links):
            self.stats.reset += 1
            link.send_rst()
            if link.task is not None:
                link.task.cancel()
        self._notify()

    def cut(self, keep: int | None = None, count: int | None = 1) -> None:
        """Cut the next ``count`` server->client chunks (``None``: all until :meth:`normal`) after ``keep`` bytes.

        ``keep`` defaults to half the chunk; it is never the whole chunk. The link of a cut chunk is closed.
        """
        if keep is not None and keep < 0:
            raise ValueError(f"keep must not be negative, not {keep!r}")
        if count is not None and count < 0:
            raise ValueError(f"count must not be negative, not {count!r}")
        self._cut_keep = keep
        self._cuts_left = -1 if count is None else count
        self._notify()

    def bandwidth(self, bytes_per_second: float | None) -> None:
        """Limit each direction to ``bytes_per_second``, all links together (``None`` to lift the limit)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bandwidth must be positive, not {bytes_per_second!r}")
        self._bandwidth = None if bytes_per_second is None else float(bytes_per_second)
        self._wire_free_at = {Direction.UP: 0.0, Direction.DOWN: 0.0}
        self._notify()

    def faults(self) -> dict[str, Any]:
        """The faults in force, by name (empty when the proxy forwards normally)."""
        faults: dict[str, Any] = {}
        if self._latency:
            faults["latency"] = self._latency
        if self._blackhole:
            faults["blackhole"] = True
        if self._refuse:
            faults["refuse"] = True
        if self._cuts_left:
            faults["cut"] = {"keep": self._cut_keep, "count": None if self._cuts_left < 0 else self._cuts_left}
        if self._bandwidth is not None:
            faults["bandwidth"] = self._bandwidth
        return faults

    def status(self) -> dict[str, Any]:
        """Faults in force, open links and counters, as JSON-ready data."""
        return {"faults": self.faults(), "links": self.active_links, "stats": asdict(self.stats)}

    def command(self, line: str) -> str:
        """Apply one text command and return the one-line answer (``ok ...`` or ``error ...``).

        ``normal`` | ``latency SECONDS`` | ``blackhole [off]`` | ``reset [refuse]`` |
        ``cut [KEEP|half] [COUNT|all]`` | ``bandwidth BYTES_PER_SECOND|off`` | ``status`` (answers JSON).
        """
        words = line.split()
        if not words:
            return "error empty command"
        name, args = words[0].lower(), words[1:]
        try:
            if name == "status" and not args:
                return "ok " + json.dumps(self.status(), sort_keys=True)
            if name == "normal" and not args:
                self.normal()
            elif name == "latency" and len(args) == 1:
                self.latency(float(args[0]))
            elif name == "blackhole" and args in ([], ["on"], ["off"]):
                self.blackhole(args != ["off"])
            elif name == "reset" and args in ([], ["refuse"]):
                self.reset(refuse=bool(args))
            elif name == "cut" and len(args) <= 2:
                keep = None if not args or args[0] == "half" else int(args[0])
                count: int | None = 1
                if len(args) == 2:
                    count = None if args[1] == "all" else int(args[1])
                self.cut(keep, count)
            elif name == "bandwidth" and len(args) == 1:
                self.bandwidth(None if args[0] == "off" else float(args[0]))
            else:
                return f"error unknown command {line.strip()!r}"
        except ValueError as exc:
            return f"error {exc}"
        return "ok " + json.dumps(self.faults(), sort_keys=True)

    # -- waiting on faults --------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float | None = None) -> None:
        """Wait until a fault changes, or ``timeout`` seconds."""
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    async def _through_blackhole(self) -> None:
        while self._blackhole and not self._closed:
            await self._wait_change()

    async def _wait_latency(self, read_at: float) -> None:
        """Wait until the latency in force (read again whenever a fault changes) has passed since ``read_at``."""
        loop = asyncio.get_running_loop()
        while (remaining := read_at + self._latency - loop.time()) > 0:
            await self._wait_change(remaining)

    async def _wait_until(self, deadline: float, still: Callable[[], bool]) -> None:
        """Wait until the loop's clock reaches ``deadline``, or ``still()`` turns false."""
        loop = asyncio.get_running_loop()
        while still() and (remaining := deadline - loop.time()) > 0:
            await self._wait_change(remaining)

    # -- links ----------------------------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server's callback: a plain function, so that every task is one the proxy owns."""
        link = _Link(reader, writer)
        if self._closed:
            writer.transport.abort()
            return
        if self._refuse:
            self.stats.refused += 1
            _send_rst(writer)
            return
        self.stats.accepted += 1
        self._links.add(link)
        link.task = asyncio.get_running_loop().create_task(self._run(link))
        link.task.add_done_callback(lambda _task: self._links.discard(link))

    async def _run(self, link: _Link) -> None:
        pumps: list[asyncio.Task[bool]] = []
        clean = False
        try:
            await self._through_blackhole()  # a black hole connects nowhere
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.upstream), UPSTREAM_CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError):
                self.stats.upstream_failures += 1
                _send_rst(link.client_writer)
                return
            link.upstream_writer = upstream_writer
            loop = asyncio.get_running_loop()
            pumps = [
                loop.create_task(self._pump(link.client_reader, upstream_writer, Direction.UP)),
                loop.create_task(self._pump(upstream_reader, link.client_writer, Direction.DOWN)),
            ]
            pending: set[asyncio.Task[bool]] = set(pumps)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(task.result() for task in done):  # the link is over: an error or a cut
                    break
            else:
                clean = True  # both sides closed in turn; flush what is left
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in link.writers():
                if clean and not link.was_reset:
                    await _finish(writer)
                else:
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction) -> bool:
        """Forward one direction until it ends; return whether the whole link must end now."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._through_blackhole()
                data = await reader.read(CHUNK)
                if not data:  # pass the half-close on; the other direction goes on
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return False
                read_at = loop.time()
                await self._through_blackhole()  # a chunk read just before the black hole waits with it
                await self._wait_latency(read_at)
                if direction is Direction.DOWN and self._take_cut():
                    keep = len(data) // 2 if self._cut_keep is None else self._cut_keep
                    keep = max(0, min(keep, len(data) - 1))
                    self.stats.cut += 1
                    self.stats.bytes_down += keep
                    writer.write(data[:keep])
                    await _finish(writer)
                    return True
                await self._send(writer, data, direction)
        except OSError:  # ConnectionResetError, BrokenPipeError, ...: take the other side down too
            return True

    def _take_cut(self) -> bool:
        if self._cuts_left == 0:
            return False
        if self._cuts_left > 0:
            self._cuts_left -= 1
        return True

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, direction: Direction) -> None:
        loop = asyncio.get_running_loop()
        while data:
            rate = self._bandwidth
            if rate is None:
                piece, data = data, b""
            else:
                size = max(1, int(rate * BANDWIDTH_SLICE))
                piece, data = data[:size], data[size:]
                done_at = max(loop.time(), self._wire_free_at[direction]) + len(piece) / rate
                self._wire_free_at[direction] = done_at
                await self._wait_until(done_at, lambda: self._bandwidth is not None)
            writer.write(piece)
            if direction is Direction.UP:
                self.stats.bytes_up += len(piece)
            else:
                self.stats.bytes_down += len(piece)
            await writer.drain()

    # -- the control port -----------------------------------------------------------------------------------

    def _accept_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._serve_control(reader, writer))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((self.command(line.decode("utf-8", "replace")) + "\n").encode())
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


async def send_command(port: int, command: str, *, host: str = HOST, timeout: float = 5.0) -> str:
    """Send one command to a proxy's control port and return its answer (without the newline)."""

    async def exchange() -> str:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(command.strip().encode() + b"\n")
            await writer.drain()
            return (await reader.readline()).decode().rstrip("\n")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout)


# -- standalone ---------------------------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or HOST, int(port)


async def _serve(upstream: tuple[str, int], port: int, control_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with FaultProxy(*upstream, port=port, control_port=control_port) as proxy:
            print(json.dumps({"port": proxy.port, "control_port": proxy.control_port}), flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` a proxy until SIGINT/SIGTERM, or ``send`` one command to a running one."""
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    serve = commands.add_parser("serve", help="run a proxy; prints its ports as JSON on the first line")
    serve.add_argument("--upstream", required=True, type=_host_port, help="HOST:PORT to forward to")
    serve.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    serve.add_argument("--control-port", type=int, default=0, help="port for commands (default: a free one)")
    send = commands.add_parser("send", help="send one command to a running proxy and print the answer")
    send.add_argument("--control-port", type=int, required=True)
    send.add_argument("words", nargs="+", help="the command, e.g. latency 3")
    args = parser.parse_args(argv)
    if args.action == "serve":
        asyncio.run(_serve(args.upstream, args.port, args.control_port))
        return 0
    answer = asyncio.run(send_command(args.control_port, " ".join(args.words)))
    print(answer)
    return 0 if answer.startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
