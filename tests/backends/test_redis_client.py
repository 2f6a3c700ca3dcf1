"""asession's own Redis client (asession/backends/_redis.py) and CacheBackend over it.

- URL options and TLS contexts, and the RESP2 reply parser fed in every possible cut.
- A fake RESP server on 127.0.0.1 for what a real server will not do on demand: answer late, send garbage.
- The shared test Redis for pipelining under concurrency.
- Private ``redis-server`` processes for passwords, ACL users, TLS and a restart.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from asession import keys
from asession.backends import _pool, _redis, _resp, backend_from_url
from asession.backends._redis import (
    ProtocolError,
    RedisClient,
    RedisError,
    RedisOptions,
    parse_url,
)
from asession.backends.cache import KEY_PREFIX, CacheBackend
from asession.exceptions import BackendUnavailableError, ImproperlyConfigured
from tests.servers import REDIS_SERVER, PrivateRedis, free_port, require_executable, running_redis

DAY = 86400


# -- URLs ----------------------------------------------------------------------------------------------------


def test_parse_url_defaults() -> None:
    """A bare URL means 127.0.0.1:6379, db 0, no password, 5-second timeouts, 4 connections, no TLS."""
    options = parse_url("redis://")
    assert options == RedisOptions()
    assert (options.host, options.port, options.db, options.tls) == ("127.0.0.1", 6379, 0, False)
    assert options.socket_timeout == options.socket_connect_timeout == 5.0
    assert options.max_connections == _redis.DEFAULT_MAX_CONNECTIONS
    assert options.ssl_context() is None


def test_parse_url_reads_every_part() -> None:
    """User, password (percent-decoded), host, port, db and the query options all land in the options."""
    options = parse_url(
        "rediss://app%40x:p%40ss%2Fw@cache.example:6380/3?socket_timeout=0.5&socket_connect_timeout=none"
        "&socket_keepalive=yes&max_connections=2&client_name=web&ssl_cert_reqs=optional&ssl_check_hostname=false"
        "&ssl_ca_certs=/ca.pem&ssl_ca_path=/cas&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password=pw"
        "&ssl_ciphers=HIGH&ssl_min_version=771&ssl_include_verify_flags=VERIFY_X509_STRICT"
        "&ssl_exclude_verify_flags=VERIFY_X509_PARTIAL_CHAIN,&retry_on_timeout=true&health_check_interval=10"
        "&protocol=3&decode_responses=true"
    )
    assert (options.username, options.password) == ("app@x", "p@ss/w")
    assert (options.host, options.port, options.db, options.tls) == ("cache.example", 6380, 3, True)
    assert options.socket_timeout == 0.5 and options.socket_connect_timeout is None
    assert options.socket_keepalive and options.max_connections == 2 and options.client_name == "web"
    assert options.health_check_interval == 10
    assert options.ssl_cert_reqs == ssl.CERT_OPTIONAL and not options.ssl_check_hostname
    assert (options.ssl_ca_certs, options.ssl_ca_path, options.ssl_certfile, options.ssl_keyfile) == (
        "/ca.pem",
        "/cas",
        "/c.pem",
        "/k.pem",
    )
    assert (options.ssl_password, options.ssl_ciphers) == ("pw", "HIGH")
    assert options.ssl_min_version == ssl.TLSVersion.TLSv1_2
    assert options.ssl_include_verify_flags == (ssl.VerifyFlags.VERIFY_X509_STRICT,)
    assert options.ssl_exclude_verify_flags == (ssl.VerifyFlags.VERIFY_X509_PARTIAL_CHAIN,)
    assert "p@ss" not in repr(options)


def test_parse_url_db_option_wins_over_path() -> None:
    """``?db=N`` overrides the path, as in redis-py."""
    assert parse_url("redis://h/1?db=7").db == 7


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1",
        "redis://127.0.0.1:port/0",
        "redis://127.0.0.1/zero",
        "redis://127.0.0.1/0?socket_timeout=soon",
        "redis://127.0.0.1/0?socket_timeout=-1",
        "redis://127.0.0.1/0?socket_keepalive=maybe",
        "redis://127.0.0.1/0?ssl_cert_reqs=sometimes",
        "redis://127.0.0.1/0?ssl_include_verify_flags=VERIFY_NOTHING_SUCH",
        "redis://127.0.0.1/0?max_connections=0",
        "redis://127.0.0.1/0?no_such_option=1",
    ],
)
def test_parse_url_rejects(url: str) -> None:
    """Malformed URLs, values and unknown options are refused (CacheBackend turns that into ImproperlyConfigured)."""
    with pytest.raises(ValueError):
        parse_url(url)


def test_cache_backend_reports_bad_redis_option_without_password() -> None:
    with pytest.raises(ImproperlyConfigured, match="no_such_option") as info:
        CacheBackend("redis://:s3cret@127.0.0.1/0?no_such_option=1")
    assert "s3cret" not in str(info.value)


def test_ssl_context_follows_the_options(tls_files: dict[str, Path]) -> None:
    """Certificates are checked by default; ssl_cert_reqs=none turns off host names too; files are loaded."""
    default = parse_url("rediss://h").ssl_context()
    assert default is not None and default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    lax = parse_url("rediss://h?ssl_cert_reqs=none&ssl_ciphers=HIGH&ssl_min_version=772").ssl_context()
    assert lax is not None and lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname
    assert lax.minimum_version == ssl.TLSVersion.TLSv1_3
    cert, key = tls_files["cert"], tls_files["key"]
    flags = "ssl_include_verify_flags=VERIFY_X509_STRICT&ssl_exclude_verify_flags=VERIFY_X509_TRUSTED_FIRST"
    loaded = parse_url(f"rediss://h?ssl_ca_certs={cert}&ssl_certfile={cert}&ssl_keyfile={key}&{flags}").ssl_context()
    assert loaded is not None and "localhost" in str(loaded.get_ca_certs())
    assert loaded.verify_flags & ssl.VerifyFlags.VERIFY_X509_STRICT
    assert not loaded.verify_flags & ssl.VerifyFlags.VERIFY_X509_TRUSTED_FIRST


# -- the reply parser ------------------------------------------------------------------------------------------

REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*3\r\n$1\r\na\r\n:1\r\n*1\r\n+x\r\n", [b"a", 1, [b"x"]]),
    # HGETALL's shape (bulk strings parsed in place), with an empty one, a null one and a CRLF inside one.
    (b'*4\r\n$9\r\n"counter"\r\n$1\r\n5\r\n$0\r\n\r\n$-1\r\n', [b'"counter"', b"5", b"", None]),
    (b"*2\r\n$4\r\na\r\nb\r\n$2\r\n12\r\n", [b"a\r\nb", b"12"]),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_parse_every_cut(wire: bytes, value: Any) -> None:
    """Each reply parses whole, and every proper prefix of it asks for more data."""
    assert _resp._parse(wire, 0) == (value, len(wire))
    assert _resp._parse(bytearray(b"junk" + wire), 4) == (value, len(wire) + 4)
    for cut in range(len(wire)):
        assert _resp._parse(wire[:cut], 0)[1] == _resp._INCOMPLETE


def test_parse_error_reply_is_returned_not_raised() -> None:
    error, end = _resp._parse(b"-ERR wrong type\r\n", 0)
    assert isinstance(error, RedisError) and str(error) == "ERR wrong type" and end == 17


@pytest.mark.parametrize("wire", [b"?huh\r\n", b"$x\r\n", b":1.5\r\n", b"*two\r\n", b"*1\r\n$x\r\nab\r\n"])
def test_parse_garbage_raises_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed reply"):
        _resp._parse(wire, 0)


def test_array_element_over_the_reply_limit_fails() -> None:
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        _resp._parse(b"*1\r\n$100\r\n" + b"x" * 100 + b"\r\n", 0, limit=10)


def test_command_encoding() -> None:
    assert _resp._command(b"GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


# -- a fake server ------------------------------------------------------------------------------------------------

Handler = Callable[[list[bytes]], Awaitable[bytes | None]]


async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    header = await reader.readline()
    if not header:
        return None
    args = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        args.append((await reader.readexactly(size + 2))[:-2])
    return args


class FakeRedis:
    """Answers each command with ``handler(args)``'s bytes (``None``: no answer), one command at a time."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while (command := await _read_command(reader)) is not None:
                reply = await self.handler(command)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def echo_key_after(delays: dict[bytes, float]) -> Handler:
    """GET key answers the key's name, after ``delays[key]`` seconds; anything else answers :0."""

    async def handler(command: list[bytes]) -> bytes:
        if command[0] == b"GET":
            await asyncio.sleep(delays.get(command[1], 0))
            return b"$%d\r\n%b\r\n" % (len(command[1]), command[1])
        return b":0\r\n"

    return handler


