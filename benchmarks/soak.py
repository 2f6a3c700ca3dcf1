"""Chaos soak (issue #10): every request ends in bounded time, with 200 or 503, and no write is lost or crossed.

    python -m benchmarks.soak                                    # every backend, 60 s each, store_timeout 2 s
    python -m benchmarks.soak --backend redis --duration 10
    python -m benchmarks.soak --backend postgres --faults blackhole,reset --seed 7 --store-timeout 1

For each backend: two uvicorn processes (free 127.0.0.1 ports) serve ``benchmarks/soak_app.py`` behind
asession's SessionMiddleware, with ``SessionConfig(store_timeout=--store-timeout)`` when asession has that
field. Redis, PostgreSQL and memcached are reached through ``tests/faultproxy.py``, which runs in this
process; SQLite has no network, so its fault is this process holding ``BEGIN EXCLUSIVE`` on the database.

``--clients`` clients (64; httpx, each its own session and cookie, each request to either process at
random) start a session (``POST /start`` with an id of their own) and then increment its counter
(``POST /incr``) or read it (``GET /read``). Faults come in windows, each followed by a healthy one,
cycling through ``--faults`` (shuffled by ``--seed`` unless given):

``latency``    every chunk either way waits bound + 0.5 s     ``blackhole``  nothing forwarded, sockets kept
``reset``      RST on every link, new connections reset        ``cut``        every reply cut in half, link closed
``bandwidth``  2000 bytes/s each way, all links together       ``lock``       (SQLite) BEGIN EXCLUSIVE held

Latency, black-hole, bandwidth and lock windows outlast the bound, so that only asession's own timeouts
can keep requests within it: from bound + 0.2 s to ``--max-window`` (6 s, past the backends' own 5 s
socket timeouts; at least bound + 0.6 s). Reset and cut windows last 0.8 to 1.5 s. When a window ends,
what the proxy held back is forwarded at once. ``store_timeout`` bounds each store call, so a request's
bound is (store calls) x store_timeout + 1 s: one call for /read, two for /incr (load, save). The checks:

bound      every request was answered within its bound (p50/p99/p100 reported; no answer within
           bound + 5 s counts as that long)
statuses   every answer was 200 or 503
crossed    no 200 carried another session's id
writes     no counter went backwards: each 200 of /incr or /read is at least the last acknowledged value,
           and after the faults each session still holds at least its last acknowledged value (nor is
           any above it by more than the increments left unanswered since); no session lost its data
recovery   after each window, the first request started after its end that got 200 finished within the
           bound
healthy    of the requests started at least the bound away from every window, at most 1 % got something
           other than 200 (a store that works is not reported as down)

A table per backend, then a summary; exit status 1 if any check failed (2 if a backend named on the
command line is unreachable; ``all`` skips those). Servers come from ``ASESSION_REDIS_URL``,
``ASESSION_POSTGRES_URL`` and ``ASESSION_MEMCACHED_URL`` (defaults as in tests/conftest.py). What the soak
writes stays clear of the test suite's data and is removed: Redis goes to database ``--redis-db`` (11),
not the URL's (the tests flush theirs); PostgreSQL to a table of its own, dropped at the end; the sessions
it knows of are deleted, and the rest (a /start answered 503 may still have been stored) expire after
15 minutes. Only 127.0.0.1 is loaded; the uvicorn processes are stopped at exit, on failures and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks import _harness as h
from tests.faultproxy import FaultProxy

BACKENDS = ("redis", "postgres", "memcached", "sqlite")
TCP_FAULTS = ("latency", "blackhole", "reset", "cut", "bandwidth")
SQLITE_FAULTS = ("lock",)
#: Faults that stall rather than fail: their windows outlast the bound.
STALLING = frozenset({"latency", "blackhole", "bandwidth", "lock"})
CHECKS = ("bound", "statuses", "crossed", "writes", "recovery", "healthy")
#: Store calls each request makes at most, each bounded by store_timeout.
STORE_CALLS = {"read": 1, "incr": 2, "start": 2}
#: The share of requests started in healthy time that may get something other than 200.
HEALTHY_TOLERANCE = 0.01
SERVER_URLS = {
    "redis": ("ASESSION_REDIS_URL", "redis://127.0.0.1:6379/15", 6379),
    "postgres": ("ASESSION_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test", 5432),
    "memcached": ("ASESSION_MEMCACHED_URL", "memcached://127.0.0.1:11211", 11211),
}
#: Seconds beyond store_timeout a request may take (HTTP, the app, scheduling on a busy machine).
SLACK = 1.0
#: Seconds beyond the bound the clients wait for an answer before they count it as none.
PATIENCE = 5.0
#: Session lifetime in the apps: whatever the soak cannot delete expires by itself.
MAX_AGE = 900
BANDWIDTH = 2000
COOKIE = "session"
EXAMPLES = 5


class Unreachable(Exception):
    """The backend's server does not answer; the backend is skipped."""


