"""Security by construction: hashed keys in every store, JSON only, bounded sizes, fixation, logout, cookies, expiry.

Each test names the attack it closes. ``docs/SECURITY.md`` maps these tests to OWASP ASVS 4.0.3 V3 and the
OWASP Session Management Cheat Sheet.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asession
from asession import Session, SessionConfig, SessionError, SessionMiddleware, keys
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.backends.cache import CacheBackend
from asession.backends.memory import MemoryBackend
from tests.conftest import SECRET, Clock
from tests.servers import POSTGRES_TABLE

PACKAGE = Path(asession.__file__).resolve().parent
#: Modules that turn stored bytes into code or arbitrary objects.
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "jsonpickle", "marshal", "shelve", "yaml"}


# -- the app ---------------------------------------------------------------------------------------------


def make_app(backend: SessionBackend, config: SessionConfig | None = None) -> Starlette:
    async def login(request: Request) -> JSONResponse:
        session: Session = request.scope["session"]
        await session.cycle_key()  # a new key on every change of privilege
        session["user"] = request.query_params.get("user", "alice")
        return JSONResponse({"user": session["user"]})

    async def logout(request: Request) -> JSONResponse:
        session: Session = request.scope["session"]
        await session.flush()
        return JSONResponse({})

    async def remember(request: Request) -> JSONResponse:
        request.session["note"] = request.query_params["note"]
        return JSONResponse({})

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.session.get("user"), "note": request.session.get("note")})

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/remember", remember, methods=["POST"]),
            Route("/whoami", whoami),
        ]
    )
    app.add_middleware(SessionMiddleware, backend=backend, config=config)
    return app


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def with_cookie(key: str) -> dict[str, str]:
    return {"cookie": f"session={key}"}


def session_key_of(response: httpx.Response) -> str:
    match = re.match(r"session=([a-z0-9]+);", response.headers["set-cookie"])
    assert match, response.headers["set-cookie"]
    return match.group(1)


def backend_name(request: pytest.FixtureRequest) -> str:
    """The server-side fixture's name, its ``encrypt_at_rest`` variant named as the plain one (same store)."""
    name: str = request.node.callspec.params["server_backend"]
    return name.replace("_encrypted_backend", "_backend")


# -- what a dump of each store shows -----------------------------------------------------------------------


def reachable_bytes(root: object) -> bytes:
    """Every str and bytes reachable from ``root`` through asession's and aiocache's objects and containers."""
    seen: set[int] = set()
    found: list[bytes] = []
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str):
            found.append(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, (bytes, bytearray)):
            found.append(bytes(item))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif type(item).__module__.startswith(("asession", "aiocache")):
            stack.extend(getattr(item, "__dict__", {}).values())
            for cls in type(item).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(item, slot):
                        stack.append(getattr(item, slot))
    return b"\n".join(found)


async def dump_store(request: pytest.FixtureRequest, backend: SessionBackend) -> bytes:
    """What an attacker who copied the store would hold: in-process objects, files, rows and Redis keys."""
    name = backend_name(request)
    parts = [reachable_bytes(backend)]
    if name in ("sqlite_backend", "cached_db_backend"):
        sqlite_path: Path = request.getfixturevalue("sqlite_path")
        parts.append(read_files(sqlite_path.with_name(sqlite_path.name + suffix) for suffix in ("", "-wal", "-shm")))
    if name == "file_backend":
        session_dir: Path = request.getfixturevalue("session_dir")
        parts.append(read_directory(session_dir))
    if name in ("postgres_backend", "pgbouncer_backend"):
        import asyncpg

        connection = await asyncpg.connect(request.getfixturevalue("postgres_url"))
        try:
            rows = await connection.fetch(f'SELECT row_to_json(t)::text FROM "{POSTGRES_TABLE}" t')
        finally:
            await connection.close()
        parts += [row[0].encode() for row in rows]
    if name == "redis_backend":
        parts += [key + b"\n" + value for key, value in (await redis_items(request.getfixturevalue("redis_url")))]
    if name in ("redis_cluster_backend", "redis_py_backend"):  # the backend's own redis-py client reaches the store
        assert isinstance(backend, CacheBackend)
        parts += [key + b"\n" + value for key, value in (await redis_client_items(backend._cache.client))]
    return b"\n".join(parts)


def read_directory(directory: Path) -> bytes:
    """The names and contents of the files in ``directory``."""
    return read_files(directory.iterdir())