@pytest.fixture
async def fake_redis() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, FakeRedis]]]]:
    servers: list[tuple[asyncio.Server, FakeRedis]] = []

    async def start(handler: Handler) -> tuple[str, FakeRedis]:
        fake = FakeRedis(handler)
        server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
        servers.append((server, fake))
        return f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", fake

    yield start
    for server, fake in servers:
        server.close()
        for task in fake.tasks:
            task.cancel()
        await asyncio.gather(*fake.tasks, return_exceptions=True)
        await server.wait_closed()


async def test_timed_out_command_poisons_no_later_reply(fake_redis: Any) -> None:
    """A command that times out drops its connection; the late reply never reaches a later command."""
    url, fake = await fake_redis(echo_key_after({b"slow": 0.3, b"queued": 0.3}))
    client = RedisClient.from_url(url + "?socket_timeout=0.1&max_connections=1")
    try:
        await client.open()
        slow, queued = client.get("slow"), client.get("queued")  # pipelined on the one connection
        with pytest.raises(TimeoutError, match="no reply within 0.1 s"):
            await slow
        with pytest.raises(TimeoutError):
            await queued  # it was in flight on the dropped connection: it fails, it is not answered wrongly
        assert client.connection_count == 0
        await asyncio.sleep(0.35)  # the late replies are sent to the dropped socket by now
        assert await client.get("next") == b"next"
        assert fake.connections == 2
    finally:
        await client.close()


