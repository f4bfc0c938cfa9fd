"""The many-small scenario: more small entries than their own objects could hold.

Values are volatile; keys and records are not. Under a memory cgroup, each
contestant runs in a process of its own:

- ``memoize``: a function of one ``int`` returning 256 bytes, called with
  ``calls`` distinct arguments, a quarter of the calls revisiting an older one;
  ``@cached`` (unbounded, the default budget) beside ``cachetools.cached`` on
  an ``LRUCache`` of 100,000 entries and ``functools.lru_cache(maxsize=None)``.
- ``mapping``: ``str`` keys and 4 KiB values, ``calls`` stores and a read-back
  of an older key every 16th; ``VolatileCache`` beside a cachetools
  ``LRUCache`` bounded to half the limit in bytes, and a plain ``dict``.

Every value read is checked. Run as ``python -m volcache.bench.many_small
WORKLOAD CONTESTANT CALLS [BUDGET]`` inside the group: prints a JSON line of
progress every 100,000 operations and a last one with ``"done": true``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cachetools

from ..cache import VolatileCache
from ..decorator import cached

CONTESTANTS = {
    "memoize": ("volcache @cached", "cachetools LRUCache(100000)", "lru_cache(maxsize=None)"),
    "mapping": ("volcache VolatileCache", "cachetools LRUCache (50% of limit)", "dict"),
}
REPORT_EVERY = 100_000


def value_of(n: int, size: int) -> bytes:
    """The value of key ``n``: ``size`` bytes that depend on it."""
    seed = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=16).digest()
    return seed * (size // 16)


def _memoizer(contestant: str, budget: int | None) -> Callable[[int], bytes]:
    def make(n: int) -> bytes:
        return value_of(n, 256)

    if contestant.startswith("volcache"):
        options: dict[str, Any] = {} if budget is None else {"memory_budget": budget}
        return cached(backend="kernel", **options)(make)
    if contestant.startswith("cachetools"):
        return cachetools.cached(cachetools.LRUCache(100_000))(make)
    return functools.lru_cache(maxsize=None)(make)


def _mapping(contestant: str, limit: int, budget: int | None) -> Any:
    if contestant.startswith("volcache"):
        options: dict[str, Any] = {} if budget is None else {"memory_budget": budget}
        return VolatileCache(backend="kernel", **options)
    if contestant.startswith("cachetools"):
        return cachetools.LRUCache(limit // 2, getsizeof=len)
    return {}


def run(workload: str, contestant: str, calls: int, limit: int, budget: int | None,
        report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:  # fmt: skip
    """Serve ``calls`` operations; returns the counts."""
    rng = random.Random(0)
    counts = {"ops": 0, "checked": 0, "wrong": 0, "hits": 0}
    start = time.perf_counter()
    cache: Any = None
    if workload == "memoize":
        memo = _memoizer(contestant, budget)
        cache = getattr(memo, "cache", None)
        for n in range(calls):
            key = n if n % 4 else rng.randrange(n + 1)
            counts["wrong"] += memo(key) != value_of(key, 256)
            counts["checked"] += 1
            counts["ops"] += 1
            if counts["ops"] % REPORT_EVERY == 0:
                report({"t": round(time.perf_counter() - start, 3), **counts})
    else:
        cache = _mapping(contestant, limit, budget)
        for n in range(calls):
            cache[f"k-{n}"] = value_of(n, 4096)
            counts["ops"] += 1
            if n % 16 == 0:
                key = rng.randrange(n + 1)
                got = cache.get(f"k-{key}")
                counts["checked"] += 1
                counts["hits"] += got is not None
                counts["wrong"] += got is not None and got != value_of(key, 4096)
            if counts["ops"] % REPORT_EVERY == 0:
                report({"t": round(time.perf_counter() - start, 3), **counts})
    if isinstance(cache, VolatileCache):
        info = cache.info()
        counts.update(evictions=info.evictions, nonvolatile_bytes=info.nonvolatile_bytes,
                      hot_bytes=info.hot_bytes, memory_budget=info.memory_budget)  # fmt: skip
    return {"t": round(time.perf_counter() - start, 3), **counts}


def compete(limit: int, calls: dict[str, int],
            progress: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Each workload's contestants, each in a fresh memory cgroup of ``limit`` bytes."""
    from .. import cgroups

    results = []
    for workload, names in CONTESTANTS.items():
        for name in names:
            argv = [sys.executable, "-m", "volcache.bench.many_small", workload, name,
                    str(calls[workload]), str(limit)]  # fmt: skip
            with cgroups.MemoryCgroup(limit, name="volcache-bench") as group:
                run = subprocess.run(group.command(argv), capture_output=True, text=True)
                kills = group.oom_kills()
                peak = group.peak()
            lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
            last = lines[-1] if lines else {}
            if last.get("done"):
                status = "finished"
            elif run.returncode == -9 and kills:
                status = "killed"
            else:
                status = f"failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}"[:60]
            result = {"workload": workload, "contestant": name, "status": status,
                      "calls": calls[workload], "peak": peak, **last}  # fmt: skip
            results.append(result)
            progress(_line(result))
    return results


def _line(r: dict[str, Any]) -> str:
    ops = r.get("ops", 0)
    state = r["status"]
    if state == "killed":
        state = f"killed after {ops:,} operations" if ops else f"killed in {REPORT_EVERY:,} ops"
    rate = ops / r["t"] if r.get("t") else 0.0
    peak = "-" if r.get("peak") is None else f"{r['peak'] / (1 << 20):.0f} MiB"
    return (f"{r['workload']:8} {r['contestant']:36} {state:32} {rate:9,.0f}/s  "
            f"{r.get('wrong', 0):5}  {peak:>8}")  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    """The results as lines of text."""
    head = f"{'workload':8} {'contestant':36} {'result':32} {'ops/s':>11}  wrong  {'peak':>8}"
    return "\n".join([head, "-" * len(head), *map(_line, results)])


def main() -> None:
    workload, contestant = sys.argv[1], sys.argv[2]
    calls, limit = int(sys.argv[3]), int(sys.argv[4])
    budget = int(sys.argv[5]) if len(sys.argv) > 5 else None

    def report(sample: dict[str, Any]) -> None:
        print(json.dumps(sample), flush=True)

    counts = run(workload, contestant, calls, limit, budget, report)
    report({"done": True, **counts})


if __name__ == "__main__":
    main()
