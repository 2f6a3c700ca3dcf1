"""The benchmarked ASGI apps: one Starlette app, and one table of session layers to put in front of it.

Every variant serves the same endpoints through the same code, so the only difference between two variants
is the session middleware (and its store):

``/login``     creates the session (``counter = 0``, plus ``BENCH_PAYLOAD`` bytes of padding) and so sets a cookie
``/read``      reads one value and returns it
``/write``     increments the counter, so every request saves, and returns the new value
``/none``      never touches the session (the harness sends it no cookie): the cost of installing the middleware
``/parallel``  sets one key picked at random among ``k0`` … ``k15`` (:data:`PARALLEL_KEYS`) to the next value of a
               process-wide counter and returns it; the harness sends it many overlapping requests that all
               carry one shared session cookie, so concurrent saves of one session meet
``/keys``      not timed: JSON ``{"held": [...], "written": [...]}``, the ``k*`` keys the request's session holds
               and the distinct ``k*`` keys this server process has written (``/parallel`` records them), read
               once after a ``/parallel`` run to see whether overlapping saves lost keys

``uvicorn --factory benchmarks.apps:create_app`` builds the variant named by ``BENCH_VARIANT``. Where the
stores live comes from the environment, which ``benchmarks/run.py`` sets: ``BENCH_DIR`` (a scratch directory
for SQLite and files), ``BENCH_SQLITE_PATH``, ``BENCH_REDIS_URL``, ``BENCH_POSTGRES_URL``,
``BENCH_MEMCACHED_URL``. Nothing here connects at import or construction time; backends open on lifespan.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PARALLEL_KEYS", "VARIANTS", "Variant", "create_app", "settings"]

SECRET_KEY = "benchmark-secret-key-not-for-production-use-0123456789"

DEFAULTS = {
    "BENCH_REDIS_URL": "redis://127.0.0.1:6379/14",
    "BENCH_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/asession_bench",
    "BENCH_MEMCACHED_URL": "memcached://127.0.0.1:11211",
}


def settings(name: str) -> str:
    """An environment setting, with the benchmark defaults above."""
    value = os.environ.get(name) or DEFAULTS.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; benchmarks/run.py sets it before starting the server.")
    return value


def _scratch(*parts: str) -> Path:
    path = Path(settings("BENCH_DIR"), *parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sqlite_path() -> str:
    return os.environ.get("BENCH_SQLITE_PATH") or str(_scratch("sessions.sqlite3"))


# -- endpoints: identical for every variant ------------------------------------------------------------


def _session(request: Request) -> dict[str, Any]:
    # The bare app has no session at all; it then works on a throwaway dict, so its endpoints do the
    # same Python work minus the session layer.
    session: dict[str, Any] | None = request.scope.get("session")
    return session if session is not None else {}


_PAYLOAD = "x" * int(os.environ.get("BENCH_PAYLOAD", "0") or 0)


async def login(request: Request) -> PlainTextResponse:
    session = _session(request)
    session["counter"] = 0
    if _PAYLOAD:
        session["payload"] = _PAYLOAD
    return PlainTextResponse("0")


async def read(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(_session(request).get("counter")))


async def write(request: Request) -> PlainTextResponse:
    session = _session(request)
    counter = session.get("counter", 0) + 1
    session["counter"] = counter
    return PlainTextResponse(str(counter))


async def none(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


#: The keys ``/parallel`` writes: a bounded set, so the shared session stays small however long the run.
PARALLEL_KEYS = tuple(f"k{i}" for i in range(16))
_parallel_values = itertools.count(1)
#: The distinct keys of :data:`PARALLEL_KEYS` this process has written, for ``/keys``. The harness runs
#: ``/parallel`` once per server process, so these are the keys of that one run.
_parallel_written: set[str] = set()


async def parallel(request: Request) -> PlainTextResponse:
    session = _session(request)
    key = random.choice(PARALLEL_KEYS)
    value = next(_parallel_values)
    session[key] = value
    _parallel_written.add(key)
    return PlainTextResponse(str(value))


async def keys(request: Request) -> JSONResponse:
    session = _session(request)
    held = [key for key in PARALLEL_KEYS if key in session]
    return JSONResponse({"held": held, "written": [key for key in PARALLEL_KEYS if key in _parallel_written]})


ROUTES = [
    Route("/login", login),
    Route("/read", read),
    Route("/write", write),
    Route("/none", none),
    Route("/parallel", parallel),
    Route("/keys", keys),
]


# -- session layers ------------------------------------------------------------------------------------


def _bare() -> list[Middleware]:
    return []


def _starlette() -> list[Middleware]:
    from starlette.middleware.sessions import SessionMiddleware

    return [Middleware(SessionMiddleware, secret_key=SECRET_KEY)]


def _starsessions(store: Any) -> list[Middleware]:
    # starsessions 2.x: the middleware only prepares a handler; SessionAutoloadMiddleware loads the
    # session before the endpoint runs, as its README sets it up.
    from starsessions import SessionAutoloadMiddleware, SessionMiddleware

    return [Middleware(SessionMiddleware, store=store, cookie_https_only=False), Middleware(SessionAutoloadMiddleware)]


def _starsessions_cookie() -> list[Middleware]:
    from starsessions import CookieStore

    return _starsessions(CookieStore(secret_key=SECRET_KEY))


def _starsessions_memory() -> list[Middleware]:
    from starsessions import InMemoryStore

    return _starsessions(InMemoryStore())


def _starsessions_redis() -> list[Middleware]:
    from redis.asyncio import Redis
    from starsessions.stores.redis import RedisStore

    return _starsessions(RedisStore(connection=Redis.from_url(settings("BENCH_REDIS_URL"))))


class MinimalRedisSessionMiddleware:
    """A reference point, not a product: the least a Redis session middleware can do with redis-py.

    One GET per request with a cookie, one SET (with a TTL) when the endpoint changed the dict; no key
    hashing, no validation, no expiry bookkeeping. It shows what the client library alone costs.
    """

    def __init__(self, app: ASGIApp, url: str) -> None:
        from redis.asyncio import Redis

        self.app = app
        self.redis = Redis.from_url(url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import json
        import secrets

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope["headers"]:
            if name == b"cookie" and value.startswith(b"session="):
                key = value[8:].split(b";", 1)[0].decode()
        raw = await self.redis.get("minimal:" + key) if key else None
        data: dict[str, Any] = json.loads(raw) if raw else {}
        before = dict(data)
        scope["session"] = data

        async def send_wrapper(message: Message) -> None:
            nonlocal key
            if message["type"] == "http.response.start" and data != before:
                key = key or secrets.token_hex(16)
                await self.redis.set("minimal:" + key, json.dumps(data), ex=1209600)
                message["headers"] = [*message.get("headers", ()), (b"set-cookie", f"session={key}; Path=/".encode())]
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _minimal_redis() -> list[Middleware]:
    return [Middleware(MinimalRedisSessionMiddleware, url=settings("BENCH_REDIS_URL"))]


class BurnMiddleware:
    """A calibration point, not a session layer: spends ``microseconds`` of pure CPU on every HTTP request.

    It shows what a given amount of Python work per request costs in the server's ratio to the bare app,
    so the session layers' ratios can be read as "about as costly as N µs of CPU". On the benchmark
    machine a µs of CPU in the request path costs the server about two µs (fewer requests per event-loop
    pass, more wake-ups on both sides of loopback; see PROFILE.md).
    """

    def __init__(self, app: ASGIApp, microseconds: float) -> None:
        self.app = app
        self.seconds = microseconds / 1e6

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            deadline = time.perf_counter() + self.seconds
            while time.perf_counter() < deadline:
                pass
        await self.app(scope, receive, send)


def _burn(microseconds: float) -> Callable[[], list[Middleware]]:
    def build() -> list[Middleware]:
        return [Middleware(BurnMiddleware, microseconds=microseconds)]

    return build


def _asession(make_backend: Callable[[], Any], **config: Any) -> Callable[[], list[Middleware]]:
    def build() -> list[Middleware]:
        from asession import SessionConfig, SessionMiddleware

        return [Middleware(SessionMiddleware, backend=make_backend(), config=SessionConfig(**config))]

    return build


#: The demo's timeouts: 30 minutes idle, 12 hours absolute (the ``*-idle`` variants).
IDLE_TIMEOUTS = {"idle_timeout": 30 * 60, "absolute_timeout": 12 * 60 * 60}


def _from_url(url: str) -> Any:
    from asession.backends import backend_from_url

    return backend_from_url(url)


def _memory() -> Any:
    from asession.backends.memory import MemoryBackend

    return MemoryBackend()


def _memory_encrypted() -> Any:
    from asession.backends.memory import MemoryBackend

    return MemoryBackend(encrypt_at_rest=True)


def _sqlite() -> Any:
    from asession.backends.db import DatabaseBackend

    return DatabaseBackend(_sqlite_path())


def _file() -> Any:
    from asession.backends.file import FileBackend

    directory = _scratch("files", "x").parent
    directory.mkdir(parents=True, exist_ok=True)
    return FileBackend(str(directory))


def _cache_memory() -> Any:
    from asession.backends.cache import CacheBackend

    return CacheBackend("memory://")


def _redis() -> Any:
    from asession.backends.cache import CacheBackend

    return CacheBackend(settings("BENCH_REDIS_URL"))


def _redis_encrypted() -> Any:
    from asession.backends.cache import CacheBackend

    return CacheBackend(settings("BENCH_REDIS_URL"), encrypt_at_rest=True)


def _memcached() -> Any:
    from asession.backends.cache import CacheBackend

    return CacheBackend(settings("BENCH_MEMCACHED_URL"))


def _postgres() -> Any:
    from asession.backends.db import DatabaseBackend

    return DatabaseBackend(settings("BENCH_POSTGRES_URL"))


def _cached_db() -> Any:
    from asession.backends.cache import CacheBackend
    from asession.backends.cached_db import CachedDatabaseBackend
    from asession.backends.db import DatabaseBackend

    return CachedDatabaseBackend(DatabaseBackend(_sqlite_path()), CacheBackend("memory://"))


def _signed_cookies() -> Any:
    from asession.backends.signed_cookies import SignedCookieBackend

    return SignedCookieBackend(SECRET_KEY)


def _encrypted_cookies() -> Any:
    from asession.backends.encrypted_cookies import EncryptedCookieBackend

    return EncryptedCookieBackend(SECRET_KEY)


# -- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One benchmarked session layer.

    ``needs`` names the servers it talks to (``redis``, ``postgres``, ``memcached``); ``stateful`` is
    False only for the bare app, whose counter cannot persist; ``default`` puts it in a plain run.
    """

    name: str
    label: str
    group: str
    build: Callable[[], list[Middleware]]
    needs: tuple[str, ...] = ()
    stateful: bool = True
    default: bool = True


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("bare", "bare Starlette (no sessions)", "ceiling", _bare, stateful=False),
        Variant(
            "burn-5us", "calibration: 5 µs of CPU per request, no sessions", "calibration", _burn(5), stateful=False
        ),
        Variant(
            "burn-10us", "calibration: 10 µs of CPU per request, no sessions", "calibration", _burn(10), stateful=False
        ),
        Variant("starlette", "Starlette SessionMiddleware", "peer", _starlette),
        Variant("starsessions-cookie", "starsessions CookieStore", "peer", _starsessions_cookie),
        Variant("starsessions-memory", "starsessions InMemoryStore", "peer", _starsessions_memory),
        Variant("starsessions-redis", "starsessions RedisStore", "peer", _starsessions_redis, ("redis",)),
        Variant("asession-memory", "asession MemoryBackend", "asession", _asession(_memory)),
        Variant("asession-sqlite", "asession DatabaseBackend (SQLite)", "asession", _asession(_sqlite)),
        Variant("asession-file", "asession FileBackend", "asession", _asession(_file)),
        Variant(
            "asession-cache-memory", "asession CacheBackend (aiocache memory)", "asession", _asession(_cache_memory)
        ),
        Variant("asession-redis", "asession CacheBackend (Redis)", "asession", _asession(_redis), ("redis",)),
        Variant(
            "asession-memory-idle",
            "asession MemoryBackend, 30 min idle and 12 h absolute timeouts",
            "asession",
            _asession(_memory, **IDLE_TIMEOUTS),
            default=False,
        ),
        Variant(
            "asession-redis-idle",
            "asession CacheBackend (Redis), 30 min idle and 12 h absolute timeouts",
            "asession",
            _asession(_redis, **IDLE_TIMEOUTS),
            ("redis",),
            default=False,
        ),
        Variant(
            "asession-memcached", "asession CacheBackend (memcached)", "asession", _asession(_memcached), ("memcached",)
        ),
        Variant(
            "asession-postgres",
            "asession DatabaseBackend (PostgreSQL)",
            "asession",
            _asession(_postgres),
            ("postgres",),
        ),
        Variant(
            "asession-cached-db", "asession CachedDatabaseBackend (SQLite + memory)", "asession", _asession(_cached_db)
        ),
        Variant("asession-signed-cookies", "asession SignedCookieBackend", "asession", _asession(_signed_cookies)),
        Variant(
            "asession-encrypted-cookies",
            "asession EncryptedCookieBackend (AES-256-GCM)",
            "asession",
            _asession(_encrypted_cookies),
            default=False,
        ),
        Variant(
            "asession-memory-encrypted",
            "asession MemoryBackend, encrypt_at_rest=True",
            "asession",
            _asession(_memory_encrypted),
            default=False,
        ),
        Variant(
            "asession-redis-encrypted",
            "asession CacheBackend (Redis), encrypt_at_rest=True",
            "asession",
            _asession(_redis_encrypted),
            ("redis",),
            default=False,
        ),
        Variant(
            "ref-redis-minimal",
            "reference: minimal redis-py GET/SET middleware",
            "reference",
            _minimal_redis,
            ("redis",),
            default=False,
        ),
    ]
}


def build_app(name: str) -> Starlette:
    """Build the app for variant ``name``; raises ``KeyError`` for an unknown name, ``ImportError``
    (or the backend's own error) when its backend cannot be constructed here."""
    return Starlette(routes=ROUTES, middleware=VARIANTS[name].build())


def create_app() -> Starlette:
    """The uvicorn factory: the variant named by ``BENCH_VARIANT``."""
    return build_app(os.environ["BENCH_VARIANT"])
