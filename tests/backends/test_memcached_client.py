"""asession's own memcached client (asession/backends/_memcached.py).

- URL options, key checks, TTLs and the reply parser fed in every possible cut.
- A fake memcached on 127.0.0.1 for what a real server will not do on demand: answer late, answer for
  another key, cut a reply, send garbage, close at once.
- Private ``memcached`` processes (never the shared one, which other runs flush) for the real commands,
  pipelining, a restart and an oversized item.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from asession.backends import _memcached
from asession.backends._memcached import (
    MemcachedClient,
    MemcachedError,
    MemcachedOptions,
    ProtocolError,
    parse_url,
)
from asession.backends._pool import BACKOFF_BASE
from tests.servers import free_port, require_executable

DAY = 86400


# -- URLs ----------------------------------------------------------------------------------------------------


def test_parse_url_defaults() -> None:
    """A bare URL means 127.0.0.1:11211, 5-second timeouts, 4 connections and a 4 MiB value limit."""
    options = parse_url("memcached://")
    assert options == MemcachedOptions()
    assert (options.host, options.port) == ("127.0.0.1", 11211)
    assert options.socket_timeout == options.socket_connect_timeout == 5.0
    assert options.max_connections == _memcached.DEFAULT_MAX_CONNECTIONS
    assert options.max_value_size == 4 * 1024 * 1024


def test_parse_url_reads_every_option() -> None:
    """Host, port and each query option land in the options; pool_size is max_connections under aiocache's name."""
    options = parse_url(
        "memcached://cache.example:11311?socket_timeout=0.5&socket_connect_timeout=none&max_value_size=1024"
    )
    assert (options.host, options.port) == ("cache.example", 11311)
    assert options.socket_timeout == 0.5 and options.socket_connect_timeout is None
    assert options.max_value_size == 1024
    assert parse_url("memcached://h?pool_size=7").max_connections == 7
    assert parse_url("memcached://h/?max_connections=3").max_connections == 3


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1",
        "memcached://127.0.0.1:port",
        "memcached://user:secret@127.0.0.1",
        "memcached://:secret@127.0.0.1",
        "memcached://127.0.0.1/0",
        "memcached://127.0.0.1?no_such_option=1",
        "memcached://127.0.0.1?pool_size=0",
        "memcached://127.0.0.1?pool_size=many",
        "memcached://127.0.0.1?socket_timeout=soon",
        "memcached://127.0.0.1?socket_timeout=-1",
        "memcached://127.0.0.1?max_value_size=0",
    ],
)
def test_parse_url_rejects(url: str) -> None:
    """Other schemes, passwords, paths, unknown options and bad values are refused with ValueError."""
    with pytest.raises(ValueError):
        parse_url(url)


# -- keys, TTLs and the reply parser -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "a b", "tab\tkey", "new\nline", "del\x7f", "caf\u00e9", "k" * 251])
def test_bad_key_raises_value_error(key: str) -> None:
    """Keys memcached would misread (empty, spaces, control characters, non-ASCII, over 250 bytes) are refused."""
    client = MemcachedClient(MemcachedOptions())
    with pytest.raises(ValueError, match="not a memcached key"):
        client.get(key)
    with pytest.raises(ValueError, match="not a memcached key"):
        client.set(key, b"v", 10)


def test_key_of_250_printable_characters_is_accepted() -> None:
    assert _memcached._key("asession:" + "k" * 241) == b"asession:" + b"k" * 241
    assert _memcached._key("~!{}") == b"~!{}"


def test_exptime_turns_long_ttls_into_unix_times() -> None:
    """Up to 30 days a TTL is sent as it is; above, as time.time() + ttl, which memcached reads as a date."""
    assert _memcached._exptime(0) == 0
    assert _memcached._exptime(3600) == 3600
    assert _memcached._exptime(30 * DAY) == 30 * DAY
    now = int(time.time())
    assert now + 40 * DAY <= _memcached._exptime(40 * DAY) <= now + 40 * DAY + 2


