"""Turning measurements into the Markdown report and the PNG charts.

Every table and the ratios chart cover the timed endpoints of :data:`ENDPOINTS`; ``/parallel`` also gets
a table of its own: how many of the keys written the one shared session still holds after the run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.apps import VARIANTS

ENDPOINTS = ("/none", "/read", "/write", "/parallel")


@dataclass
class Measurement:
    """One wrk run of one variant on one endpoint in one round (``slot`` tells the two bare runs apart)."""

    variant: str
    endpoint: str
    round: int
    slot: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu_us: float | None = None
    cpu_use: float | None = None
    rss_mib: float | None = None


@dataclass
class ScalingPoint:
    """/read against a pre-populated store: req/s, ratio to the bare runs around it, server CPU µs/request."""

    rps: float
    ratio: float
    cpu_us: float | None


@dataclass
class Results:
    """Everything one run measured."""

    rounds: int
    measurements: list[Measurement] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    # (store, stored sessions) -> /read measurement
    scaling: dict[tuple[str, int], ScalingPoint] = field(default_factory=dict)
    scaling_status: dict[str, str] = field(default_factory=dict)
    # (variant, payload bytes, endpoint) -> (req/s, ratio to the bare app measured just before)
    payloads: dict[tuple[str, int, str], tuple[float, float]] = field(default_factory=dict)
    payload_status: dict[str, str] = field(default_factory=dict)
    # store -> (rows, seconds, deleted) or a reason it was not measured
    clear_expired: dict[str, tuple[int, float, int] | str] = field(default_factory=dict)
    # (variant, round) -> (keys written that the shared session still holds after /parallel, distinct keys written)
    parallel_keys: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    # variant -> why its /parallel keys could not be counted
    parallel_unjudged: dict[str, str] = field(default_factory=dict)

    def _in_round(self, variant: str, endpoint: str, rnd: int) -> list[Measurement]:
        return [m for m in self.measurements if m.variant == variant and m.endpoint == endpoint and m.round == rnd]

    def _per_round(
        self, variant: str, endpoint: str, metric: Callable[[Measurement], float | None]
    ) -> list[tuple[float, float]]:
        """Per round: (the variant's mean ``metric``, the bare app's mean ``metric``), where both were measured."""
        out = []
        for rnd in range(self.rounds):
            bare = [v for m in self._in_round("bare", endpoint, rnd) if (v := metric(m)) is not None]
            mine = [v for m in self._in_round(variant, endpoint, rnd) if (v := metric(m)) is not None]
            if bare and mine:
                out.append((statistics.mean(mine), statistics.mean(bare)))
        return out

    def ratios(self, variant: str, endpoint: str) -> list[float]:
        """The variant's req/s over the bare app's in the same round (mean of the bare runs of that round)."""
        return [mine / bare for mine, bare in self._per_round(variant, endpoint, lambda m: m.rps)]

    def cpu_ratios(self, variant: str, endpoint: str) -> list[float]:
        """The bare app's server CPU time per request over the variant's, per round.

        Usually less sensitive than req/s to other processes on a shared machine: a stolen time slice
        lowers throughput but costs the server no CPU time.
        """
        return [bare / mine for mine, bare in self._per_round(variant, endpoint, lambda m: m.cpu_us or None)]

    def of(self, variant: str, endpoint: str) -> list[Measurement]:
        return [m for m in self.measurements if m.variant == variant and m.endpoint == endpoint]

    def bare_drift(self) -> list[float]:
        """Per round and endpoint, the last bare run's req/s over the first's: how much the machine moved."""
        drift = []
        for rnd in range(self.rounds):
            for endpoint in ENDPOINTS:
                runs = sorted(self._in_round("bare", endpoint, rnd), key=lambda m: m.slot)
                if len(runs) >= 2 and runs[0].rps:
                    drift.append(runs[-1].rps / runs[0].rps)
        return drift


def _median_range(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio_of(results: Results, variant: str, endpoint: str) -> float | None:
    values = results.ratios(variant, endpoint)
    return statistics.median(values) if values else None


def markdown(results: Results, variants: Sequence[str]) -> str:
    """The tables of the report, without the machine header."""
    header = " | ".join(ENDPOINTS)
    columns = " | ".join("---:" for _ in ENDPOINTS)
    lines = [
        f"### Ratios to the bare app (median of {results.rounds} round(s), min–max in brackets)",
        "",
        f"| variant | {header} | status |",
        f"| --- | {columns} | --- |",
    ]
    for name in variants:
        cells = [_median_range(results.ratios(name, e), ".2f") for e in ENDPOINTS]
        lines.append(f"| {name} | {' | '.join(cells)} | {results.status.get(name, 'not run')} |")
    lines += [
        "",
        "### The same ratios by server CPU time per request (bare µs/request over the variant's)",
        "",
        "Usually steadier than req/s when other processes share the machine; it leaves out time spent waiting for",
        "Redis, PostgreSQL or memcached, whose own CPU is not counted.",
        "",
        f"| variant | {header} |",
        f"| --- | {columns} |",
    ]
    for name in variants:
        cells = [_median_range(results.cpu_ratios(name, e), ".2f") for e in ENDPOINTS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "### Details (medians over rounds; req/s with min–max)",
        "",
        "| variant | endpoint | req/s | p50 ms | p99 ms | server CPU µs/req | server CPU use | peak RSS MiB "
        "| non-2xx | socket errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in variants:
        for endpoint in ENDPOINTS:
            runs = results.of(name, endpoint)
            if not runs:
                continue
            rss = _median(m.rss_mib for m in runs)
            cpu = _median(m.cpu_us for m in runs)
            use = _median(m.cpu_use for m in runs)
            lines.append(
                f"| {name} | {endpoint} | {_median_range([m.rps for m in runs], '.0f')} "
                f"| {statistics.median(m.p50_ms for m in runs):.2f} | {statistics.median(m.p99_ms for m in runs):.2f} "
                f"| {'–' if cpu is None else f'{cpu:.0f}'} | {'–' if use is None else f'{use:.0%}'} "
                f"| {'–' if rss is None else f'{rss:.1f}'} | {sum(m.non2xx for m in runs)} "
                f"| {sum(m.socket_errors for m in runs)} |"
            )
    drift = results.bare_drift()
    if drift:
        lines += [
            "",
            f"Noise: the bare app's last run of a round over its first ranged {min(drift):.2f}–{max(drift):.2f} "
            "(1.00 = the machine did not move during the round).",
        ]
    lines += _parallel_table(results, variants)
    lines += _scaling_tables(results)
    lines += _target_table(results)
    return "\n".join(lines) + "\n"


def _parallel_table(results: Results, variants: Sequence[str]) -> list[str]:
    """/parallel's correctness figure: the keys the shared session kept, per variant and round."""
    shown = [n for n in variants if n in results.parallel_unjudged or any(v == n for v, _ in results.parallel_keys)]
    if not shown:
        return []
    lines = [
        "",
        "### /parallel: keys kept by the one shared session",
        "",
        "Every /parallel request sets one of 16 keys (`k0`…`k15`, picked at random) in the one session all the",
        "connections share. After the run one `GET /keys`, with the shared cookie as the client last had it, reads",
        "the session back: kept = the keys written that the session still holds, over the distinct keys the server",
        "wrote. A store that merges overlapping saves key by key keeps them all; one that saves the whole session",
        "(the last response wins) can drop keys written by overlapping requests. Each key is written many times",
        "in a run, so a whole-session store can still end with all of them: a full count shows that no key was",
        "lost at the end, not that no update was.",
        "",
        "| variant | kept / written (per round) | all kept |",
        "| --- | --- | --- |",
    ]
    for name in shown:
        counts = [
            results.parallel_keys[(name, rnd)] for rnd in range(results.rounds) if (name, rnd) in results.parallel_keys
        ]
        cells = ", ".join(f"{kept}/{written}" for kept, written in counts) or "–"
        if name in results.parallel_unjudged:
            verdict = f"cannot be judged: {results.parallel_unjudged[name]}"
        else:
            verdict = "yes" if all(kept == written for kept, written in counts) else "**no**"
        lines.append(f"| {name} | {cells} | {verdict} |")
    return lines


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


