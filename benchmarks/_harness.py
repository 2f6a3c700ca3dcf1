"""Shared machinery of the benchmark scripts: child processes, uvicorn servers, wrk runs, the correctness check.

Every child (uvicorn, wrk) is started in its own process group and recorded; :func:`stop_all` ends them,
and runs at exit and on SIGTERM/SIGHUP (SIGINT raises ``KeyboardInterrupt``, which unwinds through the
callers' ``finally`` blocks to the same place). Only 127.0.0.1 is ever loaded.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).with_name("session.lua")
HOST = "127.0.0.1"
SERVER_CORE = 0
LOAD_CORE = 1

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_children: list[subprocess.Popen[bytes]] = []


class ServerError(RuntimeError):
    """The server did not come up; the message holds the tail of its log."""


# -- child processes -----------------------------------------------------------------------------------


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new process group and remember it, so that it is stopped whatever happens."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 8.0) -> None:
    """SIGTERM the process group (uvicorn then runs its lifespan shutdown), SIGKILL it if it lingers."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5)
    else:
        _signal_group(proc, signal.SIGKILL)  # the leader is gone; make sure nothing it started is left
    if proc in _children:
        _children.remove(proc)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    """Stop every child still running; safe to call more than once."""
    for proc in list(_children):
        stop(proc, timeout=3.0)


def _on_signal(signum: int, frame: Any) -> None:
    print(f"\n{signal.Signals(signum).name}: stopping the servers and load generators", file=sys.stderr)
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every child at exit and on SIGTERM/SIGHUP; make Ctrl-C raise ``KeyboardInterrupt``.

    SIGINT is set explicitly because a shell starts background jobs with it ignored, and Python then
    keeps it ignored.
    """
    atexit.register(stop_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def pinned(cmd: list[str], core: int) -> list[str]:
    """Prefix ``cmd`` with ``taskset -c core`` where taskset exists and the machine has that core."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def server_reachable(url: str, default_port: int) -> bool:
    """Whether something listens at the host and port of ``url``."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


# -- uvicorn -------------------------------------------------------------------------------------------


@dataclass
class Server:
    variant: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident set size so far (VmHWM), in MiB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the server (all its threads) has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(variant: str, env: dict[str, str], log_dir: Path, timeout: float = 30.0) -> Server:
    """Start one uvicorn worker serving ``variant`` on a free port, pinned to core 0; wait until it answers."""
    port = free_port()
    log = log_dir / f"server-{variant}-{port}.log"
    cmd = pinned(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.apps:create_app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--lifespan",
            "on",
            "--log-level",
            "warning",
        ],
        SERVER_CORE,
    )
    full_env = {**os.environ, **env, "BENCH_VARIANT": variant, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = spawn(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(variant, port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            raise ServerError(f"uvicorn exited with {proc.returncode}:\n{server.log_tail()}")
        status = _get_status(HOST, port, "/none")
        if status == 200:
            return server
        if status is not None:
            stop(proc)
            raise ServerError(f"GET /none answered {status}:\n{server.log_tail()}")
        time.sleep(0.1)
    stop(proc)
    raise ServerError(f"uvicorn did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def _get_status(host: str, port: int, path: str) -> int | None:
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return None
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


# -- correctness ---------------------------------------------------------------------------------------


def check_correctness(base_url: str, stateful: bool) -> str | None:
    """Drive one variant by hand; return what is wrong, or ``None`` when it behaves.

    ``/none`` without a cookie sets none; ``/login`` sets one; three ``/write`` with that cookie (following
    any new Set-Cookie, as a browser would) answer 1, 2, 3; ``/read`` then answers 3; a second login is a
    different session that reads 0 and leaves the first one at 3. A stateless variant (the bare app, the
    calibration points) only has to answer 200 on every timed route.
    """
    import httpx

    def cookie_of(response: httpx.Response, current: str | None) -> str | None:
        values = response.headers.get_list("set-cookie")
        return values[-1].split(";", 1)[0].strip() if values else current

    def get(client: httpx.Client, path: str, cookie: str | None) -> httpx.Response:
        client.cookies.clear()  # send exactly the cookie given, never what the jar collected
        return client.get(path, headers={"cookie": cookie} if cookie else {})

    try:
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            response = get(client, "/none", None)
            if response.status_code != 200:
                return f"/none answered {response.status_code}"
            if not stateful:
                for path in ("/login", "/read", "/write", "/parallel"):
                    if (status := get(client, path, None).status_code) != 200:
                        return f"{path} answered {status}"
                return None
            if response.headers.get("set-cookie"):
                return "/none without a cookie set a cookie"
            first = cookie_of(get(client, "/login", None), None)
            if first is None:
                return "/login set no cookie"
            for expected in ("1", "2", "3"):
                response = get(client, "/write", first)
                if response.status_code != 200 or response.text != expected:
                    return f"/write answered {response.status_code} {response.text!r}, expected {expected!r}"
                first = cookie_of(response, first)
            if (text := get(client, "/read", first).text) != "3":
                return f"/read after three writes answered {text!r}, expected '3'"
            second = cookie_of(get(client, "/login", None), None)
            if second is None or second == first:
                return "a second /login did not get a session of its own"
            if (text := get(client, "/read", second).text) != "0":
                return f"a fresh session read {text!r}, expected '0'"
            if (text := get(client, "/read", first).text) != "3":
                return f"the first session read {text!r} after a second login, expected '3'"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def login_cookie(base_url: str) -> str | None:
    """Log in once (``GET /login`` without a cookie); the ``name=value`` of the cookie it set, or ``None``."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        values = client.get("/login").headers.get_list("set-cookie")
    return values[-1].split(";", 1)[0].strip() if values else None