def test_value_larger_than_the_limit_raises_value_error() -> None:
    """A value that could not be read back under max_value_size is refused before it is sent."""
    client = MemcachedClient(MemcachedOptions(max_value_size=10))
    with pytest.raises(ValueError, match="exceeds max_value_size"):
        client.set("k", b"x" * 11, 10)


G, GS, ST, CA, DE, TO, VE = (
    _memcached._GET,
    _memcached._GETS,
    _memcached._STORE,
    _memcached._CAS,
    _memcached._DELETE,
    _memcached._TOUCH,
    _memcached._VERSION,
)
REPLIES: list[tuple[int, bytes, Any]] = [
    (G, b"END\r\n", None),
    (G, b"VALUE k 0 5\r\nhello\r\nEND\r\n", b"hello"),
    (G, b"VALUE k 7 0\r\n\r\nEND\r\n", b""),
    (G, b"VALUE k 0 9\r\nEND\r\na\r\nb\r\nEND\r\n", b"END\r\na\r\nb"),
    (GS, b"VALUE k 0 2\r\nhi\r\nEND\r\n".replace(b" 2\r", b" 2 42\r"), (b"hi", 42)),
    (GS, b"END\r\n", None),
    (ST, b"STORED\r\n", True),
    (ST, b"NOT_STORED\r\n", False),
    (CA, b"STORED\r\n", True),
    (CA, b"EXISTS\r\n", False),
    (CA, b"NOT_FOUND\r\n", None),
    (DE, b"DELETED\r\n", True),
    (DE, b"NOT_FOUND\r\n", False),
    (TO, b"TOUCHED\r\n", True),
    (TO, b"NOT_FOUND\r\n", False),
    (VE, b"VERSION 1.6.18\r\n", "1.6.18"),
]


@pytest.mark.parametrize(("kind", "wire", "value"), REPLIES)
def test_parse_every_cut(kind: int, wire: bytes, value: Any) -> None:
    """Each reply parses whole, also after other data, and every proper prefix of it asks for more data."""
    limit = _memcached.DEFAULT_MAX_VALUE_SIZE
    assert _memcached._parse(wire, 0, kind, b"k", limit) == (value, len(wire))
    assert _memcached._parse(bytearray(b"junk" + wire), 4, kind, b"k", limit) == (value, len(wire) + 4)
    for cut in range(len(wire)):
        assert _memcached._parse(wire[:cut], 0, kind, b"k", limit)[1] == _memcached._INCOMPLETE


@pytest.mark.parametrize(
    "wire", [b"ERROR\r\n", b"CLIENT_ERROR bad command line\r\n", b"SERVER_ERROR out of memory\r\n"]
)
@pytest.mark.parametrize("kind", [G, GS, ST, CA, DE, TO, VE])
def test_parse_error_reply_is_returned_not_raised(kind: int, wire: bytes) -> None:
    """ERROR, CLIENT_ERROR and SERVER_ERROR answer any command as a MemcachedError, consuming their line."""
    error, end = _memcached._parse(wire, 0, kind, b"k", 100)
    assert isinstance(error, MemcachedError) and not isinstance(error, ProtocolError)
    assert str(error) == wire[:-2].decode() and end == len(wire)


@pytest.mark.parametrize(
    ("kind", "wire", "match"),
    [
        (G, b"VALUE other 0 1\r\nx\r\nEND\r\n", "with the value of b'other'"),
        (GS, b"VALUE kk 0 1 5\r\nx\r\nEND\r\n", "with the value of b'kk'"),
        (G, b"VALUE k 0 101\r\n", "exceeds the limit of 100 bytes"),
        (G, b"VALUE k 0 1 5\r\nx\r\nEND\r\n", "malformed"),  # a gets reply to a get
        (GS, b"VALUE k 0 1\r\nx\r\nEND\r\n", "malformed"),
        (G, b"VALUE k 0 x\r\n", "malformed"),
        (G, b"VALUE k 0 -1\r\n", "malformed"),
        (G, b"VALUE k 0 1\r\nxy\r\nEND\r\n", "malformed"),
        (G, b"STORED\r\n", "malformed"),
        (ST, b"DELETED\r\n", "malformed"),
        (CA, b"NOT_STORED\r\n", "malformed"),
        (VE, b"VERSION\r\n", "malformed"),
        (TO, b"\r\n", "malformed"),
        (G, b"x" * (64 * 1024 + 1), "no line end"),
    ],
)
def test_parse_garbage_raises_protocol_error(kind: int, wire: bytes, match: str) -> None:
    """A reply that does not answer the command (another key, too large, malformed) is a ProtocolError."""
    with pytest.raises(ProtocolError, match=match):
        _memcached._parse(wire, 0, kind, b"k", 100)


