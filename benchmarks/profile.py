"""Profile one variant's server under wrk load with py-spy, and summarise where the time goes.

    python -m benchmarks.profile asession-memory /read            # writes benchmarks/profile-asession-memory-read.svg
    python -m benchmarks.profile asession-sqlite /write --duration 15 --top 30

Starts the variant's uvicorn worker like ``benchmarks/run.py`` does (pinned to core 0, wrk on core 1, 64
connections each with its own session), attaches ``py-spy record`` (``pip install py-spy``; it needs
ptrace, which root has) for the length of the wrk run, writes a flame graph, and prints the functions
with the most samples: inclusive (the function and what it calls) and self (the function alone), as a
share of all samples of the server's threads. ``--native`` adds C frames (slower, noisier).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.apps import VARIANTS

HERE = Path(__file__).resolve().parent


def summarise(collapsed: Path, top: int) -> str:
    """Where the samples went, from py-spy's collapsed ("raw") output recorded with ``--threads``.

    Samples of the event loop's thread are split into the session layer (the deepest asession frame and
    whatever it calls, unless that leads back into Starlette or uvicorn, as the send wrapper does) and
    the rest (uvicorn, Starlette, the endpoint). Other threads (aiosqlite's worker, asyncio's executor)
    are listed apart. Shares are of all samples in which the server was busy (py-spy drops idle ones).
    """
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    session: collections.Counter[str] = collections.Counter()
    session_leaf: collections.Counter[str] = collections.Counter()
    total = 0
    idle = _idle_frames()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, *raw_frames = stack.split(";")
        if raw_frames and raw_frames[-1] in idle:
            continue  # a worker thread blocked on its queue, which py-spy cannot tell from work
        total += count
        frames = [_short(frame) for frame in raw_frames]
        is_main = "MainThread" in thread
        threads["event loop thread" if is_main else thread.split(": ", 1)[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
        deepest = max((i for i, f in enumerate(frames) if "(asession/" in f), default=None)
        if is_main and deepest is not None:
            below = frames[deepest + 1 :]
            if not any("(starlette/" in f or "(uvicorn/" in f for f in below):
                session[frames[deepest]] += count
                session_leaf[frames[-1]] += count
    if not total:
        return "no samples"
    lines = [f"{total} busy samples", "", "by thread:"]
    lines += [f"{count / total:7.1%}  {name}" for name, count in threads.most_common()]
    in_session = sum(session.values())
    lines += ["", f"session layer (asession and what it calls, event loop thread): {in_session / total:.1%}"]
    lines += [f"{count / total:7.1%}  {name}" for name, count in session.most_common(top)]
    lines += ["", "  ...of which the leaf functions:"]
    lines += [f"{count / total:7.1%}  {name}" for name, count in session_leaf.most_common(top)]
    lines += ["", f"{'inclusive':>9}  {'self':>6}  function"]
    for frame, count in inclusive.most_common(top + 12)[12:]:  # the first dozen are uvicorn's entry points
        lines.append(f"{count / total:9.1%}  {own[frame] / total:6.1%}  {frame}")
    lines += ["", "by self time:", f"{'self':>6}  function"]
    for frame, count in own.most_common(top):
        lines.append(f"{count / total:6.1%}  {frame}")
    return "\n".join(lines)


def _idle_frames() -> set[str]:
    """Leaf frames of threads waiting for work: an executor's worker, aiosqlite's thread between calls."""
    import inspect

    frames = set()
    for module_name, function, marker, shown in (
        ("concurrent.futures.thread", "_worker", "work_queue.get(block=True)", "concurrent/futures/thread.py"),
        ("aiosqlite.core", "_connection_worker_thread", "tx.get()", "aiosqlite/core.py"),
        ("threading", "Condition.wait", "waiter.acquire()", "threading.py"),
    ):
        try:
            module = __import__(module_name, fromlist=["_"])
            target = module
            for part in function.split("."):
                target = getattr(target, part)
            lines, start = inspect.getsourcelines(target)
        except (ImportError, AttributeError, OSError, TypeError):
            continue
        for offset, text in enumerate(lines):
            if marker in text:
                frames.add(f"{function} ({shown}:{start + offset})")
    return frames


def _short(frame: str) -> str:
    # "func (asession/keys.py:42)" -> "func (asession/keys.py)": merge the call sites of a function.
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("endpoint", choices=("/none", "/read", "/write"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true")
    parser.add_argument(
        "--output", type=Path, help="the flame graph (default benchmarks/profile-<variant>-<endpoint>.svg)"
    )
    args = parser.parse_args(argv)
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy is not installed: `pip install py-spy`.")
    h.install_cleanup()
    from benchmarks.run import Environment

    environment = Environment()
    environment.prepare(set(VARIANTS[args.variant].needs))
    if any(service in environment.unavailable for service in VARIANTS[args.variant].needs):
        environment.cleanup()
        raise SystemExit("; ".join(environment.unavailable.values()))
    tmp = environment.tmp
    output = args.output or HERE / f"profile-{args.variant}-{args.endpoint.strip('/')}.svg"
    env = environment.server_env()
    variant = VARIANTS[args.variant]
    mode = "login" if variant.stateful and args.endpoint != "/none" else "none"
    try:
        server = h.start_server(args.variant, env, tmp)
        try:
            h.run_wrk(server.url, mode, args.endpoint, 1, 64)  # warm up
            raw = tmp / "profile.txt"
            common = ["--pid", str(server.proc.pid), "--rate", str(args.rate), "--duration", str(args.duration)]
            common += ["--native"] if args.native else []
            # Two recordings one after the other: the summary's (collapsed stacks, per thread), then the
            # flame graph's. py-spy pauses the server for each sample, so two at once would skew both.
            runs = []
            for fmt, out, extra in (("raw", raw, ["--threads"]), ("flamegraph", output, [])):
                spy = h.spawn(
                    ["py-spy", "record", *common, *extra, "--format", fmt, "-o", str(out)], stdout=subprocess.DEVNULL
                )
                time.sleep(0.5)
                runs.append(h.run_wrk(server.url, mode, args.endpoint, args.duration, 64))
                spy.wait(args.duration + 30)
            result = runs[0]
        finally:
            h.stop(server.proc)
        print(f"{args.variant} {args.endpoint}: {result.rps:.0f} req/s under py-spy, {result.non2xx} non-2xx")
        print(summarise(raw, args.top))
        print(f"\nflame graph: {output}")
    finally:
        h.stop_all()
        environment.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