@dataclass
class Options:
    """The command line's settings."""

    duration: float
    store_timeout: float
    clients: int
    seed: int
    faults: list[str] | None
    think: float
    redis_db: int
    verbose: bool
    max_window: float = 6.0
    logs: Path | None = None

    @property
    def bound(self) -> float:
        """The bound of a request that makes one store call (a read)."""
        return self.store_timeout + SLACK

    def bound_of(self, op: str) -> float:
        """``store_timeout`` bounds each store call: /read makes one (load), /start and /incr two (load or
        open, then save)."""
        return STORE_CALLS.get(op, 2) * self.store_timeout + SLACK

    @property
    def client_timeout(self) -> float:
        return self.bound_of("incr") + PATIENCE


# -- what happened ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request: who sent it, when (seconds since the run started), how long it took, the status."""

    client: int
    op: str
    started: float
    elapsed: float
    status: int | None  # None: no HTTP answer


@dataclass
class Window:
    """One fault window: its kind, what it did, when it started and ended (seconds since the run started)."""

    kind: str
    detail: str
    started: float
    ended: float | None = None
    #: From the end of the window to the end of the first 200 of a request started after it.
    recovery: float | None = None


@dataclass
class Check:
    """One of :data:`CHECKS`: how many failures, and the first few described."""

    name: str
    failures: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(message)


@dataclass
class Result:
    """Everything one backend's run produced."""

    backend: str
    skipped: str | None = None
    error: str | None = None
    store_timeout: float | None = None  # as the apps report it; None: asession ignores it
    samples: list[Sample] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=lambda: {name: Check(name) for name in CHECKS})
    sessions: int = 0
    sessions_checked: int = 0
    #: Requests started in healthy time, and how many of them got something other than 200.
    healthy: tuple[int, int] = (0, 0)
    restarts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.error is None and not any(c.failures for c in self.checks.values())


@dataclass
class Visitor:
    """One client: its session, and what the store must hold for it."""

    index: int
    ident: str
    cookie: str | None = None
    #: The last counter a 200 of /incr acknowledged.
    acked: int = 0
    #: /incr requests since that 200 that did not get one: each may or may not have been stored.
    unsure: int = 0
    generation: int = 0

    def restart(self) -> None:
        """Start over with a new session (after a failure was reported), so one fault is reported once."""
        self.generation += 1
        self.ident = f"{self.ident.split('/')[0]}/{self.generation}"
        self.cookie, self.acked, self.unsure = None, 0, 0


# -- stores and their faults -------------------------------------------------------------------------------


@dataclass
class Store:
    """Where one backend's sessions live, how the apps reach it, and how to break it."""

    backend: str
    app_url: str
    direct_url: str
    table: str | None = None
    proxy: FaultProxy | None = None
    sqlite_path: Path | None = None
    _lock: sqlite3.Connection | None = None

    @property
    def faults(self) -> tuple[str, ...]:
        return SQLITE_FAULTS if self.backend == "sqlite" else TCP_FAULTS

    def direct_backend(self) -> Any:
        """A backend on the real server (never through the proxy), for setup, the sentinel and cleanup."""
        from asession.backends import backend_from_url
        from asession.backends.db import DatabaseBackend

        if self.table is not None:
            return DatabaseBackend(self.direct_url, table=self.table)
        if self.backend == "sqlite":
            return DatabaseBackend(self.direct_url)
        return backend_from_url(self.direct_url)

    async def begin(self, kind: str, bound: float) -> str:
        """Start fault ``kind``; return what it does."""
        if kind == "lock":
            assert self.sqlite_path is not None
            started = time.monotonic()
            self._lock = await asyncio.to_thread(_lock_database, self.sqlite_path)
            return f"BEGIN EXCLUSIVE held (took {time.monotonic() - started:.2f} s to get)"
        proxy = self.proxy
        assert proxy is not None
        if kind == "latency":
            proxy.latency(bound + 0.5)
            return f"every chunk delayed {bound + 0.5:.1f} s"
        if kind == "blackhole":
            proxy.blackhole()
            return "nothing forwarded, sockets kept open"
        if kind == "reset":
            proxy.reset(refuse=True)
            return "RST on every link, new connections reset"
        if kind == "cut":
            proxy.cut(count=None)
            return "every reply cut in half, then its link closed"
        if kind == "bandwidth":
            proxy.bandwidth(BANDWIDTH)
            return f"{BANDWIDTH} bytes/s each way"
        raise ValueError(f"unknown fault {kind!r}")

    async def end(self) -> None:
        """End whatever fault is in force."""
        if self.proxy is not None:
            self.proxy.normal()
        lock, self._lock = self._lock, None
        if lock is not None:
            await asyncio.to_thread(_unlock_database, lock)