# -- a fake server --------------------------------------------------------------------------------------------

Handler = Callable[[list[bytes], bytes], Awaitable[bytes | None]]
#: A handler's reply ending in CLOSE is written without it, then the server closes the connection.
CLOSE = b"<close>"


class FakeMemcached:
    """Answers ``version`` itself and every other command with ``handler(words, data)``, one at a time."""

    def __init__(self, handler: Handler, close_at_once: bool = False, answer_version: bool = True) -> None:
        self.handler = handler
        self.close_at_once = close_at_once
        self.answer_version = answer_version
        self.connections = 0
        self.commands: list[list[bytes]] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.close_at_once:
                return
            while line := await reader.readline():
                words = line.split()
                data = b""
                if words[0] in (b"set", b"add", b"cas"):
                    data = (await reader.readexactly(int(words[4]) + 2))[:-2]
                self.commands.append(words)
                if words[0] == b"version" and self.answer_version:
                    reply: bytes | None = b"VERSION fake\r\n"
                else:
                    reply = await self.handler(words, data)
                if reply is not None:
                    writer.write(reply.removesuffix(CLOSE))
                    await writer.drain()
                    if reply.endswith(CLOSE):
                        return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def value_reply(key: bytes, value: bytes) -> bytes:
    return b"VALUE %b 0 %d\r\n%b\r\nEND\r\n" % (key, len(value), value)


def echo_key_after(delays: dict[bytes, float]) -> Handler:
    """get key answers the key's name as its value, after ``delays[key]`` seconds; anything else STORED."""

    async def handler(words: list[bytes], data: bytes) -> bytes:
        if words[0] == b"get":
            await asyncio.sleep(delays.get(words[1], 0))
            return value_reply(words[1], words[1])
        return b"STORED\r\n"

    return handler


StartFake = Callable[..., Awaitable[tuple[str, FakeMemcached]]]


@pytest.fixture
async def fake_memcached() -> AsyncIterator[StartFake]:
    servers: list[tuple[asyncio.Server, FakeMemcached]] = []

    async def start(
        handler: Handler, close_at_once: bool = False, answer_version: bool = True
    ) -> tuple[str, FakeMemcached]:
        fake = FakeMemcached(handler, close_at_once, answer_version)
        server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
        servers.append((server, fake))
        return f"memcached://127.0.0.1:{server.sockets[0].getsockname()[1]}", fake

    yield start
    for server, fake in servers:
        server.close()
        for task in fake.tasks:
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)
        await server.wait_closed()


async def _until(condition: Callable[[], bool], seconds: float = 1.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)


async def test_cancelled_get_keeps_the_order(fake_memcached: StartFake) -> None:
    """A get cut short by a timeout has its late reply read and dropped; the next commands get their own replies."""
    url, fake = await fake_memcached(echo_key_after({b"first": 0.15}))
    async with MemcachedClient.from_url(url + "?max_connections=1") as client:
        first = asyncio.ensure_future(asyncio.wait_for(client.get("first"), 0.05))
        second, third = client.get("second"), client.add("third", b"v", 10)  # pipelined behind "first"
        with pytest.raises(TimeoutError):
            await first
        assert await second == b"second"
        assert await third is True
        assert await asyncio.gather(*(client.get(f"k{i}") for i in range(5))) == [b"k%d" % i for i in range(5)]
        assert fake.connections == 1 and client.connection_count == 1


