"""Crash safety of FileBackend: SIGKILL a writer process at random moments, then check every session file.

Each trial starts a writer process that saves a few sessions over and over through ``FileBackend`` (payloads
of random size, up to a few hundred kilobytes, so a kill often lands inside a write or an fsync) and prints
``<session> <sequence>`` after every save that returned. The trial kills it with SIGKILL after a random delay,
then reads every session file: each must parse whole (expiry line, then JSON), carry the right session and
hold the sequence last confirmed or the one being written then, the old or the new session, never a
truncated or mixed one. Temporary files left by the killed writers are counted (``clear_expired`` removes
them after a minute) but are not sessions.

Usage::

    python benchmarks/crash_file_backend.py                 # 1000 trials in a temporary directory
    python benchmarks/crash_file_backend.py --trials 200 --jobs 4 --seed 7

The exit status is 0 when every trial passed, 1 otherwise. ``tests/test_faults.py`` runs 30 trials.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: Session keys the writer saves in turn (valid keys: 32 characters of [a-z0-9]).
SESSION_KEYS = [f"crashtest{index:023d}" for index in range(4)]
MAX_PAD = 300_000
MAX_DELAY = 0.12
#: Lines the writer prints: "ready" once it is about to save, then "<index> <sequence>" after each save.
READY = "ready"


# -- the writer (a child process) ------------------------------------------------------------------------


def _payload(index: int, sequence: int, rng: random.Random) -> dict[str, Any]:
    pad = "x" * rng.randrange(MAX_PAD)
    return {
        "session": index,
        "seq": sequence,
        "pad": pad,
        "pad_sha256": hashlib.sha256(pad.encode()).hexdigest(),
    }


async def _write_forever(directory: str, seed: int) -> None:
    from asession.backends.file import FileBackend

    rng = random.Random(seed)
    async with FileBackend(directory) as backend:
        sequences = []
        for key in SESSION_KEYS:
            stored = await backend.load(key)
            sequences.append(int(stored["seq"]) if stored else 0)
        print(READY, flush=True)
        while True:
            for index, key in enumerate(SESSION_KEYS):
                sequences[index] += 1
                await backend.save(key, _payload(index, sequences[index], rng), 3600)
                sys.stdout.write(f"{index} {sequences[index]}\n")
                sys.stdout.flush()


def writer_main(directory: str, seed: int) -> None:
    """Save the sessions in ``directory`` in a loop until killed."""
    asyncio.run(_write_forever(directory, seed))


# -- the checker (the parent) ------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run of trials found; ``failures`` is empty when every session file was whole."""

    trials: int = 0
    killed_mid_run: int = 0
    saves_checked: int = 0
    caught_in_flight: int = 0
    temp_files_left: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: Summary) -> None:
        self.trials += other.trials
        self.killed_mid_run += other.killed_mid_run
        self.saves_checked += other.saves_checked
        self.caught_in_flight += other.caught_in_flight
        self.temp_files_left += other.temp_files_left
        self.failures.extend(other.failures)


def _session_file(directory: Path, key: str) -> Path:
    from asession.backends.file import FILE_PREFIX
    from asession.keys import storage_key

    return directory / (FILE_PREFIX + storage_key(key))


def check_file(path: Path, index: int, confirmed: int) -> tuple[str | None, bool]:
    """Check one session file against the last confirmed sequence.

    Returns ``(failure or None, caught_in_flight)``: the file must be whole and hold ``confirmed`` (the
    old session) or ``confirmed + 1`` (the save the writer was killed in, if it got renamed into place).
    """
    if not path.exists():
        if confirmed == 0:
            return None, False
        return f"{path.name}: missing, but sequence {confirmed} was confirmed", False
    raw = path.read_bytes()
    head, newline, body = raw.partition(b"\n")
    if not newline:
        return f"{path.name}: truncated, no expiry line ({len(raw)} bytes)", False
    try:
        float(head)
        data = json.loads(body)
    except ValueError as exc:
        return f"{path.name}: truncated or not JSON ({len(raw)} bytes): {exc}", False
    if not isinstance(data, dict) or data.get("session") != index:
        return f"{path.name}: holds another session's data: {str(data)[:80]}", False
    pad = data.get("pad", "")
    if hashlib.sha256(pad.encode()).hexdigest() != data.get("pad_sha256"):
        return f"{path.name}: payload damaged (pad of {len(pad)} characters does not match its digest)", False
    sequence = data.get("seq")
    if sequence not in (confirmed, confirmed + 1):
        return f"{path.name}: sequence {sequence}, expected {confirmed} (old) or {confirmed + 1} (new)", False
    return None, sequence == confirmed + 1