def _payload_label(n: int) -> str:
    return f"{n // 1024} KB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _scaling_tables(results: Results) -> list[str]:
    lines: list[str] = []
    if results.scaling or results.scaling_status:
        sizes = sorted({size for _, size in results.scaling})
        stores = sorted({store for store, _ in results.scaling} | set(results.scaling_status))
        lines += [
            "",
            "### Scaling: /read by stored sessions (a random pre-populated session per request)",
            "",
            f"Medians of {results.rounds} repetitions, each between two bare runs: req/s, in brackets the ratio to "
            "the bare app measured just before and after, then server CPU µs/request.",
            "",
            f"| store | {' | '.join(_size(s) for s in sizes)} | largest vs smallest (ratio) | status |",
            f"| --- | {' | '.join('---:' for _ in sizes)} | ---: | --- |",
        ]
        for store in stores:
            points = [results.scaling.get((store, s)) for s in sizes]
            cells = [
                "–"
                if p is None
                else f"{p.rps:.0f} ({p.ratio:.2f}, {'–' if p.cpu_us is None else f'{p.cpu_us:.0f} µs'})"
                for p in points
            ]
            first, last = (points[0], points[-1]) if points else (None, None)
            change = f"{last.ratio / first.ratio:.2f}" if first and last else "–"
            lines.append(f"| {store} | {' | '.join(cells)} | {change} | {results.scaling_status.get(store, 'ok')} |")
    if results.payloads or results.payload_status:
        sizes = sorted({size for _, size, _ in results.payloads})
        names = sorted({name for name, _, _ in results.payloads} | set(results.payload_status))
        lines += [
            "",
            "### Payload size: req/s (ratio to the mean of bare runs just before and after)",
            "",
            f"| variant | endpoint | {' | '.join(_payload_label(s) for s in sizes)} | status |",
            f"| --- | --- | {' | '.join('---:' for _ in sizes)} | --- |",
        ]
        for name in names:
            for endpoint in ("/read", "/write"):
                cells = []
                for size in sizes:
                    value = results.payloads.get((name, size, endpoint))
                    cells.append("–" if value is None else f"{value[0]:.0f} ({value[1]:.2f})")
                lines.append(
                    f"| {name} | {endpoint} | {' | '.join(cells)} | {results.payload_status.get(name, 'ok')} |"
                )
    if results.clear_expired:
        lines += [
            "",
            "### clear_expired() on expired rows",
            "",
            "| store | rows | seconds | deleted |",
            "| --- | ---: | ---: | ---: |",
        ]
        for store, outcome in sorted(results.clear_expired.items()):
            if isinstance(outcome, str):
                lines.append(f"| {store} | – | – | {outcome} |")
            else:
                rows, seconds, deleted = outcome
                lines.append(f"| {store} | {rows:,} | {seconds:.2f} | {deleted:,} |")
    return lines