async def test_value_for_another_key_fails_and_drops_the_connection(fake_memcached: StartFake) -> None:
    """A VALUE naming another key fails the get and every command behind it; the next command reconnects."""
    answers = iter([value_reply(b"asession:other", b'{"user": "someone else"}')])

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return next(answers, None) or value_reply(words[1], b"mine")

    url, fake = await fake_memcached(handler)
    async with MemcachedClient.from_url(url + "?max_connections=1") as client:
        wrong, queued = client.get("asession:mine"), client.get("asession:queued")
        with pytest.raises(ProtocolError, match="with the value of b'asession:other'"):
            await wrong
        with pytest.raises(ProtocolError):
            await queued  # in flight on the dropped connection: failed, never answered with a wrong value
        assert client.connection_count == 0
        assert await client.get("asession:mine") == b"mine"
        assert fake.connections == 2


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("get", b"VALUE k 0 5\r\nhe"),
        ("get", b"VALUE k 0"),
        ("get", b"EN"),
        ("set", b"STOR"),
    ],
)
async def test_reply_cut_mid_line_then_eof_fails_without_freezing_the_loop(
    fake_memcached: StartFake, command: str, reply: bytes
) -> None:
    """A reply cut short by the end of the stream fails the command at once; the event loop keeps running."""

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return reply + CLOSE

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    url, _ = await fake_memcached(handler)
    ticking = asyncio.ensure_future(ticker())
    try:
        async with MemcachedClient.from_url(url + "?socket_timeout=1") as client:
            call = client.get("k") if command == "get" else client.set("k", b"hello", 10)
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="lost"):
                await asyncio.wait_for(call, 2)
            assert time.monotonic() - started < 0.9  # the end of the stream, not the 1 s timeout
            before = ticks
            await asyncio.sleep(0.05)
            assert ticks > before
            assert client.connection_count == 0
    finally:
        ticking.cancel()


@pytest.mark.parametrize(
    "reply",
    [
        b"HELLO\r\n",
        b"STORED\r\n",
        b"VALUE k 0 x\r\n",
        b"VALUE k 0 3\r\nabcXXEND\r\n",
        b"VALUE k 0 3\r\nabc\r\nEND\r\nEND\r\n",  # one reply too many
        b"VALUE k 0 3 1 2\r\nabc\r\nEND\r\n",
    ],
)
async def test_garbage_reply_fails_and_drops_the_connection(fake_memcached: StartFake, reply: bytes) -> None:
    """A reply that is not an answer to get fails it with ProtocolError; the connection is replaced."""
    answers = iter([reply])

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return next(answers, b"END\r\n")

    url, fake = await fake_memcached(handler)
    async with MemcachedClient.from_url(url) as client:
        failure: BaseException | None = None
        try:
            await client.get("k")
        except ProtocolError as exc:
            failure = exc
        await _until(lambda: client.connection_count == 0)
        assert client.connection_count == 0
        if failure is None:  # the extra END: the get got its answer, the stray line dropped the connection
            assert reply.endswith(b"END\r\nEND\r\n")
        assert await client.get("k") is None
        assert fake.connections == 2


async def test_error_reply_keeps_the_connection(fake_memcached: StartFake) -> None:
    """SERVER_ERROR, CLIENT_ERROR and ERROR fail their command only: memcached stays in step after them."""
    answers = iter([b"SERVER_ERROR out of memory storing object\r\n", b"CLIENT_ERROR bad data chunk\r\n", b"ERROR\r\n"])

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return next(answers, b"STORED\r\n")

    url, fake = await fake_memcached(handler)
    async with MemcachedClient.from_url(url + "?max_connections=1") as client:
        calls = [client.set("k", b"v", 10) for _ in range(4)]
        for call, match in zip(
            calls[:3], ["SERVER_ERROR out of memory", "CLIENT_ERROR bad data", "^ERROR$"], strict=True
        ):
            with pytest.raises(MemcachedError, match=match) as info:
                await call
            assert not isinstance(info.value, ProtocolError)
        assert await calls[3] is True
        assert fake.connections == 1 and client.connection_count == 1


