"""The worker: one contestant serving the workload, reporting as it goes.

Run by the scenario inside the memory cgroup as ``python -m volcache.bench.worker
CONFIG_JSON``: fills its cache, prints ``{"ready": true}``, reads the start
time from standard input, then prints a JSON line every ``interval`` seconds
and a last one with ``"done": true``. :func:`fill` and :func:`serve` are also
what the simulated run calls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .contestants import Contestant, Getter
from .workload import Workload, check_value


def serve(
    getter: Getter,
    workload: Workload,
    duration: float,
    start: float,
    report: Callable[[dict[str, Any]], None],
    interval: float = 0.25,
    between: Callable[[float], None] | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, int]:
    """Look up Zipf keys for ``duration`` seconds from ``start`` (time.time()).

    Every value returned is checked for a wrong byte. ``between(t)`` runs
    after each lookup (the simulated run does its accounting there, and may
    raise to stop); ``counts`` is updated as it goes.
    """
    if counts is None:
        counts = {}
    counts.update(ops=0, hits=0, misses=0, wrong=0)
    keys = workload.stream(seed=workload.seed + 1)
    next_report = interval
    now = time.time() - start
    while now < duration:
        key = next(keys)
        value, hit = getter.get(key)
        counts["ops"] += 1
        counts["hits" if hit else "misses"] += 1
        counts["wrong"] += not check_value(key, value)
        now = time.time() - start
        if between is not None:
            between(now)
        if now >= next_report:
            report({"t": round(now, 3), **counts})
            next_report += interval
    return counts


def fill(getter: Getter, workload: Workload, nbytes: int) -> int:
    """Look up keys, the most popular first, until values worth ``nbytes`` were made.

    Run before the clock starts, so that every cache starts as full as it
    would become: whether a cache bounded near the limit meets it does not
    depend on how fast this machine makes values. Returns the keys looked up.
    """
    made = 0
    for n, key in enumerate(workload.by_popularity()):
        if made >= nbytes:
            return n
        value, _ = getter.get(key)
        made += len(value)
    return workload.keys


def main() -> None:
    config = json.loads(sys.argv[1])
    workload = Workload(**config["workload"])
    contestant = Contestant(**config["contestant"])
    getter = Getter(contestant, workload, config["limit"], config.get("backend_options"))

    def report(sample: dict[str, Any]) -> None:
        print(json.dumps(sample), flush=True)

    began = time.perf_counter()
    filled = fill(getter, workload, config["fill"])
    report({"ready": True, "filled": filled, "fill_s": round(time.perf_counter() - began, 3)})
    start = float(sys.stdin.readline())  # the scenario starts the clock once all are ready
    counts = serve(getter, workload, config["duration"], start, report)
    info = getter.cache.info().as_dict() if contestant.kind == "volcache" else {}
    report({"done": True, "t": round(time.time() - start, 3), **counts, "info": info})
    getter.close()


if __name__ == "__main__":
    main()
