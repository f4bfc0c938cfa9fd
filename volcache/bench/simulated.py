"""The pressure scenario on the sim backend's simulated memory, for machines without cgroups.

No process is limited or killed here: memory is accounted instead. The
worker is taken to hold an interpreter's worth of memory plus what its cache
holds; the competitor's memory comes out of the same simulated limit (for
volcache, as pinned regions of the same sim backend, so that the simulation
purges volatile pages to make room). A contestant whose memory and the
competitor's would exceed the limit is "killed", as the OOM killer would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import competitor
from .contestants import Contestant, Getter
from .results import SAMPLE, Result, Settings, returned_memory
from .worker import fill, serve

BASELINE = 40 << 20  # an interpreter with volcache and a workload loaded
CHUNK = competitor.CHUNK


class _OutOfMemory(Exception):
    pass


def run_simulated(
    contestant: Contestant,
    settings: Settings,
    progress: Callable[[Contestant, float, dict[str, Any]], None],
) -> Result:
    """One contestant against the competitor in simulated memory."""
    result = Result(contestant, note="simulated")
    workload = settings.workload()
    options = {"memory": settings.limit - BASELINE} if contestant.kind == "volcache" else None
    getter = Getter(contestant, workload, settings.limit, options)
    backend = getter.cache.backend if contestant.kind == "volcache" else None
    regions: list[Any] = []  # the competitor's, in the sim backend
    state = {"competitor": 0, "next_sample": 0.0}
    counts: dict[str, int] = {}

    def worker_memory() -> int:
        if backend is None:
            return BASELINE + getter.held_bytes()
        return BASELINE + backend.stats()["resident_bytes"] - state["competitor"]

    def between(t: float) -> None:
        want = competitor.target(settings.competitor_peak, settings.duration, t) // CHUNK * CHUNK
        if backend is not None:
            try:
                while len(regions) * CHUNK < want:
                    regions.append(backend.allocate(CHUNK))
            except MemoryError:
                raise _OutOfMemory from None
            while len(regions) * CHUNK > want:
                backend.release(regions.pop())
        state["competitor"] = want
        memory = worker_memory()
        if memory + want > settings.limit:
            raise _OutOfMemory
        if t >= state["next_sample"]:
            state["next_sample"] += SAMPLE
            sample = {"t": round(t, 3), "rss": memory, "competitor": want}
            result.samples.append({**sample, "ops": counts["ops"], "hits": counts["hits"]})
            progress(contestant, t, counts)

    began = time.perf_counter()
    fill(getter, workload, settings.fill_bytes)
    result.fill_s = round(time.perf_counter() - began, 3)
    start = time.time()
    try:
        serve(
            getter,
            workload,
            settings.duration,
            start,
            lambda _: None,
            between=between,
            counts=counts,
        )
    except (_OutOfMemory, MemoryError):
        result.status = "killed"
        result.killed_at = round(time.time() - start, 3)
    result.served = min(time.time() - start, settings.duration)
    for name in ("ops", "hits", "misses", "wrong"):
        setattr(result, name, counts.get(name, 0))
    result.peak_rss = int(max((s["rss"] for s in result.samples), default=BASELINE))
    if contestant.kind == "volcache":
        result.info = getter.cache.info().as_dict()
    returned_memory(result, settings)
    getter.close()
    return result
