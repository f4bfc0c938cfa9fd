"""The pressure scenario's results: a table for the terminal, JSON, and a plot."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Protocol

from . import competitor
from .contestants import Contestant
from .oracle import Oracle
from .results import Result, Settings

MIB = 1 << 20
COLUMNS = ("contestant", "result", "ops/s", "hit ratio", "of oracle", "regenerated", "wrong",
           "peak RSS", "gave back", "in", "stall p50/p99")  # fmt: skip


class Yardstick(Protocol):
    """What the table needs of an oracle: its own row, and each result's fraction of it."""

    ops: int
    hits: int

    @property
    def hit_ratio(self) -> float: ...

    def fraction(self, result: Result) -> float | None: ...


def status(result: Result) -> str:
    """How a contestant ended, in a few words."""
    if result.status == "killed" and result.fill_s is None:
        return "killed in the fill"
    if result.status == "killed":
        return f"killed at {result.killed_at:.1f} s"
    if result.status == "failed":
        return f"failed: {result.note}"[:40]
    if result.status == "skipped":
        return f"skipped: {result.note}"
    if result.competitor_killed:
        return "finished; the OOM killer took the competitor"
    return result.status


def _row(result: Result, yardstick: Yardstick | None) -> tuple[str, ...]:
    given = "-" if not result.returned else f"{result.returned / MIB:.0f} MiB"
    within = "-" if result.return_s is None else f"{result.return_s:.2f} s"
    fraction = None if yardstick is None else yardstick.fraction(result)
    return (
        result.contestant.name,
        status(result),
        f"{result.ops_per_s:.0f}",
        f"{result.hit_ratio:.1%}",
        "-" if fraction is None else f"{fraction:.0%}",
        f"{result.misses}",
        f"{result.wrong}",
        f"{result.peak_rss / MIB:.0f} MiB",
        given,
        within,
        _stall(result),
    )


def _stall(result: Result) -> str:
    """The competitor's allocation steps beside this contestant: median / 99th percentile."""
    stalls = result.stalls
    if not stalls["steps"]:
        return "-"
    return f"{stalls['p50_ms']:.1f}/{stalls['p99_ms']:.0f} ms"


