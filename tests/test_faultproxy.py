"""tests/faultproxy.py: each fault does what it says, and the proxy leaves no task or socket behind.

Most tests put the proxy in front of a small echo server of their own (``reply`` turns it into a server that
answers every chunk with fixed bytes); one talks to the real Redis. Every wait is bounded by ``wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faultproxy import FaultProxy, send_command
from tests.multiprocess_app import REPO_ROOT, free_port

#: Seconds any single step of a test may take before the test fails instead of hanging.
STEP = 5.0


class EchoServer:
    """A TCP server on 127.0.0.1 that echoes what it reads, or answers each chunk with ``reply``."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.port = 0
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                self.received += data
                writer.write(self.reply if self.reply is not None else data)
                await writer.drain()
        writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        yield proxy


class Client:
    """One connection to the proxy, with bounded reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, proxy: FaultProxy) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*proxy.address), STEP)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_exactly(self, size: int, timeout: float = STEP) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), timeout)

    async def read_to_eof(self, timeout: float = STEP) -> bytes:
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def roundtrip(self, data: bytes) -> bytes:
        await self.send(data)
        return await self.read_exactly(len(data))

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """A list the test appends its clients to; all are closed at the end."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()
    await asyncio.sleep(0)


async def connect(proxy: FaultProxy, clients: list[Client]) -> Client:
    client = await Client.connect(proxy)
    clients.append(client)
    return client


async def test_normal_proxy_forwards_both_ways(proxy: FaultProxy, clients: list[Client]) -> None:
    """Without faults, bytes go through both ways unchanged and are counted."""
    client = await connect(proxy, clients)
    assert await client.roundtrip(b"hello") == b"hello"
    assert await client.roundtrip(b"x" * 200_000) == b"x" * 200_000
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == 200_005
    assert proxy.stats.accepted == 1


async def test_latency_delays_each_chunk_both_ways(proxy: FaultProxy, clients: list[Client]) -> None:
    """With latency L a round trip (one chunk up, one down) takes at least 2 L."""
    client = await connect(proxy, clients)
    proxy.latency(0.3)
    started = time.monotonic()
    assert await client.roundtrip(b"ping") == b"ping"
    assert time.monotonic() - started >= 0.59


async def test_latency_lifted_releases_waiting_chunks(proxy: FaultProxy, clients: list[Client]) -> None:
    """Chunks held by a long latency are forwarded as soon as the proxy is back to normal."""
    client = await connect(proxy, clients)
    proxy.latency(60)
    await client.send(b"late")
    with pytest.raises(asyncio.TimeoutError):
        await client.read_exactly(4, timeout=0.3)
    proxy.normal()
    assert await client.read_exactly(4) == b"late"


async def test_blackhole_forwards_nothing_and_keeps_sockets_open(
    proxy: FaultProxy, echo: EchoServer, clients: list[Client]
) -> None:
    """A black hole accepts connections, forwards nothing and closes nothing; normal() lets it all through."""
    old = await connect(proxy, clients)
    assert await old.roundtrip(b"warm") == b"warm"
    proxy.blackhole()
    await old.send(b"held")
    new = await connect(proxy, clients)  # still accepted
    await new.send(b"also held")
    for client in (old, new):
        with pytest.raises(asyncio.TimeoutError):  # neither an answer nor EOF
            await asyncio.wait_for(client.reader.read(1), 0.3)
    assert bytes(echo.received) == b"warm"
    assert proxy.active_links == 2
    proxy.normal()
    assert await old.read_exactly(4) == b"held"
    assert await new.read_exactly(9) == b"also held"


async def test_reset_sends_rst_on_every_link(proxy: FaultProxy, clients: list[Client]) -> None:
    """reset() aborts every open link with RST: the client's next read fails with ECONNRESET."""
    first, second = await connect(proxy, clients), await connect(proxy, clients)
    for client in (first, second):
        assert await client.roundtrip(b"ok") == b"ok"
    proxy.reset()
    for client in (first, second):
        with pytest.raises(ConnectionResetError):
            await client.read_to_eof()
    assert proxy.stats.reset == 2
    third = await connect(proxy, clients)  # without refuse, new connections work
    assert await third.roundtrip(b"again") == b"again"


async def test_reset_with_refuse_resets_new_connections_until_normal(proxy: FaultProxy, clients: list[Client]) -> None:
    """reset(refuse=True) resets each new connection at once; after normal() connections work again."""
    proxy.reset(refuse=True)
    refused = await connect(proxy, clients)
    with pytest.raises(ConnectionResetError):
        await refused.send(b"anyone?")
        await refused.read_to_eof()
    assert proxy.stats.refused == 1
    proxy.normal()
    client = await connect(proxy, clients)
    assert await client.roundtrip(b"back") == b"back"


async def test_cut_forwards_part_of_next_reply_then_closes(echo: EchoServer, clients: list[Client]) -> None:
    """cut(keep=10) forwards 10 bytes of the next server->client chunk, then EOF; later replies are whole."""
    echo.reply = b"R" * 100
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        client = await connect(proxy, clients)
        assert await client.roundtrip(b"?") == b"R"  # one byte of the first reply; the rest stays unread
        await client.read_exactly(99)
        proxy.cut(keep=10)
        await client.send(b"?")
        assert await client.read_to_eof() == b"R" * 10
        assert proxy.stats.cut == 1
        other = await connect(proxy, clients)
        await other.send(b"?")
        assert await other.read_exactly(100) == b"R" * 100