async def test_oversized_value_header_is_refused(fake_memcached: StartFake) -> None:
    """A VALUE header announcing 8 MiB fails the get at once, without waiting for (or buffering) the data."""

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return b"VALUE %b 0 %d\r\n" % (words[1], 8 * 1024 * 1024)

    url, _ = await fake_memcached(handler)
    async with MemcachedClient.from_url(url + "?socket_timeout=5") as client:
        with pytest.raises(ProtocolError, match="value of 8388608 bytes from memcached exceeds the limit"):
            await asyncio.wait_for(client.get("k"), 1)
        assert client.connection_count == 0


async def test_endless_line_is_refused(fake_memcached: StartFake) -> None:
    """A reply line that never ends fails after 64 KiB instead of filling memory."""

    async def handler(words: list[bytes], data: bytes) -> bytes:
        return b"VALUE " + b"k" * 100_000

    url, _ = await fake_memcached(handler)
    async with MemcachedClient.from_url(url) as client:
        with pytest.raises(ProtocolError, match="no line end in 65536 bytes"):
            await asyncio.wait_for(client.get("k"), 1)


async def test_reply_split_across_reads() -> None:
    """Replies cut anywhere by TCP are put back together (here: 997 bytes per write)."""
    value = b"v\r\nEND\r\n" * 500
    handlers: list[asyncio.Task[Any]] = []

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        while line := await reader.readline():
            words = line.split()
            reply = {b"version": b"VERSION 1\r\n", b"get": value_reply(words[-1], value)}.get(words[0], b"DELETED\r\n")
            for index in range(0, len(reply), 997):
                writer.write(reply[index : index + 997])
                await writer.drain()
                await asyncio.sleep(0.001)
        writer.close()

    server = await asyncio.start_server(dribble, "127.0.0.1", 0)
    client = MemcachedClient.from_url(f"memcached://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        await client.open()
        get, delete = client.get("k"), client.delete("k")
        assert await get == value
        assert await delete is True
    finally:
        await client.close()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()


async def test_server_closing_at_once_fails_fast(fake_memcached: StartFake) -> None:
    """A server that accepts and closes at once fails open() and every command quickly; nothing hangs."""

    async def unused(words: list[bytes], data: bytes) -> None:
        raise AssertionError("no command should reach the handler")

    url, fake = await fake_memcached(unused, close_at_once=True)
    client = MemcachedClient.from_url(url + "?socket_timeout=10&socket_connect_timeout=10")
    try:
        with pytest.raises(OSError):  # ConnectionError is an OSError
            await asyncio.wait_for(client.open(), 2)
        results = await asyncio.wait_for(
            asyncio.gather(*(client.get(f"k{i}") for i in range(5)), client.version(), return_exceptions=True), 2
        )
        assert all(isinstance(result, OSError) for result in results), results
        await asyncio.sleep(BACKOFF_BASE)  # commands during the backoff fail without dialling; then it dials again
        with pytest.raises(OSError):
            await asyncio.wait_for(client.get("k"), 2)
        assert client.connection_count == 0 and fake.connections >= 2
    finally:
        await client.close()


async def test_silent_server_times_out(fake_memcached: StartFake) -> None:
    """A server that stops answering fails the commands in flight after socket_timeout and drops the connection."""

    async def silent(words: list[bytes], data: bytes) -> bytes:
        await asyncio.sleep(5)
        return b"END\r\n"

    url, _ = await fake_memcached(silent)
    async with MemcachedClient.from_url(url + "?socket_timeout=0.2&max_connections=1") as client:
        started = time.monotonic()
        calls = [client.get("a"), client.touch("b", 10)]
        for call in calls:
            with pytest.raises(TimeoutError, match="no reply within 0.2 s"):
                await asyncio.wait_for(call, 2)
        assert 0.15 < time.monotonic() - started < 1
        assert client.connection_count == 0


async def test_half_reply_then_silence_times_out(fake_memcached: StartFake) -> None:
    """A reply cut mid-line on a connection that stays open fails on socket_timeout."""

    async def half(words: list[bytes], data: bytes) -> bytes:
        return b"VALUE k 0 5\r\nhel"

    url, _ = await fake_memcached(half)
    async with MemcachedClient.from_url(url + "?socket_timeout=0.2") as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get("k"), 2)


