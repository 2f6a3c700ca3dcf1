"""Concurrent writes through the middleware, then a check that not one increment was lost (issue 6).

    python -m benchmarks.load_without_loss                       # 64 clients × 1000 writes, every backend
    python -m benchmarks.load_without_loss --clients 8 --writes 100 --variants asession-sqlite

For each variant a uvicorn worker is started as in ``benchmarks/run.py``. ``--clients`` concurrent clients
(one keep-alive connection each, all on one event loop pinned to core 1) each log in to get a session of
their own, then send ``--writes`` sequential ``GET /write`` requests with their cookie, following any new
Set-Cookie as a browser would. Every answer must be the next integer, and a final ``GET /read`` must
return exactly ``--writes``: any lost, duplicated or crossed update fails the variant. Prints a pass/fail
table; exits 1 if any variant that ran failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.apps import VARIANTS
from benchmarks.run import Environment, probe


@dataclass
class Outcome:
    clients: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.errors and self.clients > 0


class _Connection:
    """One HTTP/1.1 keep-alive connection with just enough parsing for the benchmark app's answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(h.HOST, port)
        return cls(reader, writer)

    async def get(self, path: str, cookie: str | None) -> tuple[int, str, str | None]:
        cookie_line = f"Cookie: {cookie}\r\n" if cookie else ""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {h.HOST}\r\n{cookie_line}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, set_cookie = 0, None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                set_cookie = value.strip().split(";", 1)[0]
        body = (await self.reader.readexactly(length)).decode() if length else ""
        return status, body, set_cookie

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def _client(port: int, writes: int, outcome: Outcome, index: int) -> None:
    connection = await _Connection.open(port)
    try:
        status, _, cookie = await connection.get("/login", None)
        outcome.requests += 1
        if status != 200 or cookie is None:
            outcome.errors.append(f"client {index}: /login answered {status} with cookie {cookie!r}")
            return
        for expected in range(1, writes + 1):
            status, body, new_cookie = await connection.get("/write", cookie)
            outcome.requests += 1
            if status != 200 or body != str(expected):
                outcome.errors.append(f"client {index}: write {expected} answered {status} {body!r}")
                return
            cookie = new_cookie or cookie
        status, body, _ = await connection.get("/read", cookie)
        outcome.requests += 1
        if status != 200 or body != str(writes):
            outcome.errors.append(f"client {index}: final /read answered {status} {body!r}, expected {writes}")
            return
        outcome.clients += 1
    finally:
        await connection.close()


async def hammer(port: int, clients: int, writes: int) -> Outcome:
    outcome = Outcome()
    start = time.perf_counter()
    results = await asyncio.gather(*(_client(port, writes, outcome, i) for i in range(clients)), return_exceptions=True)
    outcome.seconds = time.perf_counter() - start
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            outcome.errors.append(f"client {index}: {type(result).__name__}: {result}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--variants", default="asession-*", help="comma-separated names or globs (default asession-*)")
    args = parser.parse_args(argv)
    from benchmarks.run import select_variants

    names = [n for n in select_variants(args.variants) if VARIANTS[n].stateful]
    h.install_cleanup()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > h.LOAD_CORE:
        os.sched_setaffinity(0, {h.LOAD_CORE})  # the clients on core 1, the server on core 0
    env = Environment()
    rows: list[tuple[str, str, str]] = []
    failed = False
    try:
        env.prepare({service for name in names for service in VARIANTS[name].needs})
        for name in names:
            reason = probe(name, env)
            if reason is not None:
                rows.append((name, "skipped", reason))
                continue
            print(f"{name}: {args.clients} clients × {args.writes} writes ...", file=sys.stderr, flush=True)
            try:
                server = h.start_server(name, env.server_env(), env.tmp)
            except h.ServerError as exc:
                rows.append((name, "FAIL", "server did not start: " + str(exc).splitlines()[0]))
                failed = True
                continue
            try:
                outcome = asyncio.run(hammer(server.port, args.clients, args.writes))
            finally:
                h.stop(server.proc)
            rate = outcome.requests / outcome.seconds if outcome.seconds else 0.0
            detail = f"{outcome.clients}/{args.clients} sessions exact, {outcome.requests} requests, {rate:.0f} req/s"
            if outcome.passed and outcome.clients == args.clients:
                rows.append((name, "pass", detail))
            else:
                failed = True
                shown = "; ".join(outcome.errors[:3]) + (
                    f"; … {len(outcome.errors) - 3} more" if len(outcome.errors) > 3 else ""
                )
                rows.append((name, "FAIL", f"{detail}; {shown}"))
    finally:
        h.stop_all()
        env.cleanup()
    print(f"\n{args.clients} concurrent clients × {args.writes} sequential writes each\n")
    print("| variant | result | detail |")
    print("| --- | --- | --- |")
    for name, result, detail in rows:
        print(f"| {name} | {result} | {detail} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