def table(results: list[Result], yardstick: Yardstick | None = None) -> str:
    """The results as an aligned text table; with ``yardstick``, each hit ratio as a
    fraction of its, and its own row last."""
    rows = [COLUMNS, *(_row(result, yardstick) for result in results)]
    if yardstick is not None:
        ratio, misses = f"{yardstick.hit_ratio:.1%}", f"{yardstick.ops - yardstick.hits}"
        rows.append(("oracle", "LRU, the memory left", "-", ratio, "100%", misses,
                     "-", "-", "-", "-", "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Recorded:
    """The oracle as a JSON document recorded it: its row, and each result's fraction."""

    def __init__(self, oracle: dict[str, Any], fractions: dict[int, float | None]) -> None:
        self.ops: int = oracle["ops"]
        self.hits: int = oracle["hits"]
        self._ratio: float = oracle["hit_ratio"]
        self._fractions = fractions

    @property
    def hit_ratio(self) -> float:
        return self._ratio

    def fraction(self, result: Result) -> float | None:
        return self._fractions.get(id(result))


def table_of(document: dict[str, Any]) -> str:
    """The table of a run that :func:`write_json` wrote (the docs' performance page)."""
    results: list[Result] = []
    fractions: dict[int, float | None] = {}
    for entry in document["results"]:
        fields = {k: v for k, v in entry.items() if k in Result.__dataclass_fields__}
        fields["contestant"] = Contestant(**entry["contestant"])
        result = Result(**fields)
        results.append(result)
        fractions[id(result)] = entry.get("of_oracle")
    oracle = document.get("oracle")
    yardstick = None if oracle is None else _Recorded(oracle, fractions)
    return table(results, yardstick)


def legend(results: list[Result]) -> str:
    """One line per contestant saying what it is."""
    width = max(len(r.contestant.name) for r in results)
    return "\n".join(
        f"  {r.contestant.name.ljust(width)}  {r.contestant.describe()}" for r in results
    )


def heading(settings: Settings, mode: str, machine: str) -> str:
    """What was run, where."""
    workload = settings.workload()
    return (
        f"{mode}: {settings.limit / MIB:.0f} MiB memory limit; working set "
        f"{workload.working_set() / MIB:.0f} MiB ({workload.keys} keys of 64 KiB to 1 MiB, "
        f"Zipf {workload.zipf}); competitor up to {settings.competitor_peak / MIB:.0f} MiB "
        f"from {competitor.GROW:.0%} to {competitor.DONE:.0%} of each run; "
        f"{settings.duration:g} s per contestant; {machine}"
    )


def write_json(path: str | Path, settings: Settings, mode: str, machine: str,
               results: list[Result], yardstick: Oracle | None = None) -> None:  # fmt: skip
    """Everything, samples included."""
    document: dict[str, Any] = {
        "mode": mode,
        "machine": machine,
        "settings": {**settings.__dict__, "workload": settings.workload().__dict__},
        "results": [
            {**r.as_dict(), "of_oracle": None if yardstick is None else yardstick.fraction(r)}
            for r in results
        ],
        "oracle": None if yardstick is None else yardstick.as_dict(),
    }
    Path(path).write_text(json.dumps(document, indent=1))


def plot(path: str | Path, settings: Settings, results: list[Result], title: str) -> None:
    """Hit ratio and memory over time, one line per contestant.

    Raises:
        ImportError: without matplotlib (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'volcache[plot]'") from None
    figure, (ratio, memory, stall) = plt.subplots(
        3, 1, figsize=(11, 10), sharex=True, height_ratios=(3, 3, 2)
    )
    for result in results:
        if result.status == "skipped":
            continue
        times, ratios = _series(result)
        (line,) = ratio.plot(times, ratios, label=result.contestant.name, linewidth=1.4)
        memory.plot([s["t"] for s in result.samples], [s["rss"] / MIB for s in result.samples],
                    color=line.get_color(), linewidth=1.4)  # fmt: skip
        if result.competitor_steps:
            stall.plot(*zip(*result.competitor_steps, strict=True), ".", markersize=3,
                       color=line.get_color())  # fmt: skip
        if result.status == "killed" and result.samples:
            last = result.samples[-1]
            memory.plot(
                [last["t"]], [last["rss"] / MIB], "x", color=line.get_color(), markersize=10
            )
    steps = [settings.duration * i / 200 for i in range(201)]
    peak = settings.competitor_peak
    memory.plot(steps, [competitor.target(peak, settings.duration, t) / MIB for t in steps],
                "k--", linewidth=1, label="competitor")  # fmt: skip
    memory.axhline(settings.limit / MIB, color="red", linewidth=1, label="memory limit")
    ratio.set_ylabel("hit ratio (per second)")
    ratio.set_ylim(0, 1)
    ratio.legend(loc="lower left", fontsize=8, ncol=2)
    memory.set_ylabel("worker resident memory (MiB)")
    stall.set_ylabel("competitor's step (ms)")
    stall.set_yscale("log")
    stall.set_xlabel("seconds (x: killed by the OOM killer)")
    memory.legend(loc="upper left", fontsize=8)
    figure.suptitle(textwrap.fill(title, 150), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _series(result: Result) -> tuple[list[float], list[float]]:
    """Hit ratio over one-second windows."""
    times: list[float] = []
    ratios: list[float] = []
    samples = result.samples
    j = 0
    for i, sample in enumerate(samples):
        while samples[j]["t"] < sample["t"] - 1.0:
            j += 1
        ops = sample["ops"] - samples[j]["ops"]
        if ops > 0 and i > j:
            times.append(sample["t"])
            ratios.append((sample["hits"] - samples[j]["hits"]) / ops)
    return times, ratios