def _target_table(results: Results) -> list[str]:
    """The issue's targets, each with what this run measured."""
    rows: list[tuple[str, str, bool | None]] = []

    def ratio_row(label: str, variant: str, endpoint: str, minimum: float) -> None:
        value = ratio_of(results, variant, endpoint)
        rows.append((label, "–" if value is None else f"{value:.2f}", None if value is None else value >= minimum))

    for name in [n for n in VARIANTS if n.startswith("asession-")]:
        if results.ratios(name, "/none"):
            ratio_row(f"{name} /none ≥ 0.97", name, "/none", 0.97)
    ratio_row("asession-memory /read ≥ 0.80", "asession-memory", "/read", 0.80)
    ratio_row("asession-memory /write ≥ 0.70", "asession-memory", "/write", 0.70)
    ratio_row("asession-sqlite /read ≥ 0.40", "asession-sqlite", "/read", 0.40)
    for endpoint in ("/read", "/write"):
        mine, theirs = ratio_of(results, "asession-redis", endpoint), ratio_of(results, "starsessions-redis", endpoint)
        if mine is None or theirs is None:
            rows.append((f"asession-redis {endpoint} ≥ 3× starsessions-redis", "–", None))
        else:
            rows.append(
                (f"asession-redis {endpoint} ≥ 3× starsessions-redis", f"{mine / theirs:.2f}×", mine >= 3 * theirs)
            )
    for store in sorted({store for store, _ in results.scaling}):
        sizes = sorted(size for s, size in results.scaling if s == store)
        if len(sizes) >= 2:
            first, last = results.scaling[(store, sizes[0])], results.scaling[(store, sizes[-1])]
            rows.append(
                (
                    f"{store}: /read at {_size(sizes[-1])} sessions within 10 % of {_size(sizes[0])}",
                    f"{last.ratio / first.ratio:.2f}",
                    last.ratio >= 0.9 * first.ratio,
                )
            )
            if first.cpu_us and last.cpu_us:
                # The same comparison by server CPU per request, which other work on the machine moves less.
                rows.append(
                    (
                        f"{store}: the same by server CPU per /read ({_size(sizes[0])} over {_size(sizes[-1])})",
                        f"{first.cpu_us / last.cpu_us:.2f}",
                        first.cpu_us >= 0.9 * last.cpu_us,
                    )
                )
    for store, value in sorted(results.clear_expired.items()):
        if not isinstance(value, str):
            rows.append(
                (f"{store}: clear_expired on {value[0]:,} expired rows < 10 s", f"{value[1]:.2f} s", value[1] < 10)
            )
    lines = ["", "### Targets (issue 5)", "", "| target | measured | met |", "| --- | ---: | --- |"]
    for label, measured, met in rows:
        lines.append(f"| {label} | {measured} | {'–' if met is None else 'yes' if met else '**no**'} |")
    return lines


