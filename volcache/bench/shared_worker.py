"""A worker of the shared scenario: the pressure workload through one kind of cache.

Run as ``python -m volcache.bench.shared_worker CONFIG_JSON``. ``mode`` is
``private`` (a VolatileCache of its own), ``shared`` (one SharedVolatileCache
for every worker) or ``diskcache`` (one ``diskcache.Cache`` directory for every
worker, what users pick today to share a cache between processes). Waits for
the start time, looks up Zipf keys of its own stream for ``duration``
seconds, checks every value for a wrong byte, prints one JSON line.

``mode`` ``memory`` measures instead: stores ``keys`` values (or, with
``private``, into a cache of its own), then prints its PSS with and without
shared memory, before and after.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .workload import Workload, check_value, make_value, serve


def pss() -> dict[str, int]:
    """This process's proportional set size, and its shared memory part, in bytes."""
    found = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        field, _, rest = line.partition(":")
        if field in ("Pss", "Pss_Shmem"):
            found[field] = int(rest.split()[0]) * 1024
    return found


def open_cache(
    config: dict[str, Any], make: Callable[[int], bytes]
) -> tuple[Any, Callable[[], int]]:
    """The worker's cache and a function counting what it made again."""
    mode = config["mode"]
    if mode == "private":
        from ..cache import VolatileCache

        cache = VolatileCache(backend=config["backend"], regenerate=make)
        return cache, lambda: cache.info().regenerated
    if mode == "shared":
        from ..shared import SharedVolatileCache

        shared = SharedVolatileCache(config["name"], size=config["size"], regenerate=make)
        return shared, lambda: shared.info().regenerated
    import diskcache

    made = [0]
    disk = diskcache.Cache(config["name"], size_limit=config["size"])

    class Through:
        def __getitem__(self, key: int) -> bytes:
            value = disk.get(key)
            if value is None:
                value = make(key)
                made[0] += 1
                disk.set(key, value)
            return value  # type: ignore[no-any-return]

        def close(self) -> None:
            disk.close()

    return Through(), lambda: made[0]


def measure(config: dict[str, Any], workload: Workload) -> None:
    """The ``memory`` mode: PSS before and after holding ``keys`` (stored by whoever
    finds one missing, then every one read)."""
    before = pss()
    cache, _ = open_cache(config, lambda key: make_value(workload, key))
    time.sleep(max(0.0, config["start"] - time.time()))
    for key in config["keys"]:
        if cache.get(key) is None:
            cache[key] = make_value(workload, key)
    wrong = sum(not check_value(key, cache[key]) for key in config["keys"])
    after = pss()
    print(json.dumps({"before": before, "after": after, "wrong": wrong}))
    cache.close()


def main() -> None:
    config = json.loads(sys.argv[1])
    workload = Workload(**config["workload"])
    if config.get("keys") is not None:
        measure(config, workload)
        return
    cache, regenerated = open_cache(config, lambda key: make_value(workload, key))
    keys = workload.stream(seed=config["stream_seed"])
    ops, wrong, seconds = serve(cache.__getitem__, keys, config["start"], config["duration"])
    print(json.dumps({
        "lookups": ops, "seconds": round(seconds, 3), "regenerated": regenerated(),
        "wrong": wrong,
    }))  # fmt: skip
    cache.close()


if __name__ == "__main__":
    main()