async def test_timeout_counts_from_the_last_reply(fake_redis: Any) -> None:
    """The timer only fires on a connection that has been silent for socket_timeout while a command waits."""
    url, _ = await fake_redis(echo_key_after({b"a": 0.1, b"b": 0.1}))
    client = RedisClient.from_url(url + "?socket_timeout=0.2&max_connections=1")
    try:
        await client.open()
        assert await client.get("a") == b"a"
        await asyncio.sleep(0.07)
        assert await client.get("b") == b"b"  # in flight when the first timer fires: re-armed, not failed
        await asyncio.sleep(0.15)  # the re-armed timer finds nothing waiting
        assert client.connection_count == 1
    finally:
        await client.close()


async def test_cancelled_command_keeps_the_order(fake_redis: Any) -> None:
    """A cancelled command's reply is read and dropped; the commands after it get their own replies."""
    url, fake = await fake_redis(echo_key_after({b"first": 0.1}))
    client = RedisClient.from_url(url + "?max_connections=1")
    try:
        await client.open()
        first = asyncio.ensure_future(client.get("first"))
        second = client.get("second")
        await asyncio.sleep(0.02)
        first.cancel()
        assert await second == b"second"
        assert await asyncio.gather(*(client.get(f"k{i}") for i in range(5))) == [b"k%d" % i for i in range(5)]
        assert first.cancelled()
        assert fake.connections == 1 and client.connection_count == 1
    finally:
        await client.close()


async def test_cancelled_load_through_the_backend(fake_redis: Any) -> None:
    """A request cancelled mid-load leaves the backend serving the next loads right."""
    skey_of = {keys.new_key(): None for _ in range(3)}
    first, *others = list(skey_of)

    async def handler(command: list[bytes]) -> bytes:
        if command[0] == b"HGETALL":  # a session is a hash: here the one field "key", holding the key's name
            if command[1] == (KEY_PREFIX + keys.storage_key(first)).encode():
                await asyncio.sleep(0.1)
            value = b'"%b"' % command[1]
            return b'*2\r\n$5\r\n"key"\r\n$%d\r\n%b\r\n' % (len(value), value)
        return b":0\r\n"

    url, _ = await fake_redis(handler)
    async with CacheBackend(url + "?max_connections=1") as backend:
        task = asyncio.ensure_future(backend.load(first))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for key in others:
            assert await backend.load(key) == {"key": KEY_PREFIX + keys.storage_key(key)}


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-ERR unknown command\r\n", "RedisError: ERR unknown command"),
        (b"?garbage\r\n", "ProtocolError: malformed reply"),
    ],
)
async def test_error_and_garbage_replies_surface_as_backend_unavailable(
    fake_redis: Any, reply: bytes, error: str
) -> None:
    """-ERR replies and malformed replies become BackendUnavailableError; the backend keeps working after."""
    answers = iter([reply])

    async def handler(command: list[bytes]) -> bytes:
        if command[0] in (b"GET", b"HGETALL"):
            return next(answers, b"$-1\r\n")
        return b":0\r\n"

    url, _ = await fake_redis(handler)
    async with CacheBackend(url) as backend:
        with pytest.raises(BackendUnavailableError, match=error):
            await backend.load(keys.new_key())
        assert await backend.load(keys.new_key()) is None


async def test_reply_to_no_command_drops_the_connection(fake_redis: Any) -> None:
    """A reply nobody asked for means the connection is out of step: it is dropped, the next command reconnects."""

    async def handler(command: list[bytes]) -> bytes:
        return b"$1\r\na\r\n$1\r\nb\r\n" if command[0] == b"GET" else b":0\r\n"

    url, fake = await fake_redis(handler)
    client = RedisClient.from_url(url)
    try:
        assert await client.get("k") == b"a"
        for _ in range(100):
            if client.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        assert client.connection_count == 0
        assert await client.exists("k") == 0
        assert fake.connections == 2
    finally:
        await client.close()


