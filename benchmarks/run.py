"""The load benchmark: every session layer against the bare app, under uvicorn and wrk, in one command.

    python -m benchmarks.run             # the full run (about 20 minutes), writes benchmarks/RESULTS.md
    python -m benchmarks.run --quick     # a smoke run (about 2 minutes), writes benchmarks/RESULTS-quick.md

For each variant of ``benchmarks/apps.py``: start one uvicorn worker (uvloop, httptools, no access log)
pinned to core 0, check that it keeps sessions correctly, then drive ``/none``, ``/read`` and ``/write``
with wrk from core 1 (64 connections, each with its own session), and ``/parallel`` (the 64 connections
share one session and each request sets one of 16 keys; one ``GET /keys`` afterwards counts the keys the
session kept). Rounds interleave the variants, bare app first and last, and each variant's req/s is
divided by the bare app's in the same round. Then the scaling runs: /read against 1k / 100k / 1M stored
sessions on SQLite, PostgreSQL and Redis; payloads of 100 B / 1 KB / 4 KB; ``clear_expired()`` on 1M
expired rows. Only 127.0.0.1 is loaded; every server and wrk process is stopped at the end, on Ctrl-C
too; the pre-populated data is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks import populate, report
from benchmarks.apps import DEFAULTS, PARALLEL_KEYS, VARIANTS

HERE = Path(__file__).resolve().parent
ENDPOINTS = report.ENDPOINTS
SCALING_VARIANTS = {"sqlite": "asession-sqlite", "postgres": "asession-postgres", "redis": "asession-redis"}
PAYLOAD_VARIANTS = ("asession-memory", "asession-sqlite", "asession-postgres", "asession-redis")
SERVICE_PORTS = {"redis": 6379, "postgres": 5432, "memcached": 11211}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 1 round of 1 s, small stores")
    parser.add_argument("--duration", type=int, help="seconds of each timed wrk run (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, help="seconds of untimed wrk before each timed run (default 1, quick 0)")
    parser.add_argument("--rounds", type=int, help="rounds over all variants (default 3, quick 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--variants",
        default="default",
        help="comma-separated names or globs from benchmarks/apps.py (bare is always added); "
        "'default' for the standard set, 'all' for every variant",
    )
    parser.add_argument(
        "--scaling",
        choices=("on", "off", "only"),
        default="on",
        help="the store-size, payload and clear_expired runs: with the main run, skipped, or alone",
    )
    parser.add_argument("--sizes", help="stored sessions for the scaling runs (default 1000,100000,1000000)")
    parser.add_argument("--payloads", help="payload bytes (default 100,1024,4096)")
    parser.add_argument("--expired", type=int, help="expired rows for clear_expired (default 1000000)")
    parser.add_argument("--output", type=Path, help="the Markdown report (default benchmarks/RESULTS.md)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if quick else 1)
    args.rounds = args.rounds or (1 if quick else 3)
    args.sizes = _ints(args.sizes) if args.sizes else ([1000, 10_000] if quick else [1000, 100_000, 1_000_000])
    args.payloads = _ints(args.payloads) if args.payloads else ([100, 4096] if quick else [100, 1024, 4096])
    args.expired = args.expired or (10_000 if quick else 1_000_000)
    args.output = args.output or HERE / ("RESULTS-quick.md" if quick else "RESULTS.md")
    args.suffix = "-quick" if quick else ""
    return args


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def select_variants(spec: str) -> list[str]:
    if spec == "default":
        chosen = [name for name, v in VARIANTS.items() if v.default]
    elif spec == "all":
        chosen = list(VARIANTS)
    else:
        patterns = [p.strip() for p in spec.split(",") if p.strip()]
        chosen = [name for name in VARIANTS if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in VARIANTS)]
        if unknown:
            raise SystemExit(f"Unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return ["bare", *[n for n in chosen if n != "bare"]]


# -- environment -------------------------------------------------------------------------------------------


class Environment:
    """Scratch directory, the dedicated PostgreSQL database and Redis db, and their removal."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="asession-bench-"))
        self.redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULTS["BENCH_REDIS_URL"]
        # A database of this run's own unless one is named: two runs at once must not drop each other's.
        self.postgres_url = os.environ.get("BENCH_POSTGRES_URL") or f"{DEFAULTS['BENCH_POSTGRES_URL']}_{os.getpid()}"
        self.memcached_url = os.environ.get("BENCH_MEMCACHED_URL") or DEFAULTS["BENCH_MEMCACHED_URL"]
        self.unavailable: dict[str, str] = {}
        self._created_database = False
        self._used_redis = False

    def server_env(self, **extra: str) -> dict[str, str]:
        return {
            "BENCH_DIR": str(self.tmp),
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_POSTGRES_URL": self.postgres_url,
            "BENCH_MEMCACHED_URL": self.memcached_url,
            **extra,
        }

    def prepare(self, needs: set[str]) -> None:
        urls = {"redis": self.redis_url, "postgres": self.postgres_url, "memcached": self.memcached_url}
        for service in sorted(needs):
            if not h.server_reachable(urls[service], SERVICE_PORTS[service]):
                self.unavailable[service] = f"{service} is not reachable at {urls[service]}"
        if "redis" in needs and "redis" not in self.unavailable:
            try:
                import redis

                client = redis.Redis.from_url(self.redis_url)
                size = client.dbsize()
                client.close()
            except Exception as exc:
                self.unavailable["redis"] = f"Redis failed: {exc!r}"
            else:
                if size:
                    self.unavailable["redis"] = (
                        f"the benchmark's Redis database {self.redis_url} holds {size} keys; it must be empty, since "
                        "the benchmark flushes it (set BENCH_REDIS_URL to an empty database)"
                    )
                else:
                    self._used_redis = True
        if "postgres" in needs and "postgres" not in self.unavailable:
            try:
                asyncio.run(self._create_database())
            except Exception as exc:
                self.unavailable["postgres"] = f"PostgreSQL failed: {exc!r}"

    def _admin_url(self) -> tuple[str, str]:
        base, _, name = self.postgres_url.rpartition("/")
        name = name.split("?", 1)[0]
        return f"{base}/postgres", name

    async def _create_database(self) -> None:
        import asyncpg

        admin_url, name = self._admin_url()
        if not name.startswith("asession_bench"):
            raise RuntimeError(f"refusing to create and drop {name!r}: the benchmark database must be asession_bench*")
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await connection.execute(f'CREATE DATABASE "{name}"')
            self._created_database = True
        finally:
            await connection.close()

    async def _drop_database(self) -> None:
        import asyncpg

        admin_url, name = self._admin_url()
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    def cleanup(self) -> None:
        """Remove everything the run stored: the scratch directory, the PostgreSQL database, the Redis db."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._created_database:
            try:
                asyncio.run(self._drop_database())
                self._created_database = False
            except Exception as exc:
                print(f"warning: could not drop the benchmark database: {exc!r}", file=sys.stderr)
        if self._used_redis:
            try:
                asyncio.run(populate.RedisStore(self.redis_url).clear())
                self._used_redis = False
            except Exception as exc:
                print(f"warning: could not flush the benchmark Redis database: {exc!r}", file=sys.stderr)


def probe(name: str, env: Environment) -> str | None:
    """Why variant ``name`` cannot run here (its backend does not import or its server is down), or None."""
    variant = VARIANTS[name]
    for service in variant.needs:
        if service in env.unavailable:
            return env.unavailable[service]
    saved = {key: os.environ.get(key) for key in env.server_env()}
    os.environ.update(env.server_env())
    try:
        from benchmarks.apps import build_app

        build_app(name)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


async def _forget(url: str, cookies: list[str]) -> None:
    from asession.backends import backend_from_url

    async with backend_from_url(url) as backend:
        for cookie in cookies:
            await backend.delete(cookie.split("=", 1)[-1])


# -- the runs ----------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, env: Environment, results: report.Results) -> None:
        self.args = args
        self.env = env
        self.results = results
        self.progress: h.Progress | None = None

    def _advance(self, seconds: float, label: str) -> None:
        if self.progress is not None:
            self.progress.advance(seconds, label)

    def wrk(self, server: h.Server, endpoint: str, mode: str, warm_up: bool = True, **kwargs: Any) -> h.WrkResult:
        if warm_up and self.args.warmup:
            h.run_wrk(server.url, mode, endpoint, self.args.warmup, self.args.connections, **kwargs)
        cpu_before = server.cpu_seconds()
        result = h.run_wrk(server.url, mode, endpoint, self.args.duration, self.args.connections, **kwargs)
        cpu_after = server.cpu_seconds()
        if cpu_before is not None and cpu_after is not None and result.requests:
            result.cpu_us_per_request = (cpu_after - cpu_before) * 1e6 / result.requests
            result.server_cpu = (cpu_after - cpu_before) / result.seconds
        if mode == "login" and server.variant == "asession-memcached" and result.cookies:
            asyncio.run(_forget(self.env.memcached_url, result.cookies))
        return result

    def serve(self, name: str, **extra_env: str) -> h.Server:
        return h.start_server(name, self.env.server_env(**extra_env), self.env.tmp)

    def main_rounds(self, variants: list[str]) -> None:
        status = self.results.status
        middle = [n for n in variants if n != "bare"]
        for rnd in range(self.args.rounds):
            for slot, name in enumerate(["bare", *middle, "bare"]):
                label = f"round {rnd + 1}/{self.args.rounds} {name}"
                if status.get(name, "ok") != "ok":
                    self._advance(self._variant_cost(), label + " (skipped)")
                    continue
                self._run_variant(name, rnd, slot, label)

    def _variant_cost(self) -> float:
        return float(len(ENDPOINTS) * (self.args.duration + 0.3) + self.args.warmup + 1.5)

    def _run_variant(self, name: str, rnd: int, slot: int, label: str) -> None:
        variant = VARIANTS[name]
        try:
            server = self.serve(name)
        except h.ServerError as exc:
            self.results.status[name] = "failed: server did not start: " + _one_line(str(exc))
            self._advance(self._variant_cost(), label + " (failed)")
            return
        measured: list[report.Measurement] = []
        try:
            problem = h.check_correctness(server.url, variant.stateful)
            if problem is not None:
                self.results.status[name] = f"failed correctness check: {problem}"
                self._advance(self._variant_cost(), label + " (failed)")
                return
            for index, endpoint in enumerate(ENDPOINTS):
                mode = _mode(variant.stateful, endpoint)
                shared = None
                if mode == "shared":
                    # One login for all the connections; the run then overlaps writes of that one session.
                    shared = h.login_cookie(server.url)
                    if shared is None:
                        self.results.status[name] = f"failed: /login set no cookie to share on {endpoint}"
                        self._advance(self.args.duration + 0.3, f"{label} {endpoint} (failed)")
                        continue
                # Only a fresh server needs warming up; each wrk run still logs its connections in first.
                result = self.wrk(server, endpoint, mode, warm_up=index == 0, cookie=shared)
                if shared is not None:
                    self._count_kept_keys(server, name, rnd, shared, result.cookies)
                measured.append(
                    report.Measurement(
                        name,
                        endpoint,
                        rnd,
                        slot,
                        result.rps,
                        result.p50_ms,
                        result.p99_ms,
                        result.non2xx,
                        result.socket_errors,
                        cpu_us=result.cpu_us_per_request,
                        cpu_use=result.server_cpu,
                    )
                )
                if result.non2xx:
                    self.results.status[name] = f"failed: {result.non2xx} non-2xx answers on {endpoint}"
                self._advance(
                    self.args.duration + (self.args.warmup if index == 0 else 0) + 0.3,
                    f"{label} {endpoint} {result.rps:.0f} req/s",
                )
        finally:
            rss = server.peak_rss_mib()
            h.stop(server.proc)
            for m in measured:
                m.rss_mib = rss
            self.results.measurements += measured
            self._advance(1.5, label)
        self.results.status.setdefault(name, "ok")

    def _count_kept_keys(self, server: h.Server, name: str, rnd: int, shared: str, final: list[str]) -> None:
        """After /parallel: read the shared session back through /keys with the cookie as the client last had it."""
        cookie = final[-1] if final else shared
        try:
            keys = h.session_keys(server.url, cookie)
        except Exception as exc:
            self.results.parallel_unjudged[name] = "/keys failed: " + _one_line(f"{type(exc).__name__}: {exc}")
        else:
            self.results.parallel_keys[(name, rnd)] = (len(keys.written) - len(keys.lost), len(keys.written))
        if server.variant == "asession-memcached":
            asyncio.run(_forget(self.env.memcached_url, sorted({shared, cookie})))

    # -- scaling ---------------------------------------------------------------------------------------

    def _store(self, store: str) -> Any:
        if store == "sqlite":
            return populate.SQLiteStore(self.env.tmp / "scaling.sqlite3")
        if store == "postgres":
            return populate.PostgresStore(self.env.postgres_url)
        return populate.RedisStore(self.env.redis_url)

    def scaling(self, usable: set[str]) -> None:
        # One bare server for the whole section, measured right before and after each store run: the
        # fills between sizes take long enough for the machine's load to change.
        bare_server = self.serve("bare")
        try:
            for store, variant in SCALING_VARIANTS.items():
                if variant not in usable:
                    self.results.scaling_status[store] = f"skipped: {self.results.status.get(variant, 'not selected')}"
                    self._advance(self._scaling_cost(store), f"scaling {store} (skipped)")
                    continue
                self._scale_store(store, variant, bare_server)
        finally:
            h.stop(bare_server.proc)

    def _scale_store(self, store: str, variant: str, bare_server: h.Server) -> None:
        target = self._store(store)
        try:
            asyncio.run(target.prepare())
            have = 0
            for size in self.args.sizes:
                self._advance(0, f"scaling {store}: storing {size:,} sessions")
                asyncio.run(target.fill(have, size))
                have = size
                keys = populate.write_keys_file(self.env.tmp / f"keys-{store}-{size}.txt", size)
                extra = {"BENCH_SQLITE_PATH": str(target.path)} if store == "sqlite" else {}
                # As many repetitions as the main run has rounds, each between two bare runs; the
                # medians are kept, since a single run on a shared machine can be off by 20 %.
                points: list[report.ScalingPoint] = []
                server = self.serve(variant, **extra)
                try:
                    for repetition in range(self.args.rounds):
                        first = not self.results.scaling and not points
                        before = self.wrk(bare_server, "/read", "none", warm_up=first).rps
                        result = self.wrk(server, "/read", "keys", keys_file=keys, warm_up=repetition == 0)
                        after = self.wrk(bare_server, "/read", "none", warm_up=False).rps
                        if result.non2xx or not result.requests:
                            raise RuntimeError(f"{result.non2xx} non-2xx answers at {size:,} sessions")
                        points.append(
                            report.ScalingPoint(
                                result.rps, result.rps / ((before + after) / 2), result.cpu_us_per_request
                            )
                        )
                finally:
                    h.stop(server.proc)
                cpu = [p.cpu_us for p in points if p.cpu_us is not None]
                self.results.scaling[(store, size)] = report.ScalingPoint(
                    statistics.median(p.rps for p in points),
                    statistics.median(p.ratio for p in points),
                    statistics.median(cpu) if cpu else None,
                )
                self._advance(
                    self._fill_cost(store, size) + 3 * self.args.rounds * self._run_cost(),
                    f"scaling {store} {size:,}: {self.results.scaling[(store, size)].rps:.0f} req/s",
                )
            self.results.scaling_status[store] = "ok"
        except Exception as exc:
            self.results.scaling_status[store] = "failed: " + _one_line(f"{type(exc).__name__}: {exc}")
        finally:
            asyncio.run(target.clear())

    def payloads(self, usable: set[str]) -> None:
        names = [n for n in PAYLOAD_VARIANTS if n in usable]
        for name in PAYLOAD_VARIANTS:
            if name not in usable:
                self.results.payload_status[name] = f"skipped: {self.results.status.get(name, 'not selected')}"
        for size in self.args.payloads:
            bare = self._bare_rps()
            self._advance(2 * self._run_cost(), f"payload {size} B: bare")
            for name in names:
                extra = {"BENCH_PAYLOAD": str(size), "BENCH_SQLITE_PATH": str(self.env.tmp / f"payload-{size}.sqlite3")}
                try:
                    server = self.serve(name, **extra)
                    try:
                        for endpoint in ("/read", "/write"):
                            result = self.wrk(server, endpoint, "login", warm_up=endpoint == "/read")
                            if result.non2xx:
                                raise RuntimeError(f"{result.non2xx} non-2xx answers on {endpoint} with {size} B")
                            self.results.payloads[(name, size, endpoint)] = (result.rps, result.rps / bare[endpoint])
                    finally:
                        h.stop(server.proc)
                except Exception as exc:
                    self.results.payload_status[name] = "failed: " + _one_line(f"{type(exc).__name__}: {exc}")
                self._advance(2 * self._run_cost(), f"payload {size} B: {name}")
            # The bare app again after the variants: their ratios use the mean of both bare runs.
            after = self._bare_rps()
            for (name, at, endpoint), (rps, _) in list(self.results.payloads.items()):
                if at == size:
                    reference = (bare[endpoint] + after[endpoint]) / 2
                    self.results.payloads[(name, at, endpoint)] = (rps, rps / reference)
            self._advance(2 * self._run_cost(), f"payload {size} B: bare")

    def _bare_rps(self) -> dict[str, float]:
        server = self.serve("bare")
        try:
            return {e: self.wrk(server, e, "none", warm_up=e == "/read").rps for e in ("/read", "/write")}
        finally:
            h.stop(server.proc)

    def clear_expired(self, usable: set[str]) -> None:
        for store in ("sqlite", "postgres"):
            variant = SCALING_VARIANTS[store]
            if variant not in usable:
                self.results.clear_expired[store] = f"skipped: {self.results.status.get(variant, 'not selected')}"
                continue
            target = self._store(store)
            if store == "sqlite":
                target = populate.SQLiteStore(self.env.tmp / "expired.sqlite3")
            try:
                asyncio.run(target.prepare())
                self._advance(0, f"clear_expired {store}: storing {self.args.expired:,} expired rows")
                asyncio.run(target.fill(0, self.args.expired, expired=True))
                seconds, deleted = asyncio.run(_time_clear_expired(target.backend()))
                self.results.clear_expired[store] = (self.args.expired, seconds, deleted)
            except Exception as exc:
                self.results.clear_expired[store] = "failed: " + _one_line(f"{type(exc).__name__}: {exc}")
            finally:
                asyncio.run(target.clear())
            self._advance(self._fill_cost(store, self.args.expired) + 2, f"clear_expired {store}")

    def _run_cost(self) -> float:
        return float(self.args.duration + self.args.warmup + 1.5)

    def _fill_cost(self, store: str, size: int) -> float:
        return size * {"sqlite": 8e-6, "postgres": 1.2e-5, "redis": 1.5e-5}[store]

    def _scaling_cost(self, store: str) -> float:
        return float(
            self._fill_cost(store, max(self.args.sizes))
            + 3 * self.args.rounds * len(self.args.sizes) * self._run_cost()
        )

    def estimate(self, variants: list[str], main: bool, scaling: bool) -> float:
        total = 0.0
        if main:
            total += self.args.rounds * (len(variants) + 1) * (self._variant_cost() + 1.5)
        if scaling:
            total += sum(self._scaling_cost(s) for s in SCALING_VARIANTS)
            total += len(self.args.payloads) * (len(PAYLOAD_VARIANTS) + 2) * 2 * self._run_cost()
            total += self._fill_cost("sqlite", self.args.expired) + self._fill_cost("postgres", self.args.expired) + 4
        return total


async def _time_clear_expired(backend: Any) -> tuple[float, int]:
    await backend.open()
    try:
        start = time.perf_counter()
        deleted = await backend.clear_expired()
        return time.perf_counter() - start, deleted
    finally:
        await backend.close()


def _mode(stateful: bool, endpoint: str) -> str:
    """The session.lua mode for an endpoint: no cookie for /none and the stateless apps, one shared session
    for /parallel, a session per connection otherwise."""
    if not stateful or endpoint == "/none":
        return "none"
    return "shared" if endpoint == "/parallel" else "login"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The last line of a traceback names the error; keep the first line for context.
    if len(lines) > 2:
        return f"{lines[0]} … {lines[-1]}"[:300]
    return " ".join(lines)[:300]


# -- the report ------------------------------------------------------------------------------------------


def machine_header(argv: list[str]) -> str:
    import starlette
    import uvicorn

    import asession

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"Python": platform.python_version(), "uvicorn": uvicorn.__version__, "starlette": starlette.__version__}
    for module in ("starsessions", "redis", "aiocache", "aiosqlite", "asyncpg", "uvloop", "httptools"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:
            continue
    versions["asession"] = f"{asession.__version__} ({_git_describe()})"
    try:
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        wrk_version = "?"
    return "\n".join(
        [
            f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {os.cpu_count()} cores (`nproc` {_nproc()}), {cpu}, {platform.system()} {platform.release()}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}, wrk {wrk_version}",
            f"- command: `{shlex.join(['python', '-m', 'benchmarks.run', *argv])}`",
            "- server: one uvicorn worker, `--loop uvloop --http httptools --no-access-log`, "
            f"{'pinned to core 0' if shutil.which('taskset') else 'not pinned'}; "
            f"load: wrk -t1, pinned to core 1",
        ]
    )


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "-C", str(h.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(h.ROOT), "status", "--porcelain", "asession"], capture_output=True, text=True
        )
        return out.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:
        return "no git"


def write_report(args: argparse.Namespace, argv: list[str], results: report.Results, variants: list[str]) -> str:
    body = report.markdown(results, variants)
    charts = [] if args.no_charts else report.charts(results, variants, args.output.parent, args.suffix)
    warm_up = f" (a fresh server first gets {args.warmup} s of warm-up)" if args.warmup else ""
    method = (
        f"Each timed run is wrk for {args.duration} s with {args.connections} connections{warm_up}; /read and "
        "/write connections each log in first (GET /login) and send their own cookie on every request, /none "
        "sends no cookie. For /parallel the harness logs in once and every connection sends that one cookie "
        "(following a new Set-Cookie for it, as a browser's cookie jar would), so the requests in flight all "
        f"write the same session, each setting one of {len(PARALLEL_KEYS)} keys; the bare app gets no cookie. "
        "A ratio is the variant's req/s over the mean of the two bare runs (first and last) of the same round. "
        "Absolute numbers on a shared 2-core machine are noise; ratios are the result."
    )
    chart_lines = [f"![{p.stem}]({p.name})" for p in charts]
    if (HERE / "PROFILE.md").exists():
        chart_lines.append(
            "\nWhere the time goes per request (py-spy profiles, in-process measurements) and what would make "
            "each target reachable: [PROFILE.md](PROFILE.md)."
        )
    text = "\n".join(
        [
            "# asession load benchmarks",
            "",
            machine_header(argv),
            "",
            method,
            "",
            body,
            *chart_lines,
        ]
    )
    args.output.write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian) first.")
    h.install_cleanup()
    variants = select_variants(args.variants)
    env = Environment()
    results = report.Results(rounds=args.rounds if args.scaling != "only" else 0)
    runner = Runner(args, env, results)
    main_run, scaling_run = args.scaling != "only", args.scaling != "off"
    needed = set(variants) | (set(SCALING_VARIANTS.values()) | set(PAYLOAD_VARIANTS) if scaling_run else set())
    try:
        env.prepare({service for name in needed for service in VARIANTS[name].needs})
        for name in sorted(needed, key=list(VARIANTS).index):
            reason = probe(name, env)
            if reason is not None:
                results.status[name] = f"skipped: {reason}"
        runner.progress = h.Progress(runner.estimate(variants, main_run, scaling_run))
        if main_run:
            runner.main_rounds(variants)
        if scaling_run:
            # Whatever failed its correctness check in the main run is not measured again.
            usable = {n for n in needed if results.status.get(n, "ok") == "ok"}
            runner.scaling(usable)
            runner.payloads(usable)
            runner.clear_expired(usable)
        runner.progress.close()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers and removing the benchmark data", file=sys.stderr)
        h.stop_all()
        env.cleanup()
        return 130
    finally:
        h.stop_all()
        env.cleanup()
    text = write_report(args, argv, results, variants if main_run else [])
    print(text)
    print(f"\nwritten to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
