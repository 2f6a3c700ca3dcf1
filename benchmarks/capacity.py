"""Memory per session in Redis and PostgreSQL, measured, and the capacity plan of ``docs/CAPACITY.md`` from it.

    python -m benchmarks.capacity                                 # Redis and PostgreSQL, 300 B and 4 kB, 1M each
    python -m benchmarks.capacity --stores redis --shapes typical --sessions 100000
    python -m benchmarks.capacity --shapes large --redis-config ''    # 4 kB sessions, default Redis settings only

**Redis.** A private ``redis-server`` on a free 127.0.0.1 port (``--save '' --appendonly no``, nothing
shared with other runs), started and stopped here. The first ``--check-at`` sessions (10,000) are signed in
through asession's own backend (``CacheBackend``, ``Session.login()`` with a browser's user agent, idle and
absolute timeouts on, as in production), 256 at a time: each is a Redis hash with its metadata plus the
user's index record, exactly what a deployment stores for a signed-in visitor. The rest, up to
``--sessions``, are ``DUMP`` / ``RESTORE`` copies of the first session and its index record (the same
encoding and TTL) under keys of the same length, pipelined; the last copy is loaded back through the
backend. ``INFO memory``'s ``used_memory`` before and after gives the bytes per session (hash, key, TTL,
index record and Redis's own tables). The sample predicts ``used_memory`` at the full count (memory linear
in the number of sessions: the arithmetic the plan rests on) and the full run checks that prediction. A
second run repeats it with ``--redis-config`` (default ``--hash-max-listpack-value 256``, which keeps a
typical session in Redis's compact listpack encoding).

**PostgreSQL.** A table of its own (``asession_capacity_<pid>``, ``DatabaseBackend(table=...)``) in the
``--postgres-url`` database, dropped at the end. One session is signed in through the backend, which
writes its row and the user's index row; then ``COPY`` writes the full count of both rows in that exact
format (the same text, each under its own key; the key is what varies between sessions, the sizes do
not), and ``pg_total_relation_size`` (heap, TOAST and both indexes) after ``VACUUM ANALYZE`` gives the
bytes per session. One copied session is loaded back through the backend, so a change of storage format
fails here. The payload is random text: PostgreSQL compresses values over 2 kB, and padding that compresses
would measure nothing.

**The shapes.** ``typical``: a signed-in session of about 300 bytes as stored (user id, metadata with user
agent, a CSRF token, a small cart, locale and theme). ``large``: the same with a 3.8 kB draft, about 4 kB.

Nothing stays behind: the Redis server is stopped, the table dropped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness

REDIS_SERVER = "/usr/bin/redis-server"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
CONCURRENCY = 256
#: Session settings as a deployment would have them: both timeouts on, so every session carries its metadata.
IDLE_TIMEOUT = 30 * 60
ABSOLUTE_TIMEOUT = 12 * 60 * 60


# -- the session shapes ------------------------------------------------------------------------------------


def _text(rng: random.Random, length: int) -> str:
    """Random letters and digits: what a CSRF token or user text looks like, and nothing PostgreSQL compresses."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=length))


def session_data(shape: str, i: int) -> dict[str, Any]:
    """The data of session ``i`` before login (which adds the user id and the metadata)."""
    rng = random.Random(i)
    data: dict[str, Any] = {
        "csrf_token": _text(rng, 43),
        "cart": [{"sku": f"SKU-{rng.randrange(10**6):06d}", "qty": rng.randrange(1, 5)}],
        "locale": "en-GB",
        "theme": "dark",
    }
    if shape == "large":
        data["draft"] = _text(rng, 3800)
    elif shape != "typical":
        raise ValueError(f"unknown shape {shape!r}: typical or large")
    return data


def user_id(i: int) -> str:
    """Session ``i``'s user: one session per user, so every session also costs one index record."""
    return f"user-{i:010d}"


