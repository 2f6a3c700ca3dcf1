"""In-process microbenchmark: the session layer's cost per request in microseconds, without the network.

    python -m benchmarks.micro                                   # asession-memory, asession-sqlite, peers
    python -m benchmarks.micro --variants 'asession-*' --requests 20000

Calls each variant's ASGI app (``benchmarks/apps.py``) directly on one uvloop event loop, 64 sessions in
turn, and reports the best of ``--repeat`` runs in µs per request, and the difference to the bare app:
what the session layer adds to every request. The HTTP server and the socket writes that dominate a
real request are absent, so the differences are exact while the ratios to the bare app are not those of
``benchmarks/run.py``; use this to measure a change to the hot path, and run.py to report it.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps import VARIANTS, build_app

DEFAULT_VARIANTS = "bare,starlette,starsessions-memory,asession-memory,asession-sqlite,asession-signed-cookies"


def _scope(path: str, cookie: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"micro"), (b"accept", b"*/*")]
    if cookie:
        headers.append((b"cookie", cookie))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Collector:
    __slots__ = ("cookie", "status")

    def __init__(self) -> None:
        self.status = 0
        self.cookie: bytes | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name.lower() == b"set-cookie":
                    self.cookie = value.split(b";", 1)[0]


async def _lifespan(app: Any, event: str, state: dict[str, Any]) -> None:
    queue: asyncio.Queue[dict[str, Any]] = state.setdefault("queue", asyncio.Queue())
    done: asyncio.Queue[dict[str, Any]] = state.setdefault("done", asyncio.Queue())
    if event == "startup":

        async def send(message: dict[str, Any]) -> None:
            await done.put(message)

        state["task"] = asyncio.ensure_future(
            app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, send)
        )
    await queue.put({"type": f"lifespan.{event}"})
    message = await done.get()
    if not message["type"].endswith(".complete"):
        raise RuntimeError(f"lifespan {event} failed: {message}")
    if event == "shutdown":
        await state["task"]


async def measure(
    names: list[str], endpoints: list[str], requests: int, repeat: int, sessions: int
) -> dict[str, dict[str, float] | str]:
    """Best µs per request of each variant and endpoint; runs interleave the variants to cancel drift."""
    apps: dict[str, tuple[Any, dict[str, Any], list[bytes | None]]] = {}
    results: dict[str, dict[str, float] | str] = {}
    for name in names:
        try:
            app = build_app(name)
            state: dict[str, Any] = {}
            await _lifespan(app, "startup", state)
        except Exception as exc:
            results[name] = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:150]
            continue
        cookies: list[bytes | None] = []
        for _ in range(sessions):
            collector = _Collector()
            await app(_scope("/login", None), _receive, collector)
            cookies.append(collector.cookie)
        apps[name] = (app, state, cookies)
        results[name] = {}
    try:
        for endpoint in endpoints:
            for _ in range(repeat):
                for name, (app, _, cookies) in apps.items():
                    collector = _Collector()
                    scopes = [
                        _scope(endpoint, None if endpoint == "/none" else cookies[i % sessions])
                        for i in range(requests)
                    ]
                    start = time.perf_counter()
                    for scope in scopes:
                        await app(scope, _receive, collector)
                    elapsed = (time.perf_counter() - start) / requests * 1e6
                    if collector.status != 200:
                        raise RuntimeError(f"{name} {endpoint} answered {collector.status}")
                    row = results[name]
                    assert isinstance(row, dict)
                    row[endpoint] = min(row.get(endpoint, float("inf")), elapsed)
    finally:
        for app, state, _ in apps.values():
            await _lifespan(app, "shutdown", state)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated names or globs")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=64)
    args = parser.parse_args(argv)
    patterns = [p.strip() for p in args.variants.split(",")]
    names = ["bare", *[n for n in VARIANTS if n != "bare" and any(fnmatch.fnmatchcase(n, p) for p in patterns)]]
    from benchmarks.run import Environment, probe

    env = Environment()
    env.prepare({service for name in names for service in VARIANTS[name].needs})
    skipped = {name: probe(name, env) for name in names}
    names = [name for name in names if skipped[name] is None]
    os.environ.update(env.server_env())
    endpoints = ["/none", "/read", "/write"]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        print(f"µs per request, best of {args.repeat} × {args.requests} (in brackets: minus the bare app)")
        print(f"{'variant':28} " + " ".join(f"{e:>18}" for e in endpoints))
        results = run(measure(names, endpoints, args.requests, args.repeat, args.sessions))
        bare = results.get("bare")
        for name, row in results.items():
            if isinstance(row, str) or not isinstance(bare, dict):
                print(f"{name:28} {row}")
                continue
            cells = [f"{row[e]:7.1f} ({row[e] - bare[e]:+6.1f})" for e in endpoints]
            print(f"{name:28} " + " ".join(f"{c:>18}" for c in cells))
        for name, reason in skipped.items():
            if reason is not None:
                print(f"{name:28} skipped: {reason}")
    finally:
        env.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
