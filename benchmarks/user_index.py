"""The per-user index at scale: ``user_sessions()`` and revocation against stores of 1k and 1M sessions.

    python -m benchmarks.user_index                       # SQLite, PostgreSQL, Redis; 1k and 1M sessions
    python -m benchmarks.user_index --sizes 1000,100000 --stores sqlite

For each store and size: fill the store with that many anonymous sessions (``benchmarks/populate.py``,
the format the backends write), sign one user in on 5 sessions through ``Session.login()``, then time
``backend.user_sessions(user)`` (best and median of ``--repeat`` calls, in µs), one
``revoke_session()`` and one ``revoke_user_sessions()``. The index is one record per user and a listing
reads it and that user's sessions, so the figures should not move with the size of the store; this is
where that claim is measured. Everything it stores is removed at the end: the SQLite file, the PostgreSQL
database it creates (``asession_bench_users_<pid>``), and the Redis database's keys (``/14`` by default,
which must be empty at the start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import populate
from benchmarks.apps import DEFAULTS

USER = "bench-user"
DEVICES = 5


async def _measure(store: Any, size: int, repeat: int) -> dict[str, float]:
    from asession import Session

    await store.prepare()
    if size:
        await store.fill(0, size)
    backend = store.backend()
    await backend.open()
    try:
        sessions = []
        for _ in range(DEVICES):
            session = Session(backend)
            await session.login(USER)
            sessions.append(session)
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            infos = await backend.user_sessions(USER)
            timings.append((time.perf_counter() - started) * 1e6)
        if len(infos) != DEVICES:
            raise RuntimeError(f"{store.name}: listed {len(infos)} sessions, expected {DEVICES}")
        started = time.perf_counter()
        ended = await backend.revoke_session(infos[-1].id)
        revoke_one = (time.perf_counter() - started) * 1e6
        started = time.perf_counter()
        rest = await backend.revoke_user_sessions(USER)
        revoke_all = (time.perf_counter() - started) * 1e6
        if not ended or rest != DEVICES - 1:
            raise RuntimeError(f"{store.name}: revocation ended {ended} and {rest}")
    finally:
        await backend.close()
        await store.clear()
    return {
        "best": min(timings),
        "median": statistics.median(timings),
        "revoke_one": revoke_one,
        "revoke_all": revoke_all,
    }


async def _postgres_database(url: str, create: bool) -> None:
    import asyncpg

    base, _, name = url.rpartition("/")
    connection = await asyncpg.connect(f"{base}/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def main_async(args: argparse.Namespace) -> list[tuple[str, int, dict[str, float]]]:
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="asession-bench-users-"))
    postgres_url = f"{DEFAULTS['BENCH_POSTGRES_URL'].rpartition('/')[0]}/asession_bench_users_{os.getpid()}"
    redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULTS["BENCH_REDIS_URL"]
    try:
        for name in args.stores.split(","):
            for size in [int(s) for s in args.sizes.split(",")]:
                if name == "sqlite":
                    store: Any = populate.SQLiteStore(tmp / f"users-{size}.sqlite3")
                elif name == "postgres":
                    await _postgres_database(postgres_url, create=True)
                    store = populate.PostgresStore(postgres_url)
                elif name == "redis":
                    store = populate.RedisStore(redis_url)
                    if store.count():
                        raise SystemExit(f"{redis_url} is not empty; set BENCH_REDIS_URL to an empty database")
                else:
                    raise SystemExit(f"unknown store {name!r}: sqlite, postgres or redis")
                print(f"{name}: {size:,} sessions ...", file=sys.stderr, flush=True)
                results.append((name, size, await _measure(store, size, args.repeat)))
                if name == "postgres":
                    await _postgres_database(postgres_url, create=False)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if "postgres" in args.stores:
            await _postgres_database(postgres_url, create=False)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    print(f"user_sessions() of a user with {DEVICES} sessions, µs (best / median of {args.repeat}); one revocation")
    print()
    print("| store | sessions stored | user_sessions best | median | revoke_session | revoke_user_sessions (4) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, size, figures in results:
        print(
            f"| {name} | {size:,} | {figures['best']:.0f} | {figures['median']:.0f} | "
            f"{figures['revoke_one']:.0f} | {figures['revoke_all']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