def _config() -> Any:
    from asession.config import SessionConfig

    return SessionConfig(idle_timeout=IDLE_TIMEOUT, absolute_timeout=ABSOLUTE_TIMEOUT)


async def sign_in(backend: Any, shape: str, i: int) -> str:
    """Sign session ``i`` in through ``Session.login()``, as a request with a browser's user agent; its key."""
    from asession.session import Session

    session = Session(backend, config=_config())
    session._headers = [(b"user-agent", USER_AGENT.encode())]  # what the middleware hands a session
    session.update(session_data(shape, i))
    await session.login(user_id(i))
    key = session.session_key
    assert key is not None
    return key


async def _drain(pending: Iterator[int], call: Callable[[int], Awaitable[Any]]) -> None:
    for i in pending:
        await call(i)


async def _in_batches(start: int, stop: int, call: Callable[[int], Awaitable[Any]], label: str) -> None:
    """``call(i)`` for ``i`` in ``start .. stop-1``, ``CONCURRENCY`` at a time, with progress on stderr."""
    began = time.monotonic()
    for low in range(start, stop, CONCURRENCY * 40):
        high = min(stop, low + CONCURRENCY * 40)
        pending = iter(range(low, high))
        await asyncio.gather(*(_drain(pending, call) for _ in range(CONCURRENCY)))
        rate = (high - start) / max(time.monotonic() - began, 1e-9)
        print(f"\r{label}: {high - start:,}/{stop - start:,} ({rate:,.0f}/s)   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


# -- Redis -------------------------------------------------------------------------------------------------


@dataclass
class RedisFigures:
    shape: str
    stored_bytes: int  # fields and values of one session's hash, as stored
    sample: int
    sample_bytes: float  # used_memory growth per session over the sample
    sessions: int
    bytes_per_session: float  # used_memory growth per session over the full run
    predicted_used: int  # used_memory at the full count, predicted from the sample
    used_before: int
    used_after: int
    rss_after: int
    session_usage: int  # MEMORY USAGE of the session hash
    index_usage: int  # MEMORY USAGE of its user's index record
    seconds: float

    @property
    def prediction_error(self) -> float:
        return (self.used_after - self.predicted_used) / self.predicted_used


class PrivateRedis:
    """A ``redis-server`` of this run alone on a free 127.0.0.1 port, keeping nothing on disk."""

    def __init__(self, directory: Path, config: list[str] | None = None) -> None:
        self.port = _harness.free_port()
        self.directory = directory
        self.config = config or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        log = self.directory / f"redis-{self.port}.log"
        self.process = _harness.spawn(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.directory), "--logfile", str(log), *self.config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {log}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _harness.stop(process)

    def info(self) -> dict[str, Any]:
        import redis

        client = redis.Redis(port=self.port)
        try:
            info: dict[str, Any] = client.info("memory")
            return info
        finally:
            client.close()

    def usage(self, key: str) -> int:
        """``MEMORY USAGE`` of ``key`` (``SAMPLES 0``: every field counted)."""
        import redis

        client = redis.Redis(port=self.port)
        try:
            return int(client.memory_usage(key, samples=0) or 0)
        finally:
            client.close()

    def stored_bytes(self, key: str) -> int:
        import redis

        client = redis.Redis(port=self.port)
        try:
            fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]  # bytes without decoding
            return sum(len(name) + len(value) for name, value in fields.items())
        finally:
            client.close()