@dataclass
class SessionKeys:
    """What ``/keys`` says after a ``/parallel`` run: the session's ``k*`` keys and those the server wrote."""

    held: list[str]
    written: list[str]

    @property
    def lost(self) -> list[str]:
        return [key for key in self.written if key not in self.held]


def session_keys(base_url: str, cookie: str) -> SessionKeys:
    """Read the shared session back with one ``GET /keys`` carrying ``cookie``; raises if the answer is not 200."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        response = client.get("/keys", headers={"cookie": cookie})
    if response.status_code != 200:
        raise RuntimeError(f"/keys answered {response.status_code}")
    body = response.json()
    return SessionKeys(held=list(body["held"]), written=list(body["written"]))


# -- wrk -----------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    logins: int
    cookies: list[str] = field(default_factory=list)
    #: Server CPU time (user + system, all threads) per request, in microseconds, and the server's CPU
    #: use over the run (1.0 = one core busy): filled in by whoever knows the server.
    cpu_us_per_request: float | None = None
    server_cpu: float | None = None

    @property
    def ok(self) -> bool:
        return self.non2xx == 0 and self.requests > 0


def run_wrk(
    url: str,
    mode: str,
    path: str,
    duration: int,
    connections: int,
    *,
    keys_file: Path | None = None,
    cookie_name: str = "session",
    cookie: str | None = None,
) -> WrkResult:
    """Run wrk (one thread, pinned to core 1) against ``url + path`` for ``duration`` seconds.

    ``mode`` is one of ``session.lua``'s: ``login``, ``none``, ``keys`` (with ``keys_file``) or ``shared``
    (with ``cookie``, the ``name=value`` every connection sends; the result's ``cookies`` then hold the
    shared cookie as it stood at the end).
    """
    args = [mode, path]
    if mode == "login":
        args.append(str(connections))
    elif mode == "keys":
        assert keys_file is not None
        args += [str(keys_file), cookie_name]
    elif mode == "shared":
        assert cookie is not None
        args.append(cookie)
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_SCRIPT),
            url + path,
            "--",
            *args,
        ],
        LOAD_CORE,
    )
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        stop(proc)
    text = out.decode(errors="replace")
    summary = None
    cookies = []
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            summary = json.loads(line[8:])
        elif line.startswith("WRKCOOKIE "):
            cookies.append(line[10:].strip())
    if summary is None:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}")
    seconds = summary["duration_us"] / 1e6
    return WrkResult(
        requests=summary["requests"],
        seconds=seconds,
        rps=summary["requests"] / seconds if seconds else 0.0,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        non2xx=summary["non2xx"],
        socket_errors=summary["connect_errors"]
        + summary["read_errors"]
        + summary["write_errors"]
        + summary["timeouts"],
        logins=summary["logins"],
        cookies=cookies,
    )


# -- progress ------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr with an estimate of the time left."""

    def __init__(self, total: float, width: int = 30) -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.width = width
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def advance(self, amount: float, label: str) -> None:
        self.done = min(self.total, self.done + amount)
        self.show(label)

    def show(self, label: str) -> None:
        fraction = self.done / self.total
        elapsed = time.monotonic() - self.start
        left = elapsed / fraction - elapsed if fraction > 0 else 0.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {fraction:4.0%} {_clock(elapsed)} elapsed, ~{_clock(left)} left  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"
