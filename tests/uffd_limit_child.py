"""Run inside a memory cgroup: a uffd-backed cache that the group's limit must not kill.

Usage: python uffd_limit_child.py MODE FILL_MIB SECONDS

MODE is ``limit`` (the uffd backend's defaults: follow this cgroup's limit),
``sync`` (the same, with the purger's thread kept out: only the synchronous
path before our own allocations can act) or ``none`` (no purger at all).
Stores FILL_MIB of values (each the same bytes for the same key, so that a
regenerated value is checkable), prints "ready", then looks keys up for
SECONDS while a competitor may grow beside it. Prints one JSON line: values
checked, wrong values, and the backend's stats.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time

from volcache import VolatileCache
from volcache.backends import get_backend

VALUE = 256 << 10


def make(key: int) -> bytes:
    """A key's value: 256 KiB that depend on the key."""
    seed = hashlib.sha256(key.to_bytes(8, "little")).digest()
    return seed * (VALUE // len(seed))


def main() -> None:
    mode, fill_mib, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    backend = get_backend("uffd", pressure=None if mode == "none" else "limit")
    cache = VolatileCache(backend=backend, regenerate=make, hot_bytes=4 << 20)
    keys = fill_mib * (1 << 20) // VALUE
    checked = wrong = 0
    # In "sync" mode the purger's thread waits for the backend's lock, which this
    # thread holds: every purge is one made before our own allocation.
    hold = backend._lock if mode == "sync" else contextlib.nullcontext()
    with hold:
        for key in range(keys):
            cache[key] = make(key)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    key = 0
    while time.monotonic() < deadline:
        value = cache[key % keys]
        checked += 1
        wrong += value != make(key % keys)
        key += 7
    stats = {k: v for k, v in backend.stats().items() if isinstance(v, int | float | str)}
    info = cache.info()
    print(json.dumps({"checked": checked, "wrong": wrong, "stats": stats,
                      "regenerated": info.regenerated}), flush=True)  # fmt: skip
    cache.close()
    backend.close()


if __name__ == "__main__":
    main()