def check_directory(directory: Path, confirmed: list[int]) -> tuple[list[str], int]:
    """Check every session's file; return the failures and how many held the save in flight."""
    failures, in_flight = [], 0
    for index, key in enumerate(SESSION_KEYS):
        failure, new = check_file(_session_file(directory, key), index, confirmed[index])
        if failure is not None:
            failures.append(failure)
        in_flight += new
    return failures, in_flight


def _read_lines(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def run_trial(directory: Path, confirmed: list[int], rng: random.Random, summary: Summary) -> None:
    """Start a writer, kill it after a random delay, check the files; update ``confirmed`` in place."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(directory), "--seed", str(rng.randrange(2**32))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        if first != READY:
            process.kill()
            _, errors = process.communicate(timeout=10)
            summary.failures.append(f"writer did not start: {first!r} {errors[-500:]}")
            return
        reader = threading.Thread(target=_read_lines, args=(process.stdout, lines))
        reader.start()
        time.sleep(rng.uniform(0, MAX_DELAY))
        still_running = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    summary.trials += 1
    if still_running and process.returncode == -signal.SIGKILL:
        summary.killed_mid_run += 1
    else:
        summary.failures.append(f"writer ended by itself with status {process.returncode}")
    for line in lines:
        if not line.endswith("\n"):
            summary.failures.append(f"the writer printed a partial line {line!r}")
            continue
        index, sequence = (int(part) for part in line.split())
        confirmed[index] = sequence
        summary.saves_checked += 1
    failures, in_flight = check_directory(directory, confirmed)
    summary.failures.extend(failures)
    summary.caught_in_flight += in_flight
    # The next trial's writer starts from what is on disk, which may be the save in flight.
    for index, key in enumerate(SESSION_KEYS):
        path = _session_file(directory, key)
        if path.exists():
            confirmed[index] = int(json.loads(path.read_bytes().partition(b"\n")[2])["seq"])


def run_trials(directory: Path, trials: int, seed: int) -> Summary:
    """Run ``trials`` kill-and-check trials one after another on the sessions in ``directory``."""
    from asession.backends.file import TEMP_PREFIX

    rng = random.Random(seed)
    summary = Summary()
    confirmed = [0] * len(SESSION_KEYS)
    for _ in range(trials):
        run_trial(directory, confirmed, rng, summary)
    summary.temp_files_left = sum(1 for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000, help="kill-and-check trials (default 1000)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="trials run side by side")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--writer", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if args.writer:
        writer_main(args.writer, seed)
        return 0

    jobs = max(1, min(args.jobs, args.trials))
    shares = [args.trials // jobs + (1 if job < args.trials % jobs else 0) for job in range(jobs)]
    started = time.monotonic()
    total = Summary()
    with tempfile.TemporaryDirectory(prefix="asession-crash-") as root:
        directories = [Path(root, f"job{job}") for job in range(jobs)]
        for directory in directories:
            directory.mkdir()
        with ThreadPoolExecutor(jobs) as pool:
            results = pool.map(run_trials, directories, shares, [seed + job for job in range(jobs)])
            for result in results:
                total.merge(result)
    elapsed = time.monotonic() - started
    print(f"FileBackend crash safety: {total.trials} trials, seed {seed}, {jobs} jobs, {elapsed:.1f}s")
    print(f"  writers killed mid-run       {total.killed_mid_run}")
    print(f"  confirmed saves              {total.saves_checked}")
    print(f"  files holding the save cut   {total.caught_in_flight}  (renamed in before the kill: the new session)")
    print(f"  temporary files left         {total.temp_files_left}  (removed by clear_expired after 60 s)")
    print(f"  truncated or wrong files     {len(total.failures)}")
    for failure in total.failures[:20]:
        print(f"    {failure}")
    ok = not total.failures and total.killed_mid_run == total.trials
    print("PASS: every session file was the old or the new complete session" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