def read_files(paths: Iterable[Path]) -> bytes:
    """The names and contents of the files among ``paths`` that exist."""
    return b"\n".join(path.name.encode() + b"\n" + path.read_bytes() for path in paths if path.is_file())


async def redis_items(url: str) -> list[tuple[bytes, bytes]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return await redis_client_items(client)
    finally:
        await client.aclose()


async def redis_client_items(client: Any) -> list[tuple[bytes, bytes]]:
    """asession's keys and their values through a redis-py client (a cluster client scans every node)."""
    from asession.backends.cache import KEY_PREFIX

    items = []
    # The database is shared with other test runs: asession's keys only, by SCAN rather than KEYS *.
    async for key in client.scan_iter(match=KEY_PREFIX + "*", count=1000):
        assert isinstance(key, bytes)
        value: bytes
        if await client.type(key) == b"hash":  # a session: its fields and values, key by key, in turn
            fields: dict[bytes, bytes] = await client.hgetall(key)  # bytes: no decode_responses
            value = b"".join(f + b"\n" + v for f, v in fields.items())
        else:
            stored = await client.get(key)
            assert isinstance(stored, (bytes, type(None)))
            value = stored or b""
        items.append((key, value))
    return items


async def redis_session_text(url: str, key: str) -> bytes:
    """The JSON object a Redis session hash spells: ``{field:value,...}`` from its fields and values."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        fields: dict[bytes, bytes] = await client.hgetall(key)  # type: ignore[assignment]  # bytes: no decode_responses
    finally:
        await client.aclose()
    return b"{" + b",".join(f + b":" + v for f, v in fields.items()) + b"}"


async def memcached_get(url: str, key: str) -> bytes | None:
    from urllib.parse import urlsplit

    import aiomcache

    parts = urlsplit(url)
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    try:
        value: bytes | None = await client.get(key.encode())
        return value
    finally:
        await client.close()


# -- hashed keys -----------------------------------------------------------------------------------------


async def test_store_dump_reveals_no_session_key(
    server_backend: SessionBackend, request: pytest.FixtureRequest
) -> None:
    """After a save, the store holds the data under sha256(key), never the session key a cookie could replay."""
    marker = f"marker-{secrets.token_hex(8)}"
    async with client_for(make_app(server_backend)) as client:
        response = await client.post("/remember", params={"note": marker})
        key = session_key_of(response)
        assert (await client.post("/login")).status_code == 200  # a cycled key is stored the same way
        cycled = client.cookies["session"]
        assert (await client.get("/whoami")).json() == {"user": "alice", "note": marker}
    if not server_backend.hashes_keys:
        # DjangoDatabaseBackend keeps keys raw because Django looks sessions up by them (documented next to
        # the guarantee); tests/backends/test_django.py reads its table.
        assert server_backend._storage_key(cycled) == cycled
        return
    if backend_name(request) == "memcached_backend":
        # memcached cannot list its keys: ask for every name the session could be stored under.
        from asession.backends.cache import KEY_PREFIX

        url = request.getfixturevalue("memcached_url")
        for raw in (key, cycled):
            for guess in (raw, KEY_PREFIX + raw, raw.upper()):
                assert await memcached_get(url, guess) is None
        dump = await memcached_get(url, KEY_PREFIX + keys.storage_key(cycled)) or b""
        assert dump
        assert (marker.encode() in dump) is not server_backend.encrypt_at_rest
        return
    dump = await dump_store(request, server_backend)
    if server_backend.encrypt_at_rest:  # the data too is out of reach (tests/test_encrypt_at_rest.py)
        assert marker.encode() not in dump
    else:
        assert marker.encode() in dump, "the dump must reach the stored session, or this test proves nothing"
    assert keys.storage_key(cycled).encode() in dump
    for raw in (key, cycled):
        assert raw.encode() not in dump
        assert raw.upper().encode() not in dump


# -- JSON only -------------------------------------------------------------------------------------------


def _unsafe_uses(tree: ast.AST) -> list[str]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [alias.name for alias in node.names if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in UNSAFE_MODULES:
                uses.append(node.module)
            uses += [alias.name for alias in node.names if "pickle" in alias.name.lower()]
        elif isinstance(node, ast.Name) and "pickle" in node.id.lower():
            uses.append(node.id)
        elif isinstance(node, ast.Attribute) and "pickle" in node.attr.lower():
            uses.append(node.attr)
        elif isinstance(node, ast.Constant) and node.value in UNSAFE_MODULES:
            uses.append(repr(node.value))  # importlib.import_module("pickle")
    return uses


def test_package_source_never_uses_pickle() -> None:
    """No module of asession imports or names pickle, marshal, shelve, dill or yaml (docstrings aside)."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    found = {
        str(path.relative_to(PACKAGE)): uses
        for path in sources
        if (uses := _unsafe_uses(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert found == {}


def test_unsafe_use_detector_finds_pickle() -> None:
    """The source check above flags the usual ways in (so it can fail)."""
    code = (
        "import pickle\nfrom aiocache.serializers import PickleSerializer\nimport importlib\n"
        "importlib.import_module('marshal')\nx.loads = pickle.loads\n"
    )
    assert len(_unsafe_uses(ast.parse(code))) >= 4
    assert _unsafe_uses(ast.parse('"""We never pickle anything."""\nimport json\n')) == []


CACHE_STORES = [
    pytest.param("cache_memory_backend", id="cache-memory"),
    pytest.param("redis_backend", id="redis", marks=pytest.mark.redis),
    pytest.param("memcached_backend", id="memcached", marks=pytest.mark.memcached),
]


@pytest.fixture(params=CACHE_STORES)
def cache_backend(request: pytest.FixtureRequest) -> tuple[str, SessionBackend]:
    """Each CacheBackend store, with its fixture name."""
    backend: SessionBackend = request.getfixturevalue(request.param)
    return request.param, backend


async def test_cache_stores_hold_json_text(
    cache_backend: tuple[str, SessionBackend], request: pytest.FixtureRequest
) -> None:
    """Every cache store holds the session as JSON text, never a pickle."""
    from asession.backends.cache import KEY_PREFIX

    backend_fixture, backend = cache_backend
    key = keys.new_key()
    data = {"user": "alice", "cart": [1, 2], "nested": {"é": None}}
    await backend.save(key, data, 3600)
    skey = KEY_PREFIX + keys.storage_key(key)
    raw: object
    if backend_fixture == "redis_backend":
        # A Redis session is a hash of per-key JSON values: each field is a key's JSON text, each value JSON.
        raw = await redis_session_text(request.getfixturevalue("redis_url"), skey)
    elif backend_fixture == "memcached_backend":
        raw = await memcached_get(request.getfixturevalue("memcached_url"), skey)
    else:
        raw = backend._cache._cache.get(skey)  # type: ignore[attr-defined]  # aiocache's in-memory dict
    assert isinstance(raw, (str, bytes)), raw
    text = raw.decode() if isinstance(raw, bytes) else raw
    assert not text.startswith("\x80"), "a pickle protocol header"
    assert json.loads(text) == data


async def test_cache_backend_ignores_a_pickle_serializer_of_a_user_cache() -> None:
    """A user-supplied aiocache cache built with PickleSerializer still receives JSON text, never pickles."""
    from aiocache import SimpleMemoryCache
    from aiocache.serializers import PickleSerializer

    from asession.backends.cache import KEY_PREFIX, CacheBackend

    cache = SimpleMemoryCache(serializer=PickleSerializer())
    async with CacheBackend(cache) as backend:
        key = keys.new_key()
        await backend.save(key, {"user": "alice"}, 3600)
        raw = cache._cache[KEY_PREFIX + keys.storage_key(key)]
        assert isinstance(raw, str) and json.loads(raw) == {"user": "alice"}
        assert await backend.load(key) == {"user": "alice"}


# -- corrupt and oversized data ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "oversize"])
async def test_damaged_stored_session_loads_empty_and_logs_security(
    server_backend: SessionBackend, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored session that is not JSON, or over max_size, loads empty and is logged on asession.security."""
    app = make_app(server_backend)
    async with client_for(app) as client:
        key = session_key_of(await client.post("/login", params={"user": "x" * 500}))
        if damage == "corrupt":
            await server_backend._save(server_backend._storage_key(key), '{"user": "alice", "tru', 3600, False)
        else:
            server_backend.max_size = 400  # a store filled by a process with a higher limit
        with caplog.at_level(logging.WARNING, logger="asession.security"):
            response = await client.get("/whoami")
        assert (response.status_code, response.json()) == (200, {"user": None, "note": None})
        assert [r for r in caplog.records if r.name == "asession.security" and r.levelno >= logging.WARNING]
        response = await client.post("/remember", params={"note": "fresh"})
        assert response.status_code == 200
        assert session_key_of(response) != key, "a damaged session is never resumed under its old key"


def _backend_factories(tmp_path: Path) -> dict[str, Callable[[int], SessionBackend]]:
    from asession.backends.cache import CacheBackend
    from asession.backends.cached_db import CachedDatabaseBackend
    from asession.backends.db import DatabaseBackend
    from asession.backends.file import FileBackend

    factories: dict[str, Callable[[int], SessionBackend]] = {
        "memory": lambda size: MemoryBackend(max_size=size),
        "sqlite": lambda size: DatabaseBackend(str(tmp_path / "s.sqlite3"), max_size=size),
        "file": lambda size: FileBackend(str(tmp_path), max_size=size),
        "cache-memory": lambda size: CacheBackend("memory://", max_size=size),
    }
    factories["cached-db"] = lambda size: CachedDatabaseBackend(
        DatabaseBackend(str(tmp_path / "c.sqlite3")), CacheBackend("memory://"), max_size=size
    )
    return factories


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file", "cache-memory", "cached-db"])
async def test_max_size_is_configurable_and_refuses_big_sessions(tmp_path: Path, kind: str) -> None:
    """Every server-side backend takes max_size (default 1 MiB); a bigger session raises SessionError on save."""
    factory = _backend_factories(tmp_path)[kind]
    assert factory(DEFAULT_MAX_SIZE).max_size == DEFAULT_MAX_SIZE == 1024 * 1024
    async with factory(200) as backend:
        assert backend.max_size == 200
        session = Session(backend)
        session["blob"] = "x" * 150
        await session.save()  # under the limit
        stored = session.session_key
        session["blob"] = "x" * 300
        with pytest.raises(SessionError, match=r"over the limit of 200 bytes.*max_size"):
            await session.save()
        assert stored is not None and await backend.load(stored) == {"blob": "x" * 150}, "nothing was written"


# -- fixation, logout, transport -----------------------------------------------------------------------------


async def test_login_cycle_key_retires_the_old_cookie(server_backend: SessionBackend) -> None:
    """cycle_key on login issues a new key; the pre-login cookie no longer loads anything."""
    async with client_for(make_app(server_backend)) as client:
        before = session_key_of(await client.post("/remember", params={"note": "anonymous cart"}))
        response = await client.post("/login")
        after = session_key_of(response)
        assert after != before
        assert (await client.get("/whoami")).json() == {"user": "alice", "note": "anonymous cart"}
    async with client_for(make_app(server_backend)) as attacker:
        response = await attacker.get("/whoami", headers=with_cookie(before))
        assert response.json() == {"user": None, "note": None}
    assert await server_backend.load(before) is None


async def test_planted_unknown_key_is_never_adopted(server_backend: SessionBackend) -> None:
    """A well-formed key the server never issued is replaced by a fresh one on save, even without cycle_key."""
    planted = keys.new_key()
    async with client_for(make_app(server_backend)) as victim:
        response = await victim.post("/remember", params={"note": "secret"}, headers=with_cookie(planted))
        issued = session_key_of(response)
    assert issued != planted
    assert await server_backend.load(planted) is None
    assert await server_backend.load(issued) == {"note": "secret"}


async def test_logout_flush_invalidates_the_cookie_server_side(server_backend: SessionBackend) -> None:
    """After logout the cookie is expired and the old key, replayed, resumes nothing."""
    async with client_for(make_app(server_backend)) as client:
        key = session_key_of(await client.post("/login"))
        response = await client.post("/logout")
        assert response.headers["set-cookie"].startswith('session=""; Max-Age=0; Expires=Thu, 01 Jan 1970')
    assert await server_backend.load(key) is None
    async with client_for(make_app(server_backend)) as replay:
        assert (await replay.get("/whoami", headers=with_cookie(key))).json() == {"user": None, "note": None}


async def test_session_key_in_url_is_ignored(memory_backend: SessionBackend) -> None:
    """A session key in the query string or path is never used: only the cookie carries it."""
    async with client_for(make_app(memory_backend)) as client:
        key = session_key_of(await client.post("/login"))
    async with client_for(make_app(memory_backend)) as other:
        response = await other.get("/whoami", params={"session": key, "sessionid": key})
        assert response.json() == {"user": None, "note": None}
        assert "set-cookie" not in response.headers


async def test_cookie_defaults_are_httponly_lax_and_host_wide(memory_backend: SessionBackend) -> None:
    """By default the cookie is HttpOnly, SameSite=Lax, Path=/, with no Domain (only the host that set it)."""
    async with client_for(make_app(memory_backend)) as client:
        header = (await client.post("/login")).headers["set-cookie"]
    attributes = [part.strip() for part in header.split(";")[1:]]
    assert "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
    assert "Path=/" in attributes
    assert not any(a.lower().startswith("domain=") for a in attributes)
    assert "Secure" not in attributes  # Django's default; production sets cookie_secure=True (docs/SECURITY.md)


async def test_cookie_secure_host_prefix_and_strict_are_configurable(memory_backend: SessionBackend) -> None:
    """With cookie_secure, a __Host- name and SameSite=Strict, the cookie carries Secure and Strict."""
    config = SessionConfig(cookie_name="__Host-session", cookie_secure=True, cookie_samesite="strict")
    async with client_for(make_app(memory_backend, config)) as client:
        header = (await client.post("/login")).headers["set-cookie"]
    assert header.startswith("__Host-session=")
    attributes = [part.strip() for part in header.split(";")[1:]]
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert not any(a.lower().startswith("domain=") for a in attributes)


# -- the key itself ----------------------------------------------------------------------------------------


def test_session_keys_have_over_128_bits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are 32 characters over 36 symbols (165 bits), drawn from the secrets module, and never repeat."""
    assert keys.KEY_LENGTH * math.log2(len(keys.VALID_KEY_CHARS)) > 128
    drawn = [keys.new_key() for _ in range(2000)]
    assert len(set(drawn)) == len(drawn)
    calls: list[int] = []

    def fake_randbelow(limit: int) -> int:
        calls.append(limit)
        return 0

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    assert keys.new_key() == keys.VALID_KEY_CHARS[0] * keys.KEY_LENGTH
    assert calls, "new_key must draw from secrets"


def test_storage_key_is_sha256_of_the_key() -> None:
    """The storage key is the SHA-256 hex digest of the session key (a one-way function)."""
    key = keys.new_key()
    assert keys.storage_key(key) == hashlib.sha256(key.encode()).hexdigest()


# -- expiry ------------------------------------------------------------------------------------------------


async def test_idle_timeout_with_save_every_request_ends_inactive_sessions(
    memory_backend: SessionBackend, clock: Clock
) -> None:
    """With save_every_request, activity keeps a session alive and max_age of inactivity ends it."""
    config = SessionConfig(max_age=600, save_every_request=True)
    async with client_for(make_app(memory_backend, config)) as client:
        key = session_key_of(await client.post("/login"))
        for _ in range(3):
            clock.advance(500)  # active within every 10 minutes: still logged in after 25 minutes
            assert (await client.get("/whoami", headers=with_cookie(key))).json()["user"] == "alice"
        clock.advance(601)
        assert (await client.get("/whoami", headers=with_cookie(key))).json()["user"] is None
    assert await memory_backend.load(key) is None


async def test_absolute_expiry_ends_session_despite_activity(memory_backend: SessionBackend, clock: Clock) -> None:
    """A session given a fixed expiry date ends then, however active it is."""
    app = make_app(memory_backend, SessionConfig(save_every_request=True))
    async with client_for(app) as client:
        key = session_key_of(await client.post("/login"))
        session = Session(memory_backend, key)
        await session.load()
        session.set_expiry(clock.current + timedelta(hours=12))
        await session.save()
        for _ in range(11):
            clock.advance(3600)
            assert (await client.get("/whoami", headers=with_cookie(key))).json()["user"] == "alice"
        clock.advance(3601)
        assert (await client.get("/whoami", headers=with_cookie(key))).json()["user"] is None


async def test_signed_cookie_tampering_loads_empty(caplog: pytest.LogCaptureFixture) -> None:
    """A signed-cookie session whose payload was altered by one character is rejected and logged."""
    from asession.backends.signed_cookies import SignedCookieBackend

    async with SignedCookieBackend(SECRET) as backend, client_for(make_app(backend)) as client:
        response = await client.post("/login", params={"user": "alice"})
        value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        assert (await client.get("/whoami", headers=with_cookie(value))).json()["user"] == "alice"
        index = len(value) // 2
        forged = value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]
        with caplog.at_level(logging.WARNING, logger="asession.security"):
            response = await client.get("/whoami", headers=with_cookie(forged))
        assert response.json() == {"user": None, "note": None}
        assert [r for r in caplog.records if r.name == "asession.security"]


def test_security_doc_cites_only_existing_tests() -> None:
    """Every ``tests/...py::test_name`` that docs/SECURITY.md cites as proof is a test that exists."""
    doc = (PACKAGE.parent / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", doc))
    assert len(cited) > 30
    missing = []
    for path, name in sorted(cited):
        source = (PACKAGE.parent / path).read_text(encoding="utf-8") if (PACKAGE.parent / path).exists() else ""
        if not re.search(rf"^(async )?def {name}\(", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert missing == []
