"""What a run of the pressure scenario is told and what it reports: settings and results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import competitor
from .contestants import Contestant
from .workload import Workload

SAMPLE = 0.1  # seconds between memory samples
NOISE = 8 << 20  # resident memory moves this much without giving anything back


@dataclass
class Settings:
    """What a run does; the defaults finish in a few minutes on 2 cores."""

    limit: int = 256 << 20
    duration: float = 20.0
    working_set: float = 2.5  # the working set, as a multiple of the limit
    competitor: float = 0.5  # the competitor's peak, as a fraction of the limit
    fill: float = 1.0  # values made before the clock starts, as a multiple of the limit
    seed: int = 0

    def workload(self) -> Workload:
        """The workload for this limit."""
        return Workload.for_memory(int(self.limit * self.working_set), seed=self.seed)

    @property
    def fill_bytes(self) -> int:
        """Bytes of values each worker makes before the clock starts."""
        return int(self.limit * self.fill)

    @property
    def competitor_peak(self) -> int:
        """The competitor's largest memory, in bytes."""
        return int(self.limit * self.competitor)


@dataclass
class Result:
    """How one contestant did."""

    contestant: Contestant
    status: str = "finished"  # "finished", "killed" (by the OOM killer), "failed", "skipped"
    killed_at: float | None = None
    served: float = 0.0  # seconds of lookups
    ops: int = 0
    hits: int = 0
    misses: int = 0
    wrong: int = 0
    peak_rss: int = 0
    competitor_killed: bool = False  # the OOM killer took the competitor instead
    returned: int = 0  # bytes of the worker's memory given back when the competitor grew
    return_s: float | None = None  # seconds to give back half of that
    fill_s: float | None = None  # seconds the fill took, before the clock
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    #: The competitor's allocation steps: [seconds into the run, milliseconds it took].
    competitor_steps: list[list[float]] = field(default_factory=list)

    @property
    def stalls(self) -> dict[str, float]:
        """The competitor's steps: how many, their median, 99th percentile and longest."""
        return competitor.stalls(self.competitor_steps)

    @property
    def ops_per_s(self) -> float:
        """Lookups per second while it ran."""
        return self.ops / self.served if self.served else 0.0

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups."""
        return self.hits / self.ops if self.ops else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For JSON."""
        return {**asdict(self), "ops_per_s": self.ops_per_s, "hit_ratio": self.hit_ratio,
                "stalls": self.stalls}  # fmt: skip


def returned_memory(result: Result, settings: Settings) -> None:
    """How much memory the worker gave back while the competitor grew, and how fast."""
    grow = settings.duration * competitor.GROW
    high = settings.duration * competitor.SHRINK
    before = [s["rss"] for s in result.samples if s["t"] <= grow and s["rss"]]
    during = [s for s in result.samples if grow < s["t"] <= high and s["rss"]]
    if not before or not during:
        return
    start_rss = before[-1]
    returned = start_rss - min(s["rss"] for s in during)
    result.returned = int(returned) if returned >= NOISE else 0
    if result.returned:
        half = start_rss - result.returned / 2
        result.return_s = next(round(s["t"] - grow, 3) for s in during if s["rss"] <= half)
