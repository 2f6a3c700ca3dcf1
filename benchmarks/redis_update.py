"""Two ways to merge a request's changes into a Redis session atomically, measured side by side (issue #11).

    python -m benchmarks.redis_update                          # both designs, Markdown tables
    python -m benchmarks.redis_update --ops 3000 --repeat 5 --url redis://127.0.0.1:6379/14

``hash``: what ``CacheBackend`` does: one Redis hash per session, one field per top-level key. A load is
``HGETALL`` joined in Python; an update is one Lua script (``EVALSHA``) that checks, merges and writes in
the store: one round trip.

``string``: the alternative: the session as one JSON string. A load is ``GET``; an update is ``GET``, the
merge in Python, then a Lua compare-and-set that writes only if the string is unchanged and otherwise
answers the current one, so a retry needs no second ``GET``: two round trips.

Both run through ``CacheBackend.load()`` / ``update()`` (the same base class, hashing and checks) on
asession's own client, on uvloop. Figures: CPU time of this process (``time.process_time``) per call and
calls per second of wall time, best of ``--repeat`` runs (the machine is shared); Redis's own CPU per call
from ``INFO cpu`` (the server is shared too, so that column is indicative only). Workloads:

- ``seq 1 key``: one ``update()`` after another on one session; ``seq 1000 keys``: the same across 1000.
- ``x64 keys``: 64 tasks, each updating its own session (64 wrk connections on one worker).
- ``x24 1 session``: 24 tasks updating distinct keys of *one* session at once; every key must survive,
  and the string design's compare-and-set retries are counted.
- ``/read``: ``load()``; ``/write``: ``load()`` then ``update()`` of the counter, 64 sessions at once.
- the request path: ``benchmarks/apps.py``'s /read and /write through ``SessionMiddleware`` on each design,
  called in this process (no HTTP server), 64 sessions at once, beside the bare app.

Every session it writes is deleted at the end; nothing else in the database is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asession import keys
from asession.backends import _redis, cache
from asession.backends.cache import UPDATE_ATTEMPTS, CacheBackend
from asession.changes import Changes
from asession.exceptions import BackendUnavailableError

DAY = 86400
CONCURRENCY = 64
SAME_SESSION = 24
PAD = "x" * 4000


class StringStore(cache._RedisStore):
    """The ``string`` design: one JSON string per session, updated by GET then a Lua compare-and-set."""

    swap = _redis.Script(cache._SWAP_STRING)
    retries = 0

    def load(self, key: str) -> Awaitable[bytes | None]:
        return self.client.get(key)

    async def save(self, key: str, payload: str, ttl: int, *, must_create: bool) -> bool:
        if must_create:
            return await self.add(key, payload, ttl)
        await self.set(key, payload, ttl)
        return True

    async def update(self, key: str, changes: Changes, ttl: int, backend: CacheBackend) -> str:
        current = await self.client.get(key)
        for attempt in range(UPDATE_ATTEMPTS):
            payload = backend._merge(current, changes)
            reply = await self.client.run(self.swap, (key,), [current or b"", payload, ttl])
            if reply[0]:
                return payload
            StringStore.retries += 1
            current = reply[1]
            await cache._back_off(attempt)  # as CacheBackend's own compare-and-set stores do
        raise RuntimeError("too many conflicts")


class StringBackend(CacheBackend):
    def _build(self) -> Any:
        return StringStore(self._options)


DESIGNS: dict[str, Callable[[str], CacheBackend]] = {"hash": CacheBackend, "string": StringBackend}


async def _server_cpu(client: _redis.RedisClient) -> float:
    info = (await client.execute("INFO", "cpu")).decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def _timed(
    admin: _redis.RedisClient, run: Callable[[], Awaitable[int]], repeat: int
) -> tuple[float, float, float]:
    """Best CPU µs per call, best calls per second, and Redis CPU µs per call (of the best-CPU run)."""
    best_cpu, best_rate, server = float("inf"), 0.0, 0.0
    for _ in range(repeat):
        server_before = await _server_cpu(admin)
        cpu, wall = time.process_time(), time.perf_counter()
        calls = await run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = await _server_cpu(admin) - server_before
        if cpu / calls * 1e6 < best_cpu:
            best_cpu, server = cpu / calls * 1e6, server_cpu / calls * 1e6
        best_rate = max(best_rate, calls / wall)
    return best_cpu, best_rate, server


async def measure(design: str, url: str, ops: int, repeat: int, pad: str) -> dict[str, tuple[float, ...]]:
    backend = DESIGNS[design](url)
    admin = _redis.RedisClient.from_url(url)
    sessions = [keys.new_key() for _ in range(1000)]
    one = sessions[0]
    results: dict[str, tuple[float, ...]] = {}
    failed = 0
    async with backend:
        await admin.open()
        try:
            for key in sessions:
                await backend.save(key, {"counter": 0, "pad": pad}, DAY)

            async def seq(targets: list[str]) -> int:
                for index in range(ops):
                    await backend.update(targets[index % len(targets)], {"counter": index}, (), DAY)
                return ops

            async def concurrent(call: Callable[[str, int], Awaitable[Any]], count: int) -> int:
                per_task = max(1, ops // count)

                async def worker(key: str) -> None:
                    for index in range(per_task):
                        await call(key, index)

                await asyncio.gather(*(worker(sessions[task]) for task in range(count)))
                return per_task * count

            async def update(key: str, index: int) -> None:
                await backend.update(key, {"counter": index}, (), DAY)

            async def read(key: str, index: int) -> None:
                await backend.load(key)

            async def write(key: str, index: int) -> None:
                data = await backend.load(key)
                assert data is not None
                await backend.update(key, {"counter": data["counter"] + 1}, (), DAY)

            async def same_session() -> int:
                nonlocal failed
                per_task = max(1, ops // SAME_SESSION)
                last: dict[str, int] = {}

                async def worker(task: int) -> None:
                    nonlocal failed
                    for index in range(per_task):
                        try:
                            await backend.update(one, {f"k{task}": index}, (), DAY)
                        except BackendUnavailableError:  # the string design gave up after UPDATE_ATTEMPTS
                            failed += 1
                        else:
                            last[f"k{task}"] = index

                await asyncio.gather(*(worker(task) for task in range(SAME_SESSION)))
                stored = await backend.load(one)
                assert stored is not None
                lost = [name for name, value in last.items() if stored.get(name) != value]
                assert not lost, f"{design}: the keys {lost} were lost"
                return per_task * SAME_SESSION

            results["seq 1 key"] = await _timed(admin, lambda: seq([one]), repeat)
            results["seq 1000 keys"] = await _timed(admin, lambda: seq(sessions), repeat)
            results["x64 keys"] = await _timed(admin, lambda: concurrent(update, CONCURRENCY), repeat)
            StringStore.retries = 0
            results["x24 1 session"] = await _timed(admin, same_session, repeat)
            calls = repeat * (ops // SAME_SESSION) * SAME_SESSION
            results["x24 1 session"] += (StringStore.retries / calls, failed / calls)
            results["/read"] = await _timed(admin, lambda: concurrent(read, CONCURRENCY), repeat)
            results["/write"] = await _timed(admin, lambda: concurrent(write, CONCURRENCY), repeat)
        finally:
            for key in sessions:
                await backend.delete(key)
            await admin.close()
    return results


def table(figures: dict[str, dict[str, tuple[float, ...]]]) -> str:
    designs = list(figures)
    head = ["workload"]
    for design in designs:
        head += [f"{design} CPU µs", f"{design} calls/s", f"{design} Redis µs"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for workload in figures[designs[0]]:
        row = [workload]
        for design in designs:
            cpu, rate, server, *extra = figures[design][workload]
            row += [f"{cpu:.1f}", f"{rate:,.0f}", f"{server:.1f}"]
            if extra and (extra[0] or extra[1]):
                row[-3] += f" ({extra[0]:.1f} retries, {extra[1]:.1%} failed)"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


async def app_path(url: str, requests: int, repeat: int) -> str:
    """CPU µs per request of ``benchmarks/apps.py``'s /read and /write over each design, 64 sessions at once.

    The whole ASGI request path in this process (middleware, session, backend, client) without the HTTP
    server, which the designs share; runs interleave the designs and the bare app, the best run is kept.
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from asession import SessionMiddleware
    from benchmarks.apps import ROUTES
    from benchmarks.micro import _Collector, _lifespan, _receive, _scope

    apps: dict[str, tuple[Any, dict[str, Any], list[bytes | None], CacheBackend | None]] = {}
    for name, design in [("bare", None), *DESIGNS.items()]:
        backend = None if design is None else design(url)
        middleware = [] if backend is None else [Middleware(SessionMiddleware, backend=backend)]
        app = Starlette(routes=ROUTES, middleware=middleware)
        state: dict[str, Any] = {}
        await _lifespan(app, "startup", state)
        cookies: list[bytes | None] = []
        for _ in range(CONCURRENCY):
            collector = _Collector()
            await app(_scope("/login", None), _receive, collector)
            cookies.append(collector.cookie)
        apps[name] = (app, state, cookies, backend)

    async def client(app: Any, endpoint: str, cookie: bytes | None, count: int) -> None:
        collector = _Collector()
        for _ in range(count):
            await app(_scope(endpoint, cookie), _receive, collector)
        assert collector.status == 200, (endpoint, collector.status)

    best: dict[tuple[str, str], float] = {}
    count = requests // CONCURRENCY
    try:
        for _ in range(repeat):
            for endpoint in ("/read", "/write"):
                for name, (app, _, cookies, _) in apps.items():
                    cpu = time.process_time()
                    await asyncio.gather(*(client(app, endpoint, cookie, count) for cookie in cookies))
                    cpu = (time.process_time() - cpu) / (count * CONCURRENCY) * 1e6
                    best[name, endpoint] = min(best.get((name, endpoint), float("inf")), cpu)
    finally:
        for app, state, cookies, backend in apps.values():
            if backend is not None:
                for cookie in cookies:
                    if cookie:
                        await backend.delete(cookie.split(b"=", 1)[1].decode())
            await _lifespan(app, "shutdown", state)
    lines = [
        "| endpoint | bare CPU µs | " + " | ".join(f"{name} CPU µs (+ over bare)" for name in DESIGNS) + " |",
        "| --- | ---: |" + " ---: |" * len(DESIGNS),
    ]
    for endpoint in ("/read", "/write"):
        bare = best["bare", endpoint]
        cells = [f"{best[name, endpoint]:.1f} (+{best[name, endpoint] - bare:.1f})" for name in DESIGNS]
        lines.append(f"| {endpoint} | {bare:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def survey(url: str, ops: int, repeat: int) -> str:
    out = [f"### The request path of benchmarks/apps.py, in process\n\n{await app_path(url, 16 * ops, repeat)}"]
    for label, pad in (("session {counter}", ""), ("session {counter, 4 KB pad}", PAD)):
        figures = {design: await measure(design, url, ops, repeat, pad) for design in DESIGNS}
        out.append(f"### {label}\n\n{table(figures)}")
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--ops", type=int, default=3072, help="calls per run (default 3072)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure, the best is kept (default 5)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed; measuring on asyncio's own loop", file=sys.stderr)
        print(asyncio.run(survey(args.url, args.ops, args.repeat)))
    else:
        print(uvloop.run(survey(args.url, args.ops, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
