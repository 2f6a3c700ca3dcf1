"""The benchmark harness still runs: a tiny ``benchmarks.run`` and ``benchmarks.micro``, and nothing left behind.

These check that the one benchmark command keeps working and cleans up after itself (also on Ctrl-C);
they time nothing. ``python -m benchmarks.run`` produces the real figures (``benchmarks/RESULTS.md``).
The quick run covers every timed endpoint, ``/parallel`` (one session shared by all connections) included,
and its keys-kept figure; the report's ``/parallel`` table is also checked on made-up results.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent


def _require_tools() -> None:
    missing = [tool for tool in ("wrk",) if shutil.which(tool) is None]
    missing += [module for module in ("uvloop", "httptools") if importlib.util.find_spec(module) is None]
    if missing:
        reason = f"the benchmark harness needs {', '.join(missing)} (Debian's wrk; pip's uvloop and httptools)"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)


def _processes_marked(marker: str) -> list[str]:
    """Command lines of the live processes whose environment carries ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker.encode() not in environ:
                continue
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")), ""
            )
            if "Z" in state.split()[1:2]:  # a zombie is already dead; its parent just hasn't reaped it
                continue
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError):
            continue
    return found


#: A Redis database of these tests' own: the harness refuses a database that holds keys.
BENCH_REDIS_DB = 12


def _bench_env(marker: str, redis_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "ASESSION_BENCH_TEST_MARK": marker, "PYTHONPATH": str(ROOT)}
    if redis_url is not None:
        env["BENCH_REDIS_URL"] = urlunsplit(urlsplit(redis_url)._replace(path=f"/{BENCH_REDIS_DB}"))
    return env


def _wait_until_gone(marker: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = _processes_marked(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _processes_marked(marker)
    return left


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find leftover processes")
def test_quick_run_reports_every_part_and_leaves_nothing_running(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    """One short run of the command: main table with /parallel, scaling, payloads, clear_expired; no server or
    wrk left. starlette is a peer whose session lives in the cookie: its /parallel figure shows that wrk's
    shared mode follows the Set-Cookie of the answers (the last cookie holds at least its own request's key)."""
    _require_tools()
    marker = uuid.uuid4().hex
    output = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--variants", "asession-memory,starlette"]
    command += ["--sizes", "200", "--payloads", "100", "--expired", "500", "--no-charts", "--output", str(output)]
    env = _bench_env(marker, redis_url)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = output.read_text()
    assert "| asession-memory |" in report and "| bare |" in report
    assert "| variant | /none | /read | /write | /parallel | status |" in report
    for name in ("bare", "asession-memory", "starlette"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} | /parallel |"))
        assert row.rstrip().endswith("| 0 | 0 |"), row  # no non-2xx answers, no socket errors
    # After /parallel the shared session holds every key the server wrote: asession merges per key.
    kept = {
        cells[1]: cells[2:4]
        for line in report.split("### /parallel: keys kept", 1)[1].split("\n###", 1)[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| variant", "| ---"))
        for cells in [[c.strip() for c in line.split("|")]]
    }
    assert set(kept) == {"asession-memory", "starlette"}, kept
    assert kept["asession-memory"] == ["16/16", "yes"], kept
    starlette_kept, starlette_written = map(int, kept["starlette"][0].split("/"))
    assert starlette_written == 16 and starlette_kept >= 1, kept
    for store in ("sqlite", "postgres", "redis"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {store} |"))
        assert row.rstrip().endswith("| ok |"), row
    assert "clear_expired" in report
    assert "failed" not in report.lower(), report
    assert _wait_until_gone(marker) == []


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find leftover processes")
def test_ctrl_c_stops_every_server_and_load_generator(tmp_path: Path) -> None:
    """SIGINT in the middle of a run stops the servers and wrk it started."""
    _require_tools()
    marker = uuid.uuid4().hex
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--variants", "asession-memory,starlette"]
    command += ["--duration", "5", "--scaling", "off", "--no-charts", "--output", str(tmp_path / "R.md")]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=_bench_env(marker), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        # Wait until the harness has a server and a wrk running, then interrupt it as Ctrl-C would.
        while time.monotonic() < deadline:
            running = _processes_marked(marker)
            if any("uvicorn" in line for line in running) and any("wrk" in line for line in running):
                break
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("the harness never had a server and wrk running at once")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output[-2000:]
    assert _wait_until_gone(marker) == [], output[-2000:]


def test_report_parallel_table() -> None:
    """/parallel is a column of the ratio tables; its keys table says kept/written, lost keys, or why not judged."""
    from benchmarks import report

    results = report.Results(rounds=2)
    for rnd in range(2):
        for slot, name in enumerate(["bare", "asession-memory", "starsessions-memory", "starlette", "bare"]):
            for endpoint in report.ENDPOINTS:
                results.measurements.append(report.Measurement(name, endpoint, rnd, slot, 1000.0, 1, 2, 0, 0))
    results.parallel_keys[("asession-memory", 0)] = (16, 16)
    results.parallel_keys[("asession-memory", 1)] = (16, 16)
    results.parallel_keys[("starsessions-memory", 0)] = (16, 16)
    results.parallel_keys[("starsessions-memory", 1)] = (12, 16)
    results.parallel_unjudged["starlette"] = "/keys failed: RuntimeError: /keys answered 500"
    text = report.markdown(results, ["bare", "asession-memory", "starsessions-memory", "starlette"])
    assert "| variant | /none | /read | /write | /parallel | status |" in text
    assert "| asession-memory | /parallel | 1000 (1000–1000) |" in text
    assert "| asession-memory | 16/16, 16/16 | yes |" in text
    assert "| starsessions-memory | 16/16, 12/16 | **no** |" in text
    assert "| starlette | – | cannot be judged: /keys failed: RuntimeError: /keys answered 500 |" in text
    assert "| bare | " not in text.split("### /parallel", 1)[1].split("###", 1)[0]


def test_micro_benchmark_runs(tmp_path: Path) -> None:
    """The in-process benchmark measures the bare app and asession on memory without errors."""
    command = [sys.executable, "-m", "benchmarks.micro", "--variants", "bare,asession-memory"]
    command += ["--requests", "50", "--repeat", "1"]
    result = subprocess.run(command, cwd=ROOT, env=_bench_env("micro"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "asession-memory" in result.stdout and "/write" in result.stdout