async def test_command_on_a_failed_connection_fails_at_once() -> None:
    """A connection that has failed answers a new command with ConnectionError at once instead of never."""
    client = MemcachedClient(MemcachedOptions(socket_timeout=None))
    connection = _memcached._Connection(client, asyncio.get_running_loop())
    connection.fail(ConnectionError("reset"))
    future = connection.send(b"get k\r\n", _memcached._GET, b"k")
    assert future.done()
    with pytest.raises(ConnectionError, match="was lost"):
        await future


async def test_close_fails_commands_in_flight(fake_memcached: StartFake) -> None:
    """close() fails every command in flight with ConnectionError at once, is idempotent, and refuses new ones."""
    url, _ = await fake_memcached(echo_key_after({b"a": 1, b"b": 1, b"c": 1}))
    client = MemcachedClient.from_url(url + "?max_connections=1")
    await client.open()
    calls = [client.get("a"), client.get("b"), client.get("c")]
    await asyncio.sleep(0.02)
    await client.close()
    await client.close()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 0.5)
    assert all(isinstance(result, ConnectionError) and "closed" in str(result) for result in results), results
    with pytest.raises(ConnectionError, match="closed"):
        await client.get("a")


async def test_close_while_connecting_fails_the_waiters(fake_memcached: StartFake) -> None:
    """close() during the version check stops the connection attempt; its waiters get ConnectionError."""

    async def silent(words: list[bytes], data: bytes) -> None:
        await asyncio.sleep(5)

    url, _ = await fake_memcached(silent, answer_version=False)
    client = MemcachedClient.from_url(url)
    opening = asyncio.ensure_future(client.open())
    getting = asyncio.ensure_future(client.get("k"))
    await asyncio.sleep(0.05)
    await client.close()
    for waiter in (opening, getting):
        with pytest.raises(ConnectionError, match="closed"):
            await asyncio.wait_for(waiter, 1)


async def test_connect_timeout_on_a_server_that_never_answers_version(fake_memcached: StartFake) -> None:
    """A server that accepts but never answers fails open() within socket_connect_timeout."""

    async def silent(words: list[bytes], data: bytes) -> None:
        await asyncio.sleep(5)

    url, _ = await fake_memcached(silent, answer_version=False)
    client = MemcachedClient.from_url(url + "?socket_connect_timeout=0.1&socket_timeout=none")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.open(), 2)
    assert time.monotonic() - started < 1 and client.connection_count == 0
    await client.close()


async def test_not_memcached_fails_open(fake_memcached: StartFake) -> None:
    """A server answering version with an error (Redis on the port, say) fails open() with a hint about the port."""

    async def error(words: list[bytes], data: bytes) -> bytes:
        return b"ERROR\r\n"

    url, _ = await fake_memcached(error, answer_version=False)
    client = MemcachedClient.from_url(url)
    with pytest.raises(ProtocolError, match="check the port"):
        await asyncio.wait_for(client.open(), 2)
    assert client.connection_count == 0
    await client.close()


# -- private memcached processes --------------------------------------------------------------------------------