# -- charts ------------------------------------------------------------------------------------------------


def charts(results: Results, variants: Sequence[str], directory: Path, suffix: str = "") -> list[Path]:
    """Draw ratios.png and scaling.png; returns the files written (none when matplotlib is missing)."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return []
    written = []
    shown = [v for v in variants if v != "bare" and any(results.ratios(v, e) for e in ENDPOINTS)]
    if shown:
        fig, ax = plt.subplots(figsize=(10, 0.7 * len(shown) + 1.5))
        height = 0.8 / len(ENDPOINTS)
        for offset, endpoint in enumerate(ENDPOINTS):
            medians, lows, highs, ys = [], [], [], []
            for index, name in enumerate(shown):
                values = results.ratios(name, endpoint)
                if not values:
                    continue
                med = statistics.median(values)
                ys.append(index + (offset - (len(ENDPOINTS) - 1) / 2) * height)
                medians.append(med)
                lows.append(med - min(values))
                highs.append(max(values) - med)
            ax.barh(ys, medians, height, xerr=[lows, highs], label=endpoint, capsize=2)
        ax.set_yticks(range(len(shown)), shown)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("req/s relative to the bare Starlette app in the same round (1.0 = no overhead)")
        ax.set_title(f"Session middleware overhead (median of {results.rounds} round(s), min–max bars)")
        ax.legend(loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path = directory / f"ratios{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if results.scaling or results.payloads:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for store in sorted({s for s, _ in results.scaling}):
            points = sorted((size, p.ratio) for (s, size), p in results.scaling.items() if s == store)
            left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=store)
        left.set_xscale("log")
        left.set_ylim(bottom=0)
        left.set_xlabel("stored sessions")
        left.set_ylabel("/read ratio to the bare app")
        left.set_title("/read throughput vs store size")
        left.grid(alpha=0.3)
        if results.scaling:
            left.legend()
        for name in sorted({n for n, _, _ in results.payloads}):
            for endpoint, style in (("/read", "-"), ("/write", "--")):
                points = sorted(
                    (size, v[1]) for (n, size, e), v in results.payloads.items() if n == name and e == endpoint
                )
                if points:
                    right.plot(
                        [p[0] for p in points], [p[1] for p in points], style, marker="o", label=f"{name} {endpoint}"
                    )
        right.set_xscale("log")
        right.set_ylim(bottom=0)
        right.set_xlabel("session payload, bytes")
        right.set_ylabel("ratio to the bare app")
        right.set_title("Throughput vs payload size")
        right.grid(alpha=0.3)
        if results.payloads:
            right.legend(fontsize=7)
        fig.tight_layout()
        path = directory / f"scaling{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