async def test_cut_every_reply_until_normal(echo: EchoServer, clients: list[Client]) -> None:
    """cut(count=None) cuts every reply, on every link, by half until normal()."""
    echo.reply = b"0123456789"
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.cut(count=None)
        for _ in range(3):
            client = await connect(proxy, clients)
            await client.send(b"?")
            assert await client.read_to_eof() == b"01234"
        proxy.normal()
        client = await connect(proxy, clients)
        await client.send(b"?")
        assert await client.read_exactly(10) == b"0123456789"
        assert proxy.stats.cut == 3


async def test_bandwidth_limits_bytes_per_second(proxy: FaultProxy, clients: list[Client]) -> None:
    """At 40 kB/s, 20 kB echoed take at least half a second; normal() lifts the limit at once."""
    client = await connect(proxy, clients)
    proxy.bandwidth(40_000)
    started = time.monotonic()
    assert await client.roundtrip(b"b" * 20_000) == b"b" * 20_000
    assert time.monotonic() - started >= 0.49  # each 2 kB slice waits its 50 ms; the echo streams them back
    proxy.bandwidth(10)
    await client.send(b"c" * 1000)  # 100 s at 10 bytes/s
    with pytest.raises(asyncio.TimeoutError):
        await client.read_exactly(1000, timeout=0.3)
    proxy.normal()
    assert await client.read_exactly(1000) == b"c" * 1000


async def test_unreachable_upstream_resets_client(clients: list[Client]) -> None:
    """A client whose upstream refuses the connection is reset."""
    async with FaultProxy("127.0.0.1", free_port()) as proxy:
        client = await connect(proxy, clients)
        with pytest.raises(ConnectionResetError):
            await client.read_to_eof()
        assert proxy.stats.upstream_failures == 1


async def test_close_leaves_no_tasks_or_listening_socket(echo: EchoServer, clients: list[Client]) -> None:
    """close() with links open, some held in a black hole, ends every task and stops listening."""
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port, control_port=0)
    await proxy.start()
    working = await connect(proxy, clients)
    assert await working.roundtrip(b"1") == b"1"
    proxy.latency(60)
    await working.send(b"2")
    proxy.blackhole()
    await connect(proxy, clients)
    control = Client(*await asyncio.open_connection("127.0.0.1", proxy.control_port))
    clients.append(control)
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() - before  # links, pumps and the control connection
    await asyncio.wait_for(proxy.close(), STEP)
    assert asyncio.all_tasks() <= before
    assert proxy.active_links == 0
    assert await working.read_to_eof() == b""
    assert await control.read_to_eof() == b""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*proxy.address)
    await proxy.close()  # twice is fine


async def test_control_port_commands_switch_faults(proxy: FaultProxy, echo: EchoServer) -> None:
    """A command sent to the control port sets the fault and answers with the faults in force."""
    async with FaultProxy("127.0.0.1", echo.port, control_port=0) as controlled:
        port = controlled.control_port
        assert port
        assert await send_command(port, "latency 2.5") == 'ok {"latency": 2.5}'
        assert await send_command(port, "cut 3 all") == 'ok {"cut": {"count": null, "keep": 3}, "latency": 2.5}'
        assert await send_command(port, "bandwidth 100") == (
            'ok {"bandwidth": 100.0, "cut": {"count": null, "keep": 3}, "latency": 2.5}'
        )
        assert await send_command(port, "reset refuse") == (
            'ok {"bandwidth": 100.0, "cut": {"count": null, "keep": 3}, "latency": 2.5, "refuse": true}'
        )
        assert await send_command(port, "normal") == "ok {}"
        assert await send_command(port, "blackhole") == 'ok {"blackhole": true}'
        status = json.loads((await send_command(port, "status")).removeprefix("ok "))
        assert status["faults"] == {"blackhole": True}
        assert status["stats"]["accepted"] == 0
        assert (await send_command(port, "latency -1")).startswith("error ")
        assert (await send_command(port, "explode")).startswith("error unknown command")


@pytest.fixture
def standalone(echo: EchoServer) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``python -m tests.faultproxy serve`` in front of the echo server; terminated (then killed) afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faultproxy", "serve", "--upstream", f"127.0.0.1:{echo.port}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ports: dict[str, int] = json.loads(process.stdout.readline())
        yield process, ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=STEP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STEP)
        if process.stdout is not None:
            process.stdout.close()


async def test_standalone_proxy_obeys_commands_from_another_process(
    standalone: tuple[subprocess.Popen[str], dict[str, int]], clients: list[Client]
) -> None:
    """The standalone proxy forwards, takes commands from ``send``, and exits 0 on SIGTERM."""
    process, ports = standalone
    client = Client(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports["port"]), STEP))
    clients.append(client)
    assert await client.roundtrip(b"via process") == b"via process"
    send = [sys.executable, "-m", "tests.faultproxy", "send", "--control-port", str(ports["control_port"])]
    answer = await asyncio.to_thread(subprocess.run, [*send, "reset"], cwd=REPO_ROOT, capture_output=True, timeout=30)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.decode().startswith("ok")
    with pytest.raises(ConnectionResetError):
        await client.read_to_eof()
    process.terminate()
    assert await asyncio.to_thread(process.wait, STEP) == 0


@pytest.mark.redis
async def test_redis_reply_cut_mid_way_ends_the_connection(redis_url: str, clients: list[Client]) -> None:
    """Through the proxy Redis answers PING; with a cut the client gets part of the reply and then EOF."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        client = await connect(proxy, clients)
        await client.send(b"PING\r\n")
        assert await client.read_exactly(7) == b"+PONG\r\n"
        proxy.cut(keep=3)
        await client.send(b"PING\r\n")
        assert await client.read_to_eof() == b"+PO"