class PrivateMemcached:
    """A throw-away ``memcached`` on a free 127.0.0.1 port (never the shared one, which other test runs flush)."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [self.executable, "-l", "127.0.0.1", "-p", str(self.port), "-m", "64", "-U", "0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root unless told to
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"memcached did not start on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()  # a throw-away server: SIGTERM would make memcached wait a second before exiting
        process.wait()


@pytest.fixture
def private_memcached() -> Iterator[PrivateMemcached]:
    """A started :class:`PrivateMemcached`, stopped after the test; skipped (failed under CI=true) without one."""
    executable = require_executable(shutil.which("memcached"), "memcached")
    server = PrivateMemcached(executable)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.memcached
async def test_every_command_round_trips(private_memcached: PrivateMemcached) -> None:
    """get, gets, set, add, cas, delete, touch and version against a real memcached give the documented results."""
    async with MemcachedClient.from_url(private_memcached.url) as client:
        assert (await client.version()).count(".") == 2
        assert await client.get("k") is None and await client.gets("k") is None
        binary = bytes(range(256)) + b"\r\nEND\r\nVALUE k 0 1\r\n"
        assert await client.set("k", binary, 60) is True
        assert await client.get("k") == binary
        assert await client.add("k", b"other", 60) is False
        assert await client.add("new", b"", 60) is True and await client.get("new") == b""
        found = await client.gets("k")
        assert found is not None and found[0] == binary
        token = found[1]
        assert await client.cas("k", "text", 60, token) is True
        assert await client.cas("k", b"stale", 60, token) is False
        assert await client.get("k") == b"text"
        assert await client.cas("missing", b"v", 60, token) is None
        assert await client.touch("k", 120) is True and await client.touch("missing", 120) is False
        assert await client.delete("k") is True and await client.delete("k") is False
        assert await client.get("k") is None
        assert await client.set("gone", b"v", -1) is True and await client.get("gone") is None  # expired already
        assert client.connection_count == 1


@pytest.mark.memcached
async def test_ttl_above_30_days_keeps_the_item(private_memcached: PrivateMemcached) -> None:
    """A 40-day TTL is sent as a Unix time; sent as seconds, memcached would read a date in 1970 and drop the item."""
    async with MemcachedClient.from_url(private_memcached.url) as client:
        assert await client.set("long", b"v", 40 * DAY) is True
        assert await client.get("long") == b"v"
        assert await client.add("long-add", b"v", 365 * DAY) is True and await client.get("long-add") == b"v"
        assert await client.touch("long", 31 * DAY) is True
        assert await client.get("long") == b"v"


@pytest.mark.memcached
async def test_pipelined_commands_each_get_their_own_reply(private_memcached: PrivateMemcached) -> None:
    """200 concurrent commands over 2 connections each get the reply to their own key."""
    async with MemcachedClient.from_url(private_memcached.url + "?max_connections=2") as client:
        keys = [f"asession:{i:04d}" for i in range(200)]
        assert all(
            await asyncio.gather(*(client.set(key, key.encode() * (1 + i % 7), 60) for i, key in enumerate(keys)))
        )
        values = await asyncio.gather(*(client.get(key) for key in keys))
        assert values == [key.encode() * (1 + i % 7) for i, key in enumerate(keys)]
        mixed = await asyncio.gather(*(client.get(key) if i % 2 else client.delete(key) for i, key in enumerate(keys)))
        assert mixed == [key.encode() * (1 + i % 7) if i % 2 else True for i, key in enumerate(keys)]
        assert 1 <= client.connection_count <= 2


@pytest.mark.memcached
async def test_server_error_from_memcached_keeps_the_connection(private_memcached: PrivateMemcached) -> None:
    """An item over memcached's 1 MiB limit gets SERVER_ERROR; the same connection serves the next command."""
    async with MemcachedClient.from_url(private_memcached.url + "?max_connections=1") as client:
        with pytest.raises(MemcachedError, match="SERVER_ERROR object too large"):
            await client.set("big", b"x" * (2 * 1024 * 1024), 60)
        assert await client.set("small", b"x", 60) is True
        assert await client.get("small") == b"x"
        assert client.connection_count == 1


@pytest.mark.memcached
async def test_reconnects_after_a_restart(private_memcached: PrivateMemcached) -> None:
    """When memcached restarts, the lost connection is dropped and, once the reconnection backoff has passed,
    the next command opens a new one."""
    async with MemcachedClient.from_url(private_memcached.url) as client:
        assert await client.set("k", b"v", 60) is True
        private_memcached.stop()
        await _until(lambda: client.connection_count == 0)
        assert client.connection_count == 0
        with pytest.raises(OSError):
            await client.get("k")
        private_memcached.start()
        await asyncio.sleep(BACKOFF_BASE)  # one failed attempt: the shortest backoff
        assert await client.get("k") is None  # a fresh server: the item went with the old one
        assert await client.set("k", b"w", 60) is True and await client.get("k") == b"w"