def _copy_redis(port: int, template: dict[str, tuple[bytes, int]], start: int, stop: int, shape: str) -> None:
    """Copies ``start .. stop-1`` of the template's keys with ``RESTORE`` (same encoding, same TTL), pipelined.

    Session ``i`` goes under ``asession:<sha256 of capacity_key(i)>``, so that the backend loads it by that
    key; its index record under the template's index key with its last 10 characters replaced by ``i``.
    """
    import redis

    from asession.backends.cache import KEY_PREFIX

    session = template["session"]
    index_key, index = next((key, value) for key, value in template.items() if key != "session")
    client = redis.Redis(port=port)
    try:
        for low in range(start, stop, 10_000):
            high = min(stop, low + 10_000)
            pipe = client.pipeline(transaction=False)
            for i in range(low, high):
                pipe.restore(KEY_PREFIX + _sha256(capacity_key(i)), session[1], session[0])
                pipe.restore(f"{index_key[:-10]}{i:010d}", index[1], index[0])
            pipe.execute()
            print(f"\rredis {shape}: {high:,}/{stop:,} (copies)   ", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        client.close()


def _dump_template(port: int, session_key: str) -> dict[str, tuple[bytes, int]]:
    """``DUMP`` and ``PTTL`` of the one session hash and the one index record on the server."""
    import redis

    client = redis.Redis(port=port)
    try:
        keys = [key.decode() for key in client.scan_iter(count=100)]
        if len(keys) != 2 or session_key not in keys:
            raise RuntimeError(f"expected the session {session_key} and its user's index record, found {keys}")
        (index_key,) = (key for key in keys if key != session_key)
        return {
            "session": (client.dump(session_key), int(client.pttl(session_key))),  # type: ignore[dict-item]
            index_key: (client.dump(index_key), int(client.pttl(index_key))),  # type: ignore[dict-item]
        }
    finally:
        client.close()


async def measure_redis(directory: Path, shape: str, sessions: int, check_at: int, config: list[str]) -> RedisFigures:
    """``check_at`` sessions of ``shape`` signed in through the backend, then copies up to ``sessions``.

    The first session is the template: its hash and its user's index record are copied with ``DUMP`` /
    ``RESTORE`` (exactly the encoding and TTL the backend produced) under keys of the same length. The
    sample signed in through the backend predicts ``used_memory`` at the full count; the copies check it.
    """
    from asession.backends.cache import KEY_PREFIX, CacheBackend

    server = PrivateRedis(directory, config)
    server.start()
    try:
        backend = CacheBackend(server.url)
        await backend.open()
        try:
            before = int(server.info()["used_memory"])
            began = time.monotonic()
            first_key = await sign_in(backend, shape, 0)
            first_skey = KEY_PREFIX + _sha256(first_key)
            template = _dump_template(server.port, first_skey)
            stored = server.stored_bytes(first_skey)
            session_usage = server.usage(first_skey)
            index_usage = server.usage(next(key for key in template if key != "session"))

            async def one(i: int) -> None:
                await sign_in(backend, shape, i)

            await _in_batches(1, check_at, one, f"redis {shape}")
            at_sample = int(server.info()["used_memory"])
            sample_bytes = (at_sample - before) / check_at
            _copy_redis(server.port, template, check_at, sessions, shape)
            seconds = time.monotonic() - began
            after = server.info()
            expected = session_data(shape, 0)["csrf_token"]
            for key in (first_key, capacity_key(sessions - 1)):
                loaded = await backend.load(key)
                if loaded is None or loaded.get("csrf_token") != expected:
                    raise RuntimeError(f"session {key} did not load back through the backend: {str(loaded)[:80]!r}")
        finally:
            await backend.close()
        return RedisFigures(
            shape=shape + (f" ({' '.join(config)})" if config else ""),
            stored_bytes=stored,
            sample=check_at,
            sample_bytes=sample_bytes,
            sessions=sessions,
            bytes_per_session=(int(after["used_memory"]) - before) / sessions,
            predicted_used=round(before + sample_bytes * sessions),
            used_before=before,
            used_after=int(after["used_memory"]),
            rss_after=int(after["used_memory_rss"]),
            session_usage=session_usage,
            index_usage=index_usage,
            seconds=seconds,
        )
    finally:
        server.stop()


# -- PostgreSQL --------------------------------------------------------------------------------------------


@dataclass
class PostgresFigures:
    shape: str
    sessions: int
    total_bytes: int
    heap_bytes: int
    toast_bytes: int
    index_bytes: int
    row_text_bytes: int  # session_data of the session row and the index row, as stored
    seconds: float

    @property
    def bytes_per_session(self) -> float:
        return self.total_bytes / self.sessions


def capacity_key(i: int) -> str:
    """The session key (cookie value) of copied session ``i``: 32 characters of ``[a-z0-9]``."""
    return f"capacity{i:024d}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _copied_rows(session_row: tuple[str, str, float], index_row: tuple[str, str, float], i: int) -> list[Any]:
    """Session ``i``'s two rows: the template's text under keys of its own (64 hex characters, as the backend's)."""
    return [
        (_sha256(capacity_key(i)), session_row[1], session_row[2]),
        (_sha256(f"capacity-index-{i}"), index_row[1], index_row[2]),
    ]


async def measure_postgres(url: str, shape: str, sessions: int) -> PostgresFigures:
    """A table of its own with ``sessions`` signed-in sessions of ``shape``; dropped before returning."""
    import asyncpg

    from asession.backends.db import DatabaseBackend

    table = f"asession_capacity_{os.getpid()}"
    backend = DatabaseBackend(url, table=table)
    connection = await asyncpg.connect(url)
    try:
        began = time.monotonic()
        await backend.open()
        try:
            first_key = await sign_in(backend, shape, 0)
        finally:
            await backend.close()
        rows = {
            row["session_key"]: (row["session_key"], row["session_data"], row["expire_at"])
            for row in await connection.fetch(f'SELECT session_key, session_data, expire_at FROM "{table}"')
        }
        session_row = rows.pop(_sha256(first_key), None)
        if session_row is None or len(rows) != 1:
            raise RuntimeError(f"expected a session row and a user index row, found {sorted(rows)}")
        (index_row,) = rows.values()
        await connection.execute(f'TRUNCATE "{table}"')
        step = 20_000
        for low in range(0, sessions, step):
            high = min(sessions, low + step)
            records = [row for i in range(low, high) for row in _copied_rows(session_row, index_row, i)]
            await connection.copy_records_to_table(
                table, records=records, columns=["session_key", "session_data", "expire_at"]
            )
            print(f"\rpostgres {shape}: {high:,}/{sessions:,}   ", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        await connection.execute(f'VACUUM ANALYZE "{table}"')
        await backend.open()
        try:
            loaded = await backend.load(capacity_key(sessions - 1))
        finally:
            await backend.close()
        if loaded is None or loaded.get("csrf_token") != session_data(shape, 0)["csrf_token"]:
            raise RuntimeError(f"a copied session did not load back through the backend: {str(loaded)[:80]!r}")
        sizes = await connection.fetchrow(
            "SELECT pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap, "
            "coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast, "
            "pg_indexes_size(c.oid) AS indexes FROM pg_class c WHERE c.relname = $1",
            table,
        )
        assert sizes is not None
        return PostgresFigures(
            shape=shape,
            sessions=sessions,
            total_bytes=int(sizes["total"]),
            heap_bytes=int(sizes["heap"]),
            toast_bytes=int(sizes["toast"]),
            index_bytes=int(sizes["indexes"]),
            row_text_bytes=len(session_row[1].encode()) + len(index_row[1].encode()),
            seconds=time.monotonic() - began,
        )
    finally:
        await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
        await connection.close()


async def time_clear_expired(url: str, shape: str, sessions: int) -> float:
    """Seconds ``clear_expired()`` takes on ``sessions`` expired sessions of ``shape`` (own table, then dropped)."""
    import asyncpg

    from asession.backends.db import DatabaseBackend

    table = f"asession_capacity_expired_{os.getpid()}"
    backend = DatabaseBackend(url, table=table)
    connection = await asyncpg.connect(url)
    try:
        await backend.open()
        try:
            await sign_in(backend, shape, 0)
            text = await connection.fetchval(f'SELECT session_data FROM "{table}" WHERE session_data LIKE $1', "%csrf%")
            await connection.execute(f'TRUNCATE "{table}"')
            past = time.time() - 3600
            for low in range(0, sessions, 20_000):
                records = [(_sha256(capacity_key(i)), text, past) for i in range(low, min(sessions, low + 20_000))]
                await connection.copy_records_to_table(
                    table, records=records, columns=["session_key", "session_data", "expire_at"]
                )
            await connection.execute(f'VACUUM ANALYZE "{table}"')
            began = time.monotonic()
            deleted = await backend.clear_expired()
            seconds = time.monotonic() - began
        finally:
            await backend.close()
        if deleted != sessions:
            raise RuntimeError(f"clear_expired() deleted {deleted} rows, expected {sessions}")
        return seconds
    finally:
        await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
        await connection.close()


# -- the plan ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A deployment for ``sessions`` live sessions and ``rps`` requests/s, from measured per-unit figures."""

    sessions: int
    rps: int
    read_share: float  # of the requests that carry a session, the share that only read it
    redis_bytes: float  # used_memory per signed-in session (hash, key, TTL, index record)
    postgres_bytes: float  # pg_total_relation_size per signed-in session (both rows, heap, TOAST, indexes)
    read_us: float  # app CPU per /read request (uvicorn, Starlette, asession), µs
    write_us: float  # ... per /write request
    shard_data_gib: float = 8.0  # used_memory one Redis master is planned to hold at most
    cpu_target: float = 0.6  # planned busy share of each app core, the rest is headroom for peaks
    postgres_bloat: float = 2.0  # table size over the freshly loaded one, with updates and autovacuum

    @property
    def redis_gib(self) -> float:
        return self.sessions * self.redis_bytes / 2**30

    @property
    def redis_masters(self) -> int:
        """Masters needed for the memory alone; Redis Cluster needs 3 at least."""
        return max(3, math.ceil(self.redis_gib / self.shard_data_gib))

    @property
    def postgres_gib(self) -> float:
        return self.sessions * self.postgres_bytes / 2**30

    @property
    def app_cores(self) -> float:
        """Cores busy with the session path (server, framework, asession) at ``rps``: no app logic."""
        per_request = self.read_share * self.read_us + (1 - self.read_share) * self.write_us
        return self.rps * per_request / 1e6

    @property
    def app_processes(self) -> int:
        """uvicorn worker processes (one core each) at ``cpu_target``, two at least for redundancy."""
        return max(2, math.ceil(self.app_cores / self.cpu_target))


def plan_table(plans: dict[str, Plan]) -> str:
    """The plan as a Markdown table, one column per session shape."""
    names = list(plans)
    rows = [
        ("Redis used_memory, GiB", [f"{p.redis_gib:.1f}" for p in plans.values()]),
        ("Redis Cluster masters (≤ 8 GiB each, 3 at least)", [str(p.redis_masters) for p in plans.values()]),
        ("PostgreSQL table, GiB (fresh / ×2 with bloat)", [
            f"{p.postgres_gib:.1f} / {p.postgres_gib * p.postgres_bloat:.1f}" for p in plans.values()
        ]),
        ("app cores busy with the session path", [f"{p.app_cores:.1f}" for p in plans.values()]),
        ("uvicorn processes at 60 % CPU", [str(p.app_processes) for p in plans.values()]),
    ]  # fmt: skip
    lines = [f"| | {' | '.join(names)} |", f"| --- |{' ---: |' * len(names)}"]
    lines += [f"| {label} | {' | '.join(values)} |" for label, values in rows]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def report(redis: list[RedisFigures], postgres: list[PostgresFigures], expired: dict[str, float]) -> str:
    out = []
    if redis:
        out += [
            "Redis (private redis-server, `INFO memory` used_memory before/after; the sample signed in through the "
            "backend, the rest DUMP/RESTORE copies of its first session)",
            "",
            "| shape | stored bytes | sessions | used_memory growth MiB | bytes/session | at the sample "
            "| predicted from the sample MiB | measured MiB | error | MEMORY USAGE session / index | RSS MiB | s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {f.shape} | {f.stored_bytes} | {f.sessions:,} | {_mib(f.used_after - f.used_before)} "
            f"| {f.bytes_per_session:.0f} | {f.sample_bytes:.0f} ({f.sample:,}) | {_mib(f.predicted_used)} "
            f"| {_mib(f.used_after)} | {f.prediction_error:+.1%} | {f.session_usage:.0f} / {f.index_usage:.0f} "
            f"| {_mib(f.rss_after)} | {f.seconds:.0f} |"
            for f in redis
        ]
        out.append("")
    if postgres:
        out += [
            "PostgreSQL (own table, `pg_total_relation_size` after `VACUUM ANALYZE`; a session row and an index row "
            "per session)",
            "",
            "| shape | row text bytes (session + index) | sessions | total MiB | heap MiB | TOAST MiB | indexes MiB "
            "| bytes/session | clear_expired() of 1M expired s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {f.shape} | {f.row_text_bytes} | {f.sessions:,} | {_mib(f.total_bytes)} | {_mib(f.heap_bytes)} "
            f"| {_mib(f.toast_bytes)} | {_mib(f.index_bytes)} | {f.bytes_per_session:.0f} "
            f"| {expired.get(f.shape, float('nan')):.2f} |"
            for f in postgres
        ]
        out.append("")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> str:
    shapes = args.shapes.split(",")
    stores = args.stores.split(",")
    redis: list[RedisFigures] = []
    postgres: list[PostgresFigures] = []
    expired: dict[str, float] = {}
    directory = Path(tempfile.mkdtemp(prefix="asession-capacity-"))
    try:
        for shape in shapes:
            if "redis" in stores:
                check_at = min(args.check_at, args.sessions)
                redis.append(await measure_redis(directory, shape, args.sessions, check_at, []))
                print(report(redis[-1:], [], {}), flush=True)
                if args.redis_config:
                    config = args.redis_config.split()
                    redis.append(await measure_redis(directory, shape, args.sessions, check_at, config))
                    print(report(redis[-1:], [], {}), flush=True)
            if "postgres" in stores:
                postgres.append(await measure_postgres(args.postgres_url, shape, args.sessions))
                expired[shape] = await time_clear_expired(args.postgres_url, shape, args.sessions)
                print(report([], postgres[-1:], expired), flush=True)
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    text = "All of the above:\n\n" + report(redis, postgres, expired)
    by_shape_redis = {f.shape: f.bytes_per_session for f in redis}
    by_shape_pg = {f.shape: f.bytes_per_session for f in postgres}
    if by_shape_redis and by_shape_pg:
        plans = {
            shape: Plan(
                args.plan_sessions,
                args.plan_rps,
                args.read_share,
                by_shape_redis[shape],
                by_shape_pg[shape],
                args.read_us,
                args.write_us,
            )  # fmt: skip
            for shape in shapes
        }
        text += f"\nPlan for {args.plan_sessions:,} sessions and {args.plan_rps:,} requests/s\n\n{plan_table(plans)}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="redis,postgres", help="redis, postgres or both")
    parser.add_argument("--shapes", default="typical,large", help="typical (about 300 B), large (about 4 kB)")
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--check-at", type=int, default=10_000, help="Redis: sessions signed in through the backend")
    parser.add_argument(
        "--redis-config",
        default="--hash-max-listpack-value 256",
        help="Redis: a second run with these redis-server arguments ('' for none)",
    )
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    parser.add_argument("--plan-sessions", type=int, default=10_000_000)
    parser.add_argument("--plan-rps", type=int, default=20_000)
    parser.add_argument("--read-share", type=float, default=0.8, help="of session requests, those that only read")
    parser.add_argument("--read-us", type=float, default=74.0, help="app CPU µs per /read, timeouts on (RESULTS.md)")
    parser.add_argument("--write-us", type=float, default=98.0, help="app CPU µs per /write, timeouts on")
    args = parser.parse_args(argv)
    _harness.install_cleanup()
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