async def test_reply_split_across_reads() -> None:
    """Replies cut anywhere by TCP are put back together (here: 997 bytes per write)."""
    value = b"v" * 3000
    handlers: list[asyncio.Task[Any]] = []

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        while (command := await _read_command(reader)) is not None:
            reply = b"$%d\r\n%b\r\n:7\r\n" % (len(value), value) if command[0] == b"GET" else b":0\r\n"
            for index in range(0, len(reply), 997):
                writer.write(reply[index : index + 997])
                await writer.drain()
                await asyncio.sleep(0.001)
        writer.close()

    server = await asyncio.start_server(dribble, "127.0.0.1", 0)
    client = RedisClient.from_url(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        await client.open()
        get, exists = client.get("k"), client.exists("k")  # pipelined: the :7 after the value is EXISTS' reply
        assert await get == value
        assert await exists == 7
    finally:
        await client.close()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()


async def test_connect_timeout(fake_redis: Any) -> None:
    """A server that accepts but never answers AUTH/SELECT fails open() within socket_connect_timeout."""

    async def silent(command: list[bytes]) -> None:
        await asyncio.sleep(5)

    url, _ = await fake_redis(silent)
    backend = CacheBackend(url.replace("/0", "/2") + "?socket_connect_timeout=0.1&socket_timeout=none")
    with pytest.raises(BackendUnavailableError, match="TimeoutError"):
        await backend.open()


async def test_client_closed_while_connecting_and_after(fake_redis: Any) -> None:
    """close() stops a connection attempt: its waiter gets ConnectionError; a closed client sends nothing."""

    async def slow_select(command: list[bytes]) -> bytes:
        await asyncio.sleep(1)
        return b"+OK\r\n"

    url, _ = await fake_redis(slow_select)
    client = RedisClient.from_url(url.replace("/0", "/1"))
    opening = asyncio.ensure_future(client.open())
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(ConnectionError, match="closed"):
        await opening
    with pytest.raises(ConnectionError, match="closed"):
        await client.execute("PING")


async def test_a_caller_cancelled_while_connecting_is_cancelled(fake_redis: Any) -> None:
    """Cancelling a command waiting for the connection cancels that command only; the connection still opens."""

    async def slow_select(command: list[bytes]) -> bytes:
        if command[0] == b"SELECT":
            await asyncio.sleep(0.1)
        return b"+OK\r\n"

    url, _ = await fake_redis(slow_select)
    client = RedisClient.from_url(url.replace("/0", "/1"))
    try:
        waiting = asyncio.ensure_future(client.execute("PING"))
        await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await client.execute("PING") == b"OK"
    finally:
        await client.close()


# -- the shared test Redis --------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_concurrent_commands_each_get_their_own_reply(redis_backend: CacheBackend) -> None:
    """200 concurrent saves then loads of distinct data, pipelined over a few connections, all come back right."""
    sessions = {keys.new_key(): {"n": index, "pad": "x" * (index * 37 % 5000)} for index in range(200)}
    await asyncio.gather(*(redis_backend.save(key, data, 60) for key, data in sessions.items()))
    loaded = await asyncio.gather(*(redis_backend.load(key) for key in sessions))
    assert loaded == list(sessions.values())
    client = redis_backend._cache
    assert isinstance(client, RedisClient)
    assert 1 <= client.connection_count <= _redis.DEFAULT_MAX_CONNECTIONS


@pytest.mark.redis
async def test_client_commands_on_the_shared_redis(redis_url: str) -> None:
    """execute(), SET NX, EXISTS and DEL with their replies; keepalive and client names are accepted."""
    client = RedisClient.from_url(redis_url + "?socket_keepalive=true&client_name=asession-test")
    key = KEY_PREFIX + "client-test-" + keys.new_key()
    try:
        await client.open()
        assert await client.execute("CLIENT", "GETNAME") == b"asession-test"
        assert await client.set(key, "a", 60, nx=True) == b"OK"
        assert await client.set(key, b"b", 60, nx=True) is None
        assert await client.get(key) == b"a"
        assert await client.exists(key) == 1
        assert await client.delete(key) == 1
        assert await client.execute("EXISTS", key, 0) == 0
        with pytest.raises(RedisError, match="wrong number of arguments"):
            await client.execute("GET")
    finally:
        await client.close()


@pytest.mark.redis
async def test_backend_from_url_uses_the_lean_client(redis_url: str) -> None:
    backend = backend_from_url(redis_url.replace("redis://", "redis://", 1))
    async with backend:
        assert isinstance(backend, CacheBackend) and isinstance(backend._cache, RedisClient)


# -- private redis-server processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl CLI."""
    openssl = require_executable(shutil.which("openssl"), "openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    return {"cert": cert, "key": key}


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """One private server with a password, an ACL user and a TLS port."""
    require_executable(REDIS_SERVER, REDIS_SERVER)
    tls_port = free_port()
    server = PrivateRedis(
        tmp_path_factory.mktemp("redis"),
        "--requirepass", "pa ss:w@rd",
        "--user", "sessions", "on", ">user-secret", "~asession:*", "+@all",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls_files["cert"]),
        "--tls-key-file", str(tls_files["key"]),
        "--tls-ca-cert-file", str(tls_files["cert"]),
        "--tls-auth-clients", "optional",
    )  # fmt: skip
    server.start()
    try:
        yield {"port": server.port, "tls_port": tls_port, **tls_files}
    finally:
        server.stop()


async def _round_trip(url: str) -> None:
    key = keys.new_key()
    async with CacheBackend(url) as backend:
        await backend.save(key, {"v": url}, 60)
        assert await backend.load(key) == {"v": url}
        assert await backend.exists(key)
        await backend.delete(key)
        assert await backend.load(key) is None


@pytest.mark.redis
async def test_password_and_acl_user(secured_redis: dict[str, Any]) -> None:
    """The password (percent-encoded in the URL) and an ACL user with its password both authenticate."""
    port = secured_redis["port"]
    await _round_trip(f"redis://:{quote('pa ss:w@rd', safe='')}@127.0.0.1:{port}/0")
    await _round_trip(f"redis://sessions:user-secret@127.0.0.1:{port}/1")


@pytest.mark.redis
@pytest.mark.parametrize("credentials", [":wrong-s3cret@", "sessions:wrong-s3cret@", ""])
async def test_wrong_or_missing_password_fails_at_open_hidden(secured_redis: dict[str, Any], credentials: str) -> None:
    """A wrong password fails open() with BackendUnavailableError naming the URL, the password hidden."""
    backend = CacheBackend(f"redis://{credentials}127.0.0.1:{secured_redis['port']}/3")
    with pytest.raises(BackendUnavailableError, match="AuthenticationError|NOAUTH") as info:
        await backend.open()
    assert "s3cret" not in str(info.value)
    assert f"127.0.0.1:{secured_redis['port']}/3" in str(info.value)
    assert not backend.is_open


@pytest.mark.redis
async def test_db_numbers_isolate(secured_redis: dict[str, Any]) -> None:
    """A session saved in db 4 is not in db 5."""
    base = f"redis://sessions:user-secret@127.0.0.1:{secured_redis['port']}"
    key = keys.new_key()
    async with CacheBackend(f"{base}/4") as four, CacheBackend(f"{base}/5") as five:
        await four.save(key, {"v": 4}, 60)
        assert await five.load(key) is None
        assert await four.load(key) == {"v": 4}


@pytest.mark.redis
async def test_tls(secured_redis: dict[str, Any]) -> None:
    """rediss:// with the CA verifies the server (by IP or host name); ssl_cert_reqs=none skips it; client certs."""
    auth = f"sessions:user-secret@127.0.0.1:{secured_redis['tls_port']}"
    ca = f"ssl_ca_certs={secured_redis['cert']}"
    await _round_trip(f"rediss://{auth}/0?{ca}")
    await _round_trip(f"rediss://{auth.replace('127.0.0.1', 'localhost')}/0?{ca}&max_connections=1")
    await _round_trip(f"rediss://{auth}/0?ssl_cert_reqs=none")
    await _round_trip(f"rediss://{auth}/0?{ca}&ssl_certfile={secured_redis['cert']}&ssl_keyfile={secured_redis['key']}")
    with pytest.raises(BackendUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        await CacheBackend(f"rediss://{auth}/0").open()
    with pytest.raises(BackendUnavailableError, match="redis://sessions:\\*\\*\\*@"):
        # plain text against the TLS port: the handshake never completes
        await CacheBackend(f"redis://{auth}/0?socket_connect_timeout=0.3").open()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.mark.redis
async def test_reconnects_after_a_server_restart(restartable_redis: PrivateRedis) -> None:
    """Down: BackendUnavailableError. Restarted: once the reconnection backoff (at most BACKOFF_MAX) has passed,
    every command works again, without reopening the backend."""
    key = keys.new_key()
    async with CacheBackend(f"redis://127.0.0.1:{restartable_redis.port}/0") as backend:
        await backend.save(key, {"v": 1}, 60)
        await asyncio.to_thread(restartable_redis.stop)
        for _ in range(2):
            with pytest.raises(BackendUnavailableError):
                await backend.load(key)
        await asyncio.to_thread(restartable_redis.start)
        await asyncio.sleep(_pool.BACKOFF_MAX)
        await backend.save(key, {"v": 2}, 60)  # the server kept nothing on disk
        assert await backend.load(key) == {"v": 2}


@pytest.mark.redis
async def test_password_sent_to_a_server_without_one_is_refused(restartable_redis: PrivateRedis) -> None:
    """AUTH against a server with no password set fails at open, as redis-py's would."""
    with pytest.raises(BackendUnavailableError, match="AuthenticationError"):
        await CacheBackend(f"redis://:s3cret@127.0.0.1:{restartable_redis.port}/0").open()


async def test_connection_refused_names_the_url_without_password() -> None:
    """Nothing listening: BackendUnavailableError at open naming the URL, password hidden; then again per call."""
    port = free_port()
    backend = CacheBackend(f"redis://user:s3cret@127.0.0.1:{port}/2")
    with pytest.raises(BackendUnavailableError) as info:
        await backend.open()
    message = str(info.value)
    assert f"redis://user:***@127.0.0.1:{port}/2" in message and "s3cret" not in message
    assert "Connect" in message or "refused" in message


# -- bounded time (issue #10) -------------------------------------------------------------------------------------

#: How long a test waits for a command before calling it hung: well past every socket timeout it sets.
HANG = 3.0


async def _finishes(call: Awaitable[Any]) -> BaseException | Any:
    """The call's result or exception; a call that outlives HANG seconds fails the test as hung."""
    try:
        return await asyncio.wait_for(call, HANG)
    except asyncio.TimeoutError:
        pytest.fail(f"a Redis call hung for more than {HANG} s")
    except Exception as exc:
        return exc


@pytest.mark.parametrize("db", ["0", "3"], ids=["no-handshake", "select-handshake"])
async def test_server_closing_every_connection_fails_each_call_without_hanging(db: str) -> None:
    """A server that accepts and closes at once: every call fails with ConnectionError instead of hanging."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()

    server = await asyncio.start_server(accept_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient.from_url(f"redis://127.0.0.1:{port}/{db}?socket_timeout=0.5&max_connections=2")
    try:
        for _ in range(6):
            outcome = await _finishes(client.get("k"))
            assert isinstance(outcome, (ConnectionError, OSError)), outcome
        concurrent = await asyncio.gather(*(_finishes(client.get(f"k{i}")) for i in range(20)))
        assert all(isinstance(outcome, (ConnectionError, OSError)) for outcome in concurrent)
        assert client.connection_count == 0 and accepted
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_command_on_a_connection_lost_meanwhile_fails_at_once(fake_redis: Any) -> None:
    """A command handed to a connection that has just failed gets ConnectionError, not a reply that never comes."""
    url, _ = await fake_redis(echo_key_after({}))
    client = RedisClient.from_url(url)
    try:
        await client.open()
        [connection] = client._connections
        connection.fail(ConnectionError("dropped"))
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(connection.send(_resp._command(b"GET", b"k")), HANG)
        assert await client.get("k") == b"k"  # the client itself reconnects
    finally:
        await client.close()


@pytest.mark.redis
async def test_client_kill_storm_under_400_workers_never_hangs(tmp_path: Path) -> None:
    """CLIENT KILL TYPE normal every 10 ms under 400 concurrent save/load workers: every call ends, then all work."""
    with running_redis(tmp_path) as server:
        admin = RedisClient.from_url(f"redis://127.0.0.1:{server.port}/0?client_name=admin")
        await admin.open()
        stop = asyncio.Event()

        async def killer() -> None:
            while not stop.is_set():
                await _finishes(admin.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
                await asyncio.sleep(0.01)

        async with CacheBackend(f"redis://127.0.0.1:{server.port}/0?socket_timeout=1&max_connections=8") as backend:

            async def worker() -> int:
                calls = 0
                key = keys.new_key()
                while not stop.is_set():
                    await _finishes(backend.save(key, {"n": calls}, 60))
                    await _finishes(backend.load(key))
                    calls += 2
                    await asyncio.sleep(0)  # a call refused during the backoff does not yield by itself
                return calls

            kill = asyncio.ensure_future(killer())
            workers = [asyncio.ensure_future(worker()) for _ in range(400)]
            await asyncio.sleep(1.5)
            stop.set()
            done = await asyncio.wait_for(asyncio.gather(*workers), HANG + 2)
            await kill
            assert sum(done) > 400
            await asyncio.sleep(_pool.BACKOFF_MAX)  # the backoff after the storm's last failed connection
            key = keys.new_key()
            await backend.save(key, {"after": True}, 60)
            assert await backend.load(key) == {"after": True}
        await admin.close()


@pytest.mark.redis
async def test_maxclients_squeeze_recovers_without_stuck_calls(tmp_path: Path) -> None:
    """A brief CONFIG SET maxclients 1: calls fail or succeed but none hangs, and all succeed once it is lifted."""
    with running_redis(tmp_path) as server:
        admin = RedisClient.from_url(f"redis://127.0.0.1:{server.port}/0")
        await admin.open()
        async with CacheBackend(f"redis://127.0.0.1:{server.port}/0?socket_timeout=1&max_connections=8") as backend:
            key = keys.new_key()
            await backend.save(key, {"v": 1}, 60)
            await admin.execute("CONFIG", "SET", "maxclients", "1")
            await admin.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            squeezed = await asyncio.gather(*(_finishes(backend.load(key)) for _ in range(50)))
            await admin.execute("CONFIG", "SET", "maxclients", "10000")
            assert any(isinstance(outcome, BackendUnavailableError) for outcome in squeezed)
            await asyncio.sleep(_pool.BACKOFF_MAX)  # the backoff after the refused connections
            for _ in range(3):  # connections refused during the squeeze are gone; new ones open
                outcomes = await asyncio.gather(*(_finishes(backend.load(key)) for _ in range(50)))
                if all(outcome == {"v": 1} for outcome in outcomes):
                    break
            assert all(outcome == {"v": 1} for outcome in outcomes)
        await admin.close()


async def test_server_that_is_not_redis_is_named_as_such(fake_redis: Any) -> None:
    """A server answering the handshake in another protocol is reported as not Redis, not as a wrong password."""
    http_server = await asyncio.start_server(_answer_http, "127.0.0.1", 0)
    port = http_server.sockets[0].getsockname()[1]
    try:
        for url in (f"redis://:pw@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/4"):
            with pytest.raises(BackendUnavailableError, match="does not answer like Redis") as info:
                await asyncio.wait_for(CacheBackend(url).open(), HANG)
            assert "AuthenticationError" not in str(info.value) and "pw" not in str(info.value)
    finally:
        http_server.close()
        await http_server.wait_closed()


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"$%d\r\n" % (8 * 1024 * 1024) + b"x" * (8 * 1024 * 1024) + b"\r\n",
        b"+" + b"y" * (200 * 1024),
        b"$5\r\nab",
    ],
    ids=["8-MiB-reply", "endless-line", "reply-cut-mid-way"],
)
async def test_hostile_replies_fail_within_the_bound(fake_redis: Any, reply: bytes) -> None:
    """An 8 MiB reply, a line that never ends and a reply cut short all end in BackendUnavailableError."""
    answers = iter([reply])

    async def handler(command: list[bytes]) -> bytes:
        return next(answers, b"$-1\r\n") if command[0] in (b"GET", b"HGETALL") else b":0\r\n"

    url, _ = await fake_redis(handler)
    async with CacheBackend(url + "?socket_timeout=0.5") as backend:
        outcome = await _finishes(backend.load(keys.new_key()))
        assert isinstance(outcome, BackendUnavailableError), outcome
        assert await _finishes(backend.load(keys.new_key())) is None


# -- scripts and hashes (issue #11: sessions merged in the store) ------------------------------------------------


async def test_run_sends_evalsha_then_eval_once_the_server_lacks_the_script(fake_redis: Any) -> None:
    """run() tries EVALSHA; a NOSCRIPT answer (nothing ran) gets the source through EVAL; other errors are raised."""
    seen: list[list[bytes]] = []
    script = _redis.Script("return 7")

    async def handler(command: list[bytes]) -> bytes:
        seen.append(command)
        if command[0] == b"EVALSHA":
            if command[3] == b"boom":
                return b"-ERR boom\r\n"
            return b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
        if command[0] == b"EVAL":
            return b":7\r\n"
        return b"+OK\r\n"

    url, _ = await fake_redis(handler)
    client = RedisClient.from_url(url)
    try:
        assert await client.run(script, ["k"], ["a", 2, b"b"]) == 7
        assert seen == [
            [b"EVALSHA", script.sha, b"1", b"k", b"a", b"2", b"b"],
            [b"EVAL", b"return 7", b"1", b"k", b"a", b"2", b"b"],
        ]
        with pytest.raises(RedisError, match="boom"):
            await client.run(script, ["boom"], [])
        assert seen[-1][0] == b"EVALSHA"
    finally:
        await client.close()


@pytest.mark.redis
async def test_run_and_hgetall_on_the_shared_redis(redis_url: str) -> None:
    """A script runs with its keys and arguments; HGETALL answers fields and values, [] when missing, WRONGTYPE else."""
    client = RedisClient.from_url(redis_url)
    key = KEY_PREFIX + "client-test-" + keys.new_key()
    script = _redis.Script("redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return redis.call('HLEN', KEYS[1])")
    try:
        assert await client.run(script, [key], ['"f"', "[]"]) == 1
        assert await client.run(script, [key], ['"g"', "é"]) == 2
        assert await client.hgetall(key) == [b'"f"', b"[]", b'"g"', "é".encode()]
        assert await client.hgetall(key + ":missing") == []
        await client.delete(key)
        await client.set(key, "text", 60)
        with pytest.raises(RedisError, match="WRONGTYPE"):
            await client.hgetall(key)
    finally:
        await client.delete(key)
        await client.close()


@pytest.mark.redis
async def test_sessions_update_after_the_server_forgets_its_scripts(tmp_path: Path) -> None:
    """After SCRIPT FLUSH (or a restart) every script is sent again through EVAL, and updates keep working."""
    with running_redis(tmp_path) as server:
        async with CacheBackend(f"redis://127.0.0.1:{server.port}/0") as backend:
            key = keys.new_key()
            await backend.save(key, {"a": 1}, 60)
            await backend.update(key, {"b": 2}, (), 60)
            assert await backend._cache.execute("SCRIPT", "FLUSH") == b"OK"
            await backend.update(key, {"c": 3}, ("a",), 60)
            await backend.save(keys.new_key(), {"d": 4}, 60, must_create=True)
            assert await backend.load(key) == {"b": 2, "c": 3}


# -- unix:// sockets -------------------------------------------------------------------------------------------


def test_parse_unix_url() -> None:
    options = parse_url("unix://:s%40cret@/run/redis/redis.sock?db=3&socket_timeout=2")
    assert options.path == "/run/redis/redis.sock" and options.db == 3 and options.password == "s@cret"
    assert options.socket_timeout == 2.0 and not options.tls
    assert parse_url("unix://localhost/tmp/r.sock").path == "/tmp/r.sock"


@pytest.mark.parametrize("url", ["unix://relative.sock", "unix://otherhost/tmp/r.sock", "unix://"])
def test_parse_unix_url_rejects(url: str) -> None:
    with pytest.raises(ValueError, match="socket path"):
        parse_url(url)


@pytest.mark.redis
async def test_sessions_over_a_unix_socket(tmp_path: Path) -> None:
    """A private redis-server listening on a Unix socket (with a password): the whole session life over it."""
    from asession import Session

    socket_path = tmp_path / "redis.sock"
    with running_redis(tmp_path, "--unixsocket", str(socket_path), "--requirepass", "pw"):
        backend = backend_from_url(f"unix://:pw@{socket_path}?db=2")
        async with backend:
            assert repr(backend).count("pw") == 0
            session = Session(backend)
            session["cart"] = [1]
            await session.login("alice")
            reader = Session(backend, session.session_key)
            await reader.load()
            assert dict(reader) == {"cart": [1], "_auth_user_id": "alice"}
            reader["cart"].append(2)
            await reader.save()
            assert (await backend.load(session.session_key))["cart"] == [1, 2]  # type: ignore[arg-type,index]
            assert [info.user_id for info in await backend.user_sessions("alice")] == ["alice"]
        wrong = backend_from_url(f"unix://:nope@{socket_path}")
        with pytest.raises(BackendUnavailableError):
            await wrong.open()


# -- reconnection backoff, ignored options, write buffer (issue #13) ------------------------------------------


async def test_reconnection_backs_off_with_jitter_instead_of_dialling_on_every_command() -> None:
    """After a failed connection, commands fail at once until the jittered backoff has passed; then it dials."""
    port = free_port()
    client = RedisClient.from_url(f"redis://127.0.0.1:{port}/0")
    dials = 0
    loop = asyncio.get_running_loop()
    original = loop.create_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal dials
        dials += 1
        return await original(*args, **kwargs)

    loop.create_connection = counting  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError):
            await client.get("k")  # refused: the first failure
        assert dials == 1
        for _ in range(20):
            with pytest.raises(ConnectionError, match="next attempt is in"):
                await client.get("k")
        assert dials == 1  # no dialling during the backoff
        assert client._retry_at - loop.time() <= _pool.BACKOFF_BASE
        await asyncio.sleep(_pool.BACKOFF_BASE)
        with pytest.raises(OSError):
            await client.get("k")
        assert dials == 2
        waits = []
        for attempt in range(3, 9):
            await asyncio.sleep(max(0.0, client._retry_at - loop.time()))
            with pytest.raises(OSError):
                await client.get("k")
            waits.append(client._retry_at - loop.time())
            assert dials == attempt
        assert all(wait <= _pool.BACKOFF_MAX for wait in waits) and max(waits) > _pool.BACKOFF_BASE * 4
    finally:
        del loop.create_connection
        await client.close()


async def test_redis_py_options_without_meaning_are_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="asession.backends.redis"):
        backend = CacheBackend(f"redis://127.0.0.1:{free_port()}/0?retry_on_timeout=true&socket_read_size=65536")
        for _ in range(2):  # a failed open rebuilds the client: still one warning, at construction
            with pytest.raises(BackendUnavailableError):
                await backend.open()
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert warnings == [
        "Redis URL options retry_on_timeout, socket_read_size are redis-py tuning options this client does not use; "
        "they are ignored."
    ]


async def test_a_server_that_stops_reading_fails_the_connection_instead_of_filling_memory() -> None:
    """Commands buffered beyond MAX_WRITE_BUFFER fail their connection; nothing waits for ever."""

    done = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient.from_url(f"redis://127.0.0.1:{port}/0?max_connections=1&socket_timeout=3")
    try:
        big = b"x" * (1024 * 1024)
        results = []
        for _ in range(40):
            results.append(asyncio.ensure_future(client.execute("SET", "k", big)))
            await asyncio.sleep(0)
        outcomes = await asyncio.wait_for(asyncio.gather(*results, return_exceptions=True), 15)
        assert any(isinstance(outcome, ConnectionError) and "stopped reading" in str(outcome) for outcome in outcomes)
    finally:
        await client.close()
        done.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the handlers close their sockets


# -- health check of a connection lent after a long silence (issue #13) -------------------------------------------


def _pings(port: int) -> int:
    """How many PING commands the server on ``port`` has answered (INFO commandstats)."""
    info = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True, check=True
    ).stdout
    for line in info.splitlines():
        if line.startswith("cmdstat_ping:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def test_a_connection_silent_past_the_interval_is_pinged_before_its_next_command(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        client = _redis.RedisClient(parse_url(f"redis://127.0.0.1:{server.port}/0?health_check_interval=0.2"))
        try:
            await client.get("a")
            before = _pings(server.port)
            await client.get("a")  # right after: no check
            assert _pings(server.port) == before
            await asyncio.sleep(0.3)
            assert await client.get("a") is None
            assert _pings(server.port) == before + 1
            assert client.connection_count == 1  # checked and kept, not replaced
        finally:
            await client.close()


async def test_without_a_health_check_interval_nothing_is_pinged(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        client = _redis.RedisClient(parse_url(f"redis://127.0.0.1:{server.port}/0?health_check_interval=0"))
        try:
            await client.get("a")
            before = _pings(server.port)
            await asyncio.sleep(0.3)
            await client.get("a")
            assert _pings(server.port) == before
        finally:
            await client.close()


async def test_a_silent_connection_that_no_longer_answers_is_replaced_before_the_command_is_lost(
    tmp_path: Path,
) -> None:
    """A connection a NAT or firewall forgot while idle (writes vanish, nothing comes back) fails its PING,
    and the command goes out on a new connection instead of timing out on the dead one."""
    with running_redis(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0?health_check_interval=0.2&socket_timeout=0.5"
        client = _redis.RedisClient(parse_url(url))
        try:
            await client.set("k", "v", 60)
            (dead,) = client._connections
            assert dead._transport is not None
            dead._transport.write = lambda data: None  # type: ignore[method-assign]  # the link is gone
            await asyncio.sleep(0.3)
            assert await client.get("k") == b"v"
            assert dead.closed and dead not in client._connections
        finally:
            await client.close()
