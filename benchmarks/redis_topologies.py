"""CPU per session call of RedisBackend on each client: asession's own, redis-py handed in, Sentinel, Cluster.

    python -m benchmarks.redis_topologies            # starts private servers on free ports, prints a table

For each way of reaching Redis, 64 concurrent tasks each load their own session and save a change to it
(``load`` then ``update``: a ``/write``'s store work), on uvloop. The figure is CPU time of this process per
call (``time.process_time``), best of ``--repeat`` runs: the machine is shared, and the best run is the one
least disturbed. Every server is a private ``redis-server`` (tests/redis_topologies.py) stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asession.backends.base import SessionBackend
from asession.backends.redis import RedisBackend

TASKS = 64
DAY = 86400


async def _measure(make: Callable[[], SessionBackend], rounds: int, repeat: int) -> tuple[float, float]:
    """Best CPU µs per load and per update over ``repeat`` runs of ``rounds`` calls by each of 64 tasks."""
    backend = make()
    async with backend:
        session_keys = [await backend.create({"user": "someone", "cart": [1, 2, 3], "n": i}, DAY) for i in range(TASKS)]
        best_load = best_update = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            await asyncio.gather(*(_loads(backend, key, rounds) for key in session_keys))
            best_load = min(best_load, (time.process_time() - started) / (rounds * TASKS) * 1e6)
            started = time.process_time()
            await asyncio.gather(*(_updates(backend, key, rounds) for key in session_keys))
            best_update = min(best_update, (time.process_time() - started) / (rounds * TASKS) * 1e6)
        for key in session_keys:
            await backend.delete(key)
    return best_load, best_update


async def _loads(backend: SessionBackend, key: str, rounds: int) -> None:
    for _ in range(rounds):
        await backend.load(key)


async def _updates(backend: SessionBackend, key: str, rounds: int) -> None:
    for n in range(rounds):
        await backend.update(key, {"n": n}, (), DAY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import redis
    import redis.asyncio
    import uvloop

    from tests.redis_topologies import running_cluster, running_sentinel
    from tests.servers import running_redis

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "single").mkdir()
        with running_redis(root / "single") as single, running_sentinel(root / "sentinel") as sentinel:
            with running_cluster(root / "cluster") as cluster:
                ways: list[tuple[str, Callable[[], SessionBackend]]] = [
                    ("`redis://`: asession's own client", lambda: RedisBackend(f"redis://127.0.0.1:{single.port}/0")),
                    (
                        f"redis-py {redis.__version__} client handed in",
                        lambda: RedisBackend(redis.asyncio.Redis(port=single.port)),
                    ),
                    ("`redis+sentinel://` (redis-py `master_for`)", lambda: RedisBackend(sentinel.url)),
                    ("`redis+cluster://` (redis-py `RedisCluster`, 3 masters)", lambda: RedisBackend(cluster.url)),
                ]
                for name, make in ways:
                    load, update = uvloop.run(_measure(make, args.rounds, args.repeat))
                    rows.append(f"| {name} | {load:.1f} | {update:.1f} |")
    try:
        import hiredis

        parser_name = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser_name = "no hiredis"
    print(f"CPU µs per call, {TASKS} tasks at once, best of {args.repeat} ({parser_name}):\n")
    print("| client | load µs | update µs |")
    print("| --- | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
