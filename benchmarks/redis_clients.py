"""CPU time per Redis command of the maintained asyncio clients and of asession's lean client (issue #5).

    python -m benchmarks.redis_clients                       # every client that imports, Markdown table
    python -m benchmarks.redis_clients --ops 4000 --repeat 7 --url redis://127.0.0.1:6379/14

For each client: ``GET`` and ``SET key value EX 60`` of a 200-byte session-sized value, first one
command at a time, then from 64 concurrent tasks (like 64 wrk connections on one worker), on uvloop.
The figure is CPU time of this process (``time.process_time``: user + system, every thread, so
valkey-glide's Rust threads count) per command, best of ``--repeat`` runs: the machine is shared,
and the best run is the one least disturbed. Clients that do not import are listed as "not
installed"; different versions of a client need a virtual environment each (see REDIS_CLIENTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONCURRENCY = 64
VALUE = '{"user":"someone@example.com","cart":[1,2,3],"visits":12,"pad":"' + "x" * 140 + '"}'
KEY = "asession:bench-redis-clients"

Get = Callable[[str], Awaitable[Any]]
Set = Callable[[str, str], Awaitable[Any]]
Close = Callable[[], Awaitable[Any]]


@dataclass
class Client:
    get: Get
    set: Set
    close: Close


@dataclass
class Row:
    label: str
    version: str
    figures: dict[str, float] | None  # None: not installed
    note: str = ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


# -- the clients ---------------------------------------------------------------------------------------------


async def lean_client(url: str, max_connections: int) -> Client:
    from asession.backends._redis import RedisClient, parse_url

    options = parse_url(url)
    client = RedisClient(type(options)(**{**options.__dict__, "max_connections": max_connections}))
    await client.open()

    def set_(key: str, value: str) -> Awaitable[Any]:
        return client.set(key, value, 60)

    return Client(client.get, set_, client.close)


async def redis_py_client(url: str) -> Client:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)

    def set_(key: str, value: str) -> Awaitable[Any]:
        return client.set(key, value, ex=60)

    return Client(client.get, set_, client.aclose)


async def aiocache_client(url: str) -> Client:
    from aiocache import RedisCache

    from asession.backends.cache import _SERIALIZER, _passthrough

    parts = urlsplit(url)
    cache = RedisCache(
        serializer=_SERIALIZER,
        timeout=None,
        endpoint=parts.hostname,
        port=parts.port or 6379,
        db=int(parts.path.strip("/") or 0),
    )

    async def get(key: str) -> Any:
        return await cache.get(key, loads_fn=_passthrough)

    def set_(key: str, value: str) -> Awaitable[Any]:
        return cache.raw("set", key, value, ex=60)  # type: ignore[no-any-return]

    return Client(get, set_, cache.client.aclose)


async def coredis_client(url: str) -> Client:
    import coredis  # type: ignore[import-not-found,unused-ignore]  # optional, surveyed when installed

    parts = urlsplit(url)
    client: Any = coredis.Redis(host=parts.hostname, port=parts.port or 6379, db=int(parts.path.strip("/") or 0))
    entered = await client.__aenter__() if hasattr(client, "__aenter__") else client

    def set_(key: str, value: str) -> Awaitable[Any]:
        return entered.set(key, value, ex=60)  # type: ignore[no-any-return]

    async def close() -> None:
        if hasattr(client, "__aexit__"):
            await client.__aexit__(None, None, None)

    return Client(entered.get, set_, close)


async def glide_client(url: str) -> Client:
    import glide  # type: ignore[import-not-found,unused-ignore]  # optional, surveyed when installed

    parts = urlsplit(url)
    config = glide.GlideClientConfiguration(
        [glide.NodeAddress(parts.hostname or "127.0.0.1", parts.port or 6379)],
        database_id=int(parts.path.strip("/") or 0),
    )
    client: Any = await glide.GlideClient.create(config)
    expiry = glide.ExpirySet(glide.ExpiryType.SEC, 60)

    def set_(key: str, value: str) -> Awaitable[Any]:
        return client.set(key, value, expiry=expiry)  # type: ignore[no-any-return]

    return Client(client.get, set_, client.close)


def _hiredis() -> str:
    version = _version("hiredis")
    return f", hiredis {version}" if version else ", no hiredis"


CANDIDATES: list[tuple[str, str, str, Callable[[str], Awaitable[Client]]]] = [
    # label, module that must import, distribution for the version, factory
    ("asession lean (1 connection)", "asession.backends._redis", "asession", lambda url: lean_client(url, 1)),
    ("asession lean (4 connections)", "asession.backends._redis", "asession", lambda url: lean_client(url, 4)),
    ("redis-py", "redis", "redis", redis_py_client),
    ("aiocache on redis-py", "aiocache", "aiocache", aiocache_client),
    ("coredis", "coredis", "coredis", coredis_client),
    ("valkey-glide", "glide", "valkey-glide", glide_client),
]


# -- measuring ------------------------------------------------------------------------------------------------


async def _sequential(command: Callable[[], Awaitable[Any]], ops: int) -> float:
    started = time.process_time()
    for _ in range(ops):
        await command()
    return (time.process_time() - started) / ops * 1e6


async def _concurrent(command: Callable[[], Awaitable[Any]], ops: int) -> float:
    per_task = max(1, ops // CONCURRENCY)

    async def worker() -> None:
        for _ in range(per_task):
            await command()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - started) / (per_task * CONCURRENCY) * 1e6


async def measure(factory: Callable[[str], Awaitable[Client]], url: str, ops: int, repeat: int) -> dict[str, float]:
    client = await factory(url)
    try:
        await client.set(KEY, VALUE)

        def get() -> Awaitable[Any]:
            return client.get(KEY)

        def set_() -> Awaitable[Any]:
            return client.set(KEY, VALUE)

        for warm in (get, set_):
            await _sequential(warm, ops // 10 + 1)
        best: dict[str, float] = {}
        for _ in range(repeat):
            for name, runner, command in [
                ("GET seq", _sequential, get),
                ("SET seq", _sequential, set_),
                ("GET x64", _concurrent, get),
                ("SET x64", _concurrent, set_),
            ]:
                figure = await runner(command, ops)
                best[name] = min(best.get(name, figure), figure)
        return best
    finally:
        await client.close()


async def survey(url: str, ops: int, repeat: int, only: str | None) -> list[Row]:
    rows = []
    for label, module, dist, factory in CANDIDATES:
        if only and only not in label:
            continue
        version = _version(dist)
        if dist == "redis" and version:
            version += _hiredis()
        try:
            importlib.import_module(module)
        except ImportError:
            rows.append(Row(label, version or "-", None))
            continue
        rows.append(Row(label, version, await measure(factory, url, ops, repeat)))
    return rows


def table(rows: list[Row]) -> str:
    columns = ["GET seq", "SET seq", "GET x64", "SET x64"]
    lines = [
        "| client | version | " + " | ".join(f"{c} µs" for c in columns) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for row in rows:
        if row.figures is None:
            cells = ["not installed"] + [""] * (len(columns) - 1)
        else:
            cells = [f"{row.figures[c]:.1f}" for c in columns]
        lines.append(f"| {row.label} | {row.version} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14", help="a Redis database the run may write to")
    parser.add_argument("--ops", type=int, default=4096, help="commands per measurement (default 4096)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is kept (default 5)")
    parser.add_argument("--only", help="measure only the clients whose label contains this text")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed; measuring on asyncio's own loop", file=sys.stderr)
        rows = asyncio.run(survey(args.url, args.ops, args.repeat, args.only))
    else:
        rows = uvloop.run(survey(args.url, args.ops, args.repeat, args.only))
    print(f"Python {sys.version.split()[0]}, CPU µs per command (process_time), best of {args.repeat}")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
