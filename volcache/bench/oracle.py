"""The yardstick: how often an LRU cache with exactly the memory there was would have hit.

After a run, the memory a cache could have had at each moment is known: the
limit, less what the competitor held then (its schedule, :mod:`.competitor`)
and less the worker's own baseline (an interpreter with nothing cached: the
*no cache* contestant's peak, when it ran). An LRU of values by bytes whose
bound follows that curve, filled as the contestants were and then replaying
the same key stream, gives the hit ratio no cache that keeps its values in
this memory could beat by much; each contestant's is reported as a fraction
of it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from . import competitor
from .results import Result, Settings

#: The baseline when no *no cache* worker ran: an interpreter with the bench imported.
DEFAULT_BASELINE = 32 << 20


class Oracle:
    """The yardstick of one run: for a number of lookups, the hits of an LRU bounded
    by the memory left, replaying the first that many of the stream (each
    contestant is measured against the replay of as many lookups as it made).

    Attributes:
        ops: the lookups of its own row (the most any surviving contestant made).
        hits: the hits of that replay.
        baseline: the worker's own memory it left out, in bytes.
    """

    def __init__(self, settings: Settings, ops: int, baseline: int) -> None:
        self.settings = settings
        self.baseline = baseline
        self.ops = ops
        self._replays: dict[int, int] = {}
        self.hits = self.replay(ops)

    def replay(self, ops: int) -> int:
        """The oracle's hits over ``ops`` lookups (each count replayed once)."""
        if ops not in self._replays:
            self._replays[ops] = replay(self.settings, ops, self.baseline)
        return self._replays[ops]

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups, in its own row."""
        return self.hits / self.ops if self.ops else 0.0

    def fraction(self, result: Result) -> float | None:
        """A contestant's hit ratio as a fraction of the oracle's over as many lookups
        (None: it made none)."""
        if not result.ops:
            return None
        hits = self.replay(result.ops)
        return result.hits / hits if hits else None

    def as_dict(self) -> dict[str, Any]:
        """For JSON."""
        return {"ops": self.ops, "hits": self.hits, "hit_ratio": self.hit_ratio,
                "baseline": self.baseline}  # fmt: skip


def baseline_of(results: list[Result]) -> int:
    """The no-cache worker's peak resident memory, if it ran, else a default."""
    for result in results:
        if result.contestant.kind == "none" and result.peak_rss:
            return result.peak_rss
    return DEFAULT_BASELINE


def oracle(settings: Settings, results: list[Result]) -> Oracle:
    """The run's yardstick, over as many lookups as the busiest survivor made."""
    ops = max((r.ops for r in results if r.status == "finished"), default=0)
    baseline = baseline_of(results)
    return Oracle(settings, ops, baseline)


def replay(settings: Settings, ops: int, baseline: int) -> int:
    """The hits of a byte-bounded LRU over the fill and ``ops`` lookups of the stream,
    spread evenly over the run, bounded at each by the memory left then."""
    workload = settings.workload()
    peak, duration = settings.competitor_peak, settings.duration

    def room(t: float) -> int:
        return settings.limit - competitor.target(peak, duration, t) - baseline

    held: OrderedDict[int, int] = OrderedDict()
    used = 0

    def admit(key: int, bound: int) -> None:
        nonlocal used
        size = workload.size(key)
        held[key] = size
        used += size
        while used > bound and held:
            used -= held.popitem(last=False)[1]

    made = 0
    for key in workload.by_popularity():  # the fill, as every contestant's
        if made >= settings.fill_bytes:
            break
        admit(key, room(0.0))
        made += workload.size(key)
    keys = workload.stream(seed=workload.seed + 1)  # the stream every worker serves
    hits = 0
    for n in range(ops):
        key = next(keys)
        if key in held:
            hits += 1
            held.move_to_end(key)
        else:
            admit(key, room(duration * n / ops))
    return hits