def _lock_database(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("BEGIN EXCLUSIVE")
    except BaseException:
        connection.close()
        raise
    return connection


def _unlock_database(connection: sqlite3.Connection) -> None:
    try:
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def _server_url(backend: str) -> tuple[str, int]:
    variable, default, port = SERVER_URLS[backend]
    return os.environ.get(variable) or default, port


def _with_address(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced, user and password kept."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=(f"{userinfo}@" if userinfo else "") + f"{host}:{port}"))


async def open_store(backend: str, options: Options, scratch: Path) -> Store:
    """Prepare the backend's store: proxy started, URLs chosen; raise :class:`Unreachable` without a server."""
    if backend == "sqlite":
        path = scratch / "sessions.sqlite3"
        url = f"sqlite:///{path}"
        return Store(backend, app_url=url, direct_url=url, sqlite_path=path)
    url, default_port = _server_url(backend)
    parts = urlsplit(url)
    if not h.server_reachable(url, default_port):
        variable = SERVER_URLS[backend][0]
        raise Unreachable(f"nothing answers at {parts.hostname}:{parts.port or default_port} (set ${variable})")
    if backend == "redis":
        url = urlunsplit(parts._replace(path=f"/{options.redis_db}"))
    table = f"asession_soak_{os.getpid()}_{secrets.token_hex(3)}" if backend == "postgres" else None
    proxy = FaultProxy(parts.hostname or h.HOST, parts.port or default_port)
    await proxy.start()
    return Store(backend, app_url=_with_address(url, h.HOST, proxy.port), direct_url=url, table=table, proxy=proxy)


async def close_store(store: Store, direct: Any, keys: list[str]) -> None:
    """Delete what the soak stored, drop its table, close the proxy; never raises."""
    try:
        await store.end()
    except Exception as exc:
        print(f"{store.backend}: could not end the last fault: {exc!r}", file=sys.stderr)
    if direct is not None and direct.is_open:
        for key in keys:
            try:
                await direct.delete(key)
            except Exception:
                break
        with contextlib.suppress(Exception):
            await direct.close()
    if store.table is not None:
        import asyncpg

        try:
            connection = await asyncpg.connect(store.direct_url)
            try:
                await connection.execute(f'DROP TABLE IF EXISTS "{store.table}"')
            finally:
                await connection.close()
        except Exception as exc:
            print(f"{store.backend}: could not drop table {store.table}: {exc!r}", file=sys.stderr)
    if store.proxy is not None:
        await store.proxy.close()


# -- the apps --------------------------------------------------------------------------------------------


@dataclass
class App:
    url: str
    proc: Any
    log: Path

    def log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def start_app(store: Store, options: Options, scratch: Path, index: int) -> App:
    """One uvicorn process of the soak app on a free port; returns once ``/healthz`` answers."""
    port = h.free_port()
    log = scratch / f"app-{store.backend}-{index}.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(h.ROOT),
        "PYTHONUNBUFFERED": "1",
        "SOAK_BACKEND_URL": store.app_url,
        "SOAK_STORE_TIMEOUT": str(options.store_timeout),
        "SOAK_MAX_AGE": str(MAX_AGE),
        "SOAK_PARENT_PID": str(os.getpid()),
    }
    if store.table:
        env["SOAK_TABLE"] = store.table
    command = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.soak_app:create_app", "--host", h.HOST]
    command += ["--port", str(port), "--lifespan", "on", "--log-level", "warning", "--no-access-log"]
    # Keep-alive: the server's 30 s outlasts the clients' 2 s, so no request races the server's closing.
    command += ["--timeout-graceful-shutdown", "3", "--timeout-keep-alive", "30"]
    with log.open("wb") as out:
        proc = h.spawn(command, cwd=h.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    app = App(f"http://{h.HOST}:{port}", proc, log)
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {proc.returncode}:\n{app.log_tail()}")
            try:
                response = await client.get(app.url + "/healthz")
                if response.status_code == 200:
                    return app
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"uvicorn did not answer within 30 s:\n{app.log_tail()}")


# -- the clients ---------------------------------------------------------------------------------------------


def _session_cookie(response: httpx.Response) -> str | None:
    """The session cookie ``response`` sets: its value, ``""`` if it deletes it, ``None`` if it sets none."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == COOKIE:
            value = rest.split(";", 1)[0].strip()
            return "" if "max-age=0" in header.lower() else value
    return None


class Soak:
    """One backend's run: the visitors, the fault windows, the checks."""

    def __init__(self, result: Result, store: Store, urls: list[str], options: Options) -> None:
        self.result = result
        self.store = store
        self.urls = urls
        self.options = options
        self.rng = random.Random(f"{options.seed}-{store.backend}")
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()
        #: Set by the first 200 of a request started after the latest fault window ended.
        self.recovered = asyncio.Event()
        self.visitors = [Visitor(i, f"v{i}-{secrets.token_hex(3)}") for i in range(options.clients)]
        #: Every session key a 200 handed out, to delete at the end.
        self.cookies: set[str] = set()
        self.tls = ssl.create_default_context()  # creating one per client costs 20-50 ms of CPU each

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, sample: Sample) -> None:
        self.result.samples.append(sample)
        if sample.status == 200 and self.result.windows:
            window = self.result.windows[-1]  # an earlier one had its chance before this one started
            if window.ended is not None and window.recovery is None and sample.started >= window.ended:
                window.recovery = sample.started + sample.elapsed - window.ended
                self.recovered.set()

    # -- one visitor --

    def client(self) -> httpx.AsyncClient:
        """An HTTP client of one visitor: no cookie jar (cookies go by hand), one shared TLS context (unused)."""
        jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        limits = httpx.Limits(keepalive_expiry=2.0)
        return httpx.AsyncClient(timeout=self.options.client_timeout, cookies=jar, verify=self.tls, limits=limits)

    async def visit(self, visitor: Visitor, http: httpx.AsyncClient) -> None:
        rng = random.Random(f"{self.options.seed}-{self.store.backend}-{visitor.index}")
        async with http:
            await asyncio.sleep(rng.uniform(0, 0.5))  # spread the first requests
            while not self.stop.is_set():
                if visitor.cookie is None:
                    op = "start"
                else:
                    op = "incr" if rng.random() < 0.7 else "read"
                await self.request(http, visitor, op, rng.choice(self.urls))
                await asyncio.sleep(rng.uniform(0, 2 * self.options.think))

    async def request(self, http: httpx.AsyncClient, visitor: Visitor, op: str, base: str) -> None:
        headers = {"cookie": f"{COOKIE}={visitor.cookie}"} if visitor.cookie else {}
        started = self.now()
        status: int | None = None
        try:
            if op == "read":
                response = await http.get(base + "/read", headers=headers)
            else:
                body = {"id": visitor.ident} if op == "start" else None
                response = await http.post(f"{base}/{op}", headers=headers, json=body)
            status = response.status_code
        except httpx.HTTPError as exc:
            elapsed = self.now() - started
            self.record(Sample(visitor.index, op, started, elapsed, None))
            if op == "incr":
                visitor.unsure += 1
            if elapsed < self.options.bound:  # a late one is reported by the bound check
                self.result.checks["statuses"].fail(
                    f"{op} at {started:.1f} s: no HTTP answer ({type(exc).__name__}: {exc})"[:200]
                )
            return
        self.record(Sample(visitor.index, op, started, self.now() - started, status))
        if status != 200:
            if op == "incr":
                visitor.unsure += 1
            if status != 503:
                self.result.checks["statuses"].fail(
                    f"{op} at {started:.1f} s answered {status}: {response.text[:120]!r}"
                )
            return
        self.judge(visitor, op, started, response)

    def judge(self, visitor: Visitor, op: str, started: float, response: httpx.Response) -> None:
        """Check a 200 against what the visitor knows of its session."""
        checks = self.result.checks
        where = f"{visitor.ident} {op} at {started:.1f} s"
        try:
            data = response.json()
            ident, n = data["id"], data["n"]
        except (ValueError, KeyError, TypeError):
            checks["statuses"].fail(f"{where}: a 200 that is not the app's JSON: {response.text[:120]!r}")
            return
        cookie = _session_cookie(response)
        if op == "start":
            if not cookie:
                checks["statuses"].fail(f"{where}: a 200 without a session cookie")
                return
            if ident != visitor.ident or n != 0:
                checks["crossed"].fail(f"{where}: a new session answered id {ident!r}, n {n!r}")
            visitor.cookie, visitor.acked, visitor.unsure = cookie, 0, 0
            self.cookies.add(cookie)
            self.result.sessions += 1
            return
        if ident != visitor.ident:
            if ident is None:
                checks["writes"].fail(f"{where}: the session's data is gone: n={n!r}, acknowledged {visitor.acked}")
            else:
                checks["crossed"].fail(f"{where}: got the data of {ident!r}, n={n!r} (acknowledged {visitor.acked})")
            self.result.restarts += 1
            visitor.restart()
            return
        if cookie:  # follow a new cookie, as a browser would
            visitor.cookie = cookie
            self.cookies.add(cookie)
        if not isinstance(n, int):
            checks["writes"].fail(f"{where}: n is {n!r}")
            return
        if op == "incr":
            if n <= visitor.acked:
                checks["writes"].fail(f"{where}: counter went backwards: acknowledged {visitor.acked}, now {n}")
            elif n > visitor.acked + 1 + visitor.unsure:
                checks["writes"].fail(
                    f"{where}: counter jumped: acknowledged {visitor.acked} with {visitor.unsure} unanswered, now {n}"
                )
            visitor.acked, visitor.unsure = n, 0
        elif n < visitor.acked:
            checks["writes"].fail(f"{where}: read {n}, below the acknowledged {visitor.acked}")
        elif n > visitor.acked + visitor.unsure:
            checks["writes"].fail(f"{where}: read {n}, above acknowledged {visitor.acked} + {visitor.unsure} unsure")

    # -- the faults --

    def schedule(self) -> list[str]:
        kinds = list(self.options.faults or self.store.faults)
        if not self.options.faults:
            self.rng.shuffle(kinds)
        return kinds

    def window_length(self, kind: str) -> float:
        if kind in STALLING:
            shortest = self.options.bound + 0.2
            return self.rng.uniform(shortest, max(shortest + 0.4, self.options.max_window))
        return self.rng.uniform(0.8, 1.5)

    async def inject(self) -> None:
        """Fault windows, each followed by a wait for recovery and a healthy stretch, until the duration is up."""
        bound = self.options.bound
        kinds = self.schedule()
        await asyncio.sleep(1.0)  # a healthy start: sessions are created
        index = 0
        while True:
            kind = kinds[index % len(kinds)]
            length = self.window_length(kind)
            if self.now() + length + bound + 1.0 > self.options.duration:
                break
            index += 1
            window = Window(kind, "", self.now())
            self.result.windows.append(window)
            self.recovered.clear()
            try:
                window.detail = await self.store.begin(kind, bound)
                await asyncio.sleep(max(0.0, window.started + length - self.now()))
            finally:
                await self.store.end()
                window.ended = self.now()
            if self.options.verbose:
                print(f"  {self.store.backend}: {kind} {window.started:.1f}-{window.ended:.1f} s", file=sys.stderr)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.recovered.wait(), bound + 0.5)
            await asyncio.sleep(self.rng.uniform(0.8, 1.5))
        await asyncio.sleep(max(0.0, self.options.duration - self.now()))

    # -- the run --

    async def run(self) -> None:
        clients = [self.client() for _ in self.visitors]
        self.t0 = time.monotonic()
        visitors = [asyncio.create_task(self.visit(v, http)) for v, http in zip(self.visitors, clients, strict=True)]
        try:
            await self.inject()
        finally:
            self.stop.set()
            await self.store.end()
            _, pending = await asyncio.wait(visitors, timeout=self.options.client_timeout + 1)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*visitors, return_exceptions=True)
        for visitor, outcome in zip(self.visitors, results, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                self.result.error = f"client {visitor.index} crashed: {type(outcome).__name__}: {outcome}"
        await self.final_reads()
        self.judge_run()

    async def final_reads(self) -> None:
        """After the faults: every session must hold at least its last acknowledged value."""
        deadline = self.now() + self.options.client_timeout + 3.0
        async with httpx.AsyncClient(timeout=self.options.client_timeout, verify=self.tls) as http:
            await asyncio.gather(
                *(self.final_read(http, visitor, deadline) for visitor in self.visitors if visitor.cookie)
            )

    async def final_read(self, http: httpx.AsyncClient, visitor: Visitor, deadline: float) -> None:
        """Read the visitor's session (from either process in turn) until a 200 or ``deadline``; judge it."""
        check = self.result.checks["writes"]
        last, attempt = "no answer", 0
        while (remaining := deadline - self.now()) > 0:
            url = self.urls[attempt % len(self.urls)] + "/read"
            attempt += 1
            try:
                response = await http.get(
                    url,
                    headers={"cookie": f"{COOKIE}={visitor.cookie}"},
                    timeout=min(remaining, self.options.bound + 1.0),  # then try the other process
                )
            except httpx.HTTPError as exc:
                last = type(exc).__name__
                continue
            if response.status_code != 200:
                last = str(response.status_code)
                await asyncio.sleep(0.2)
                continue
            data = response.json()
            self.result.sessions_checked += 1
            n = data.get("n")
            if data.get("id") is None:
                check.fail(f"{visitor.ident} final read: the session's data is gone (acknowledged {visitor.acked})")
            elif data.get("id") != visitor.ident:
                self.result.checks["crossed"].fail(
                    f"{visitor.ident} final read: got id {data.get('id')!r}, n={n!r} (acknowledged {visitor.acked})"
                )
            elif not isinstance(n, int) or n < visitor.acked:
                check.fail(f"{visitor.ident} final read: {n!r}, below the acknowledged {visitor.acked}")
            elif n > visitor.acked + visitor.unsure:
                check.fail(
                    f"{visitor.ident} final read: {n}, above acknowledged {visitor.acked} + {visitor.unsure} unsure"
                )
            return
        check.fail(f"{visitor.ident} final read: no 200 in {attempt} attempts after the faults (last: {last})")

    def judge_run(self) -> None:
        late = [s for s in self.result.samples if s.status is None or s.elapsed > self.options.bound_of(s.op)]
        for sample in late[:EXAMPLES]:
            answer = "no answer" if sample.status is None else f"answered {sample.status}"
            self.result.checks["bound"].fail(
                f"v{sample.client} {sample.op} at {sample.started:.1f} s: {answer} after {sample.elapsed:.2f} s "
                f"(bound {self.options.bound_of(sample.op):g} s)"
            )
        self.result.checks["bound"].failures = len(late)
        if late:
            by_op = Counter(f"{s.op} {'no answer' if s.status is None else s.status}" for s in late)
            self.result.notes.append(
                "over the bound: " + ", ".join(f"{what} {count}" for what, count in sorted(by_op.items()))
            )
        bound = self.options.bound
        for window in self.result.windows:
            if window.recovery is None:
                self.result.checks["recovery"].fail(
                    f"{window.kind} ended at {window.ended:.1f} s: no 200 within {bound + 0.5:.1f} s after it"
                )
            elif window.recovery > bound:
                self.result.checks["recovery"].fail(
                    f"{window.kind} ended at {window.ended:.1f} s: first 200 after {window.recovery:.2f} s"
                )
        healthy = [s for s in self.result.samples if self.is_healthy(s.started)]
        failed = [s for s in healthy if s.status != 200]
        self.result.healthy = (len(healthy), len(failed))
        if failed and len(failed) <= HEALTHY_TOLERANCE * len(healthy):
            self.result.notes.append(
                f"{len(failed)} of {len(healthy)} requests in healthy time got no 200 (tolerated), e.g. "
                + "; ".join(f"v{s.client} {s.op} at {s.started:.1f} s: {s.status}" for s in failed[:3])
            )
        if len(failed) > HEALTHY_TOLERANCE * len(healthy):
            check = self.result.checks["healthy"]
            for sample in failed[:EXAMPLES]:
                answer = "no answer" if sample.status is None else f"answered {sample.status}"
                check.fail(f"v{sample.client} {sample.op} at {sample.started:.1f} s: {answer}")
            check.failures = len(failed)

    def is_healthy(self, at: float) -> bool:
        """Whether a request started at ``at`` met no fault: at least the bound after the end of one window and
        before the start of the next."""
        bound = self.options.bound
        previous_end: float | None = None
        for window in self.result.windows:
            if at < window.started:
                return at + bound <= window.started and (previous_end is None or at >= previous_end + bound)
            previous_end = window.ended
        return previous_end is None or at >= previous_end + bound


async def soak_backend(backend: str, options: Options) -> Result:
    """Run the soak on one backend; everything started is stopped before this returns."""
    result = Result(backend)
    with tempfile.TemporaryDirectory(prefix=f"asession-soak-{backend}-") as tmp:
        scratch = Path(tmp)
        try:
            store = await open_store(backend, options, scratch)
        except Unreachable as exc:
            result.skipped = str(exc)
            return result
        direct: Any = None
        apps: list[App] = []
        keys: list[str] = []
        soak: Soak | None = None
        try:
            from asession import keys as session_keys

            direct = store.direct_backend()
            await direct.open()  # creates the table before two processes race to
            sentinel = session_keys.new_key()
            keys.append(sentinel)
            await direct.save(sentinel, {"sentinel": True}, MAX_AGE)
            apps = list(await asyncio.gather(*(start_app(store, options, scratch, i) for i in range(2))))
            async with httpx.AsyncClient(timeout=5) as client:
                result.store_timeout = (await client.get(apps[0].url + "/healthz")).json()["store_timeout"]
            if result.store_timeout is None:
                result.notes.append(
                    "SessionConfig has no store_timeout here: requests are bounded only by the backends' own timeouts"
                )
            soak = Soak(result, store, [app.url for app in apps], options)
            await soak.run()
            async with httpx.AsyncClient(timeout=2.0) as client:
                for app in apps:
                    try:
                        (await client.get(app.url + "/healthz")).raise_for_status()
                    except httpx.HTTPError as exc:
                        result.notes.append(
                            f"the process at {app.url} (pid {app.proc.pid}) does not answer /healthz after the run "
                            f"({type(exc).__name__}): its event loop is stuck"
                        )
            if await direct.load(sentinel) is None:
                result.notes.append(
                    "the sentinel session the soak wrote directly is gone: someone flushed the store during the run, "
                    "so lost sessions may not be asession's doing"
                )
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if soak is not None:
                keys += sorted(soak.cookies)
            failing = not result.passed
            await asyncio.gather(*(asyncio.to_thread(h.stop, app.proc, 5.0) for app in apps))
            for app in apps:
                if options.logs is not None:
                    options.logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(app.log, options.logs / app.log.name)
                if failing and options.verbose and app.log_tail():
                    print(f"--- {backend} app log tail ({app.url}) ---\n{app.log_tail()}", file=sys.stderr)
            await close_store(store, direct, keys)
    return result


# -- the report ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted ``values``."""
    if not values:
        return 0.0
    rank = max(1, min(len(values), round(fraction * len(values) + 0.5)))
    return values[rank - 1]


def report(result: Result, options: Options) -> str:
    lines = [f"\n== {result.backend} =="]
    if result.skipped:
        return "\n".join([*lines, f"skipped: {result.skipped}"])
    statuses = Counter(s.status for s in result.samples)
    elapsed = sorted(s.elapsed for s in result.samples)
    other = sum(count for status, count in statuses.items() if status not in (200, 503, None))
    timeout = "unset (ignored by this asession)" if result.store_timeout is None else f"{result.store_timeout:g} s"
    lines.append(
        f"requests {len(result.samples)}: 200 {statuses[200]}, 503 {statuses[503]}, other {other}, "
        f"no answer {statuses[None]}; sessions {result.sessions} (restarted after a failure: {result.restarts}), "
        f"checked at the end {result.sessions_checked}; in healthy time {result.healthy[0]} requests, "
        f"{result.healthy[1]} not 200"
    )
    lines.append(
        f"latency p50 {percentile(elapsed, 0.5) * 1000:.0f} ms, p99 {percentile(elapsed, 0.99) * 1000:.0f} ms, "
        f"p100 {percentile(elapsed, 1.0) * 1000:.0f} ms; bound {options.bound:g} s (store_timeout {timeout})"
    )
    if result.windows:
        lines.append("fault windows:")
        for window in result.windows:
            ended = window.ended if window.ended is not None else window.started
            inside = [s for s in result.samples if window.started <= s.started < ended]
            counts = Counter(s.status for s in inside)
            recovery = "none" if window.recovery is None else f"{window.recovery:.2f} s"
            lines.append(
                f"  {window.started:5.1f}-{ended:5.1f} s  {window.kind:<9} {window.detail}; "
                f"requests started {len(inside)} (200 {counts[200]}, 503 {counts[503]}, no answer {counts[None]}), "
                f"worst {max((s.elapsed for s in inside), default=0.0):.2f} s; recovered after {recovery}"
            )
    if options.verbose and result.samples:
        lines.append("per second (by start time): 200/503/other/no answer")
        buckets: dict[int, Counter[int | None]] = {}
        for sample in result.samples:
            buckets.setdefault(int(sample.started), Counter())[sample.status] += 1
        cells = []
        for second, counts in sorted(buckets.items()):
            other = sum(counts.values()) - counts[200] - counts[503] - counts[None]
            cells.append(f"{second:>3}s {counts[200]}/{counts[503]}/{other}/{counts[None]}")
        lines += ["  " + "  ".join(cells[i : i + 6]) for i in range(0, len(cells), 6)]
    for note in result.notes:
        lines.append(f"note: {note}")
    if result.error:
        lines.append(f"ERROR: {result.error}")
    for check in result.checks.values():
        lines.append(
            f"  [{'FAIL' if check.failures else ' ok '}] {check.name}"
            + (f": {check.failures} failure(s)" if check.failures else "")
        )
        lines += [f"         {example}" for example in check.examples]
    return "\n".join(lines)


def summary(results: list[Result], options: Options) -> str:
    header = "| backend | requests | 200 | 503 | other | p50 ms | p99 ms | p100 ms | faults | worst recovery s |"
    header += " " + " | ".join(CHECKS) + " | result |"
    lines = ["", header, "|" + " --- |" * (header.count("|") - 1)]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.backend} |" + " |" * (header.count("|") - 3) + " skipped |")
            continue
        statuses = Counter(s.status for s in result.samples)
        elapsed = sorted(s.elapsed for s in result.samples)
        other = len(result.samples) - statuses[200] - statuses[503]
        recoveries = [w.recovery for w in result.windows]
        worst = (
            "none"
            if None in recoveries
            else f"{max(r for r in recoveries if r is not None):.2f}"
            if recoveries
            else "-"
        )
        cells = [
            result.backend,
            str(len(result.samples)),
            str(statuses[200]),
            str(statuses[503]),
            str(other),
            f"{percentile(elapsed, 0.5) * 1000:.0f}",
            f"{percentile(elapsed, 0.99) * 1000:.0f}",
            f"{percentile(elapsed, 1.0) * 1000:.0f}",
            ",".join(w.kind for w in result.windows) or "-",
            worst,
            *("ok" if not result.checks[name].failures else f"FAIL {result.checks[name].failures}" for name in CHECKS),
            "pass" if result.passed else ("ERROR" if result.error else "FAIL"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nbound = store_timeout {options.store_timeout:g} s + {SLACK:g} s; {options.clients} clients; "
        f"{options.duration:g} s per backend; seed {options.seed}"
    )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------------


async def soak_all(backends: list[str], options: Options) -> list[Result]:
    results = []
    for backend in backends:
        print(f"{backend}: soaking for {options.duration:g} s ...", file=sys.stderr, flush=True)
        result = await soak_backend(backend, options)
        print(report(result, options), flush=True)
        results.append(result)
    return results


def parse_args(argv: Sequence[str] | None) -> tuple[list[str], Options]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="all", choices=[*BACKENDS, "all"])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per backend (default 60)")
    parser.add_argument("--store-timeout", type=float, default=2.0, help="SessionConfig.store_timeout (default 2)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=None, help="for the fault order, window lengths and clients")
    parser.add_argument("--faults", default=None, help=f"comma-separated, in order: {', '.join(TCP_FAULTS)} (TCP)")
    parser.add_argument("--think", type=float, default=0.05, help="mean pause between a client's requests (s)")
    parser.add_argument(
        "--max-window", type=float, default=6.0, help="longest stalling fault window in seconds (default 6)"
    )
    parser.add_argument("--logs", type=Path, default=None, help="copy the apps' logs into this directory")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database the soak writes to (default 11)")
    parser.add_argument("--verbose", action="store_true", help="fault windows as they happen; app logs on failure")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else None
    unknown = set(faults or ()) - set(TCP_FAULTS) - set(SQLITE_FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.store_timeout <= 0 or args.clients < 1:
        parser.error("--duration, --store-timeout and --clients must be positive")
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    if faults and len(backends) > 1:
        parser.error("--faults goes with one --backend")
    allowed = SQLITE_FAULTS if backends == ["sqlite"] else TCP_FAULTS
    if faults and set(faults) - set(allowed):
        parser.error(f"--faults for {backends[0]}: choose from {', '.join(allowed)}")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    options = Options(
        duration=args.duration,
        store_timeout=args.store_timeout,
        clients=args.clients,
        seed=seed,
        faults=faults,
        think=args.think,
        redis_db=args.redis_db,
        verbose=args.verbose,
        max_window=args.max_window,
        logs=args.logs,
    )
    return backends, options


def main(argv: Sequence[str] | None = None) -> int:
    backends, options = parse_args(argv)
    h.install_cleanup()
    try:
        results = asyncio.run(soak_all(backends, options))
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130
    finally:
        h.stop_all()
    print(summary(results, options))
    if len(backends) == 1 and results[0].skipped:
        return 2
    return 0 if all(r.passed or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
