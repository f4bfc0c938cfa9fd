"""Run inside a memory cgroup: many small entries, more than their own objects could hold.

Usage: python many_small_child.py KIND CALLS [BUDGET]

KIND ``cached``: an unbounded ``@cached`` function of one ``int`` returning
256 bytes, called with CALLS distinct arguments and revisits of older ones.
KIND ``mapping``: a ``VolatileCache`` with ``str`` keys and 4 KiB values,
CALLS keys stored and now and then read back. BUDGET, if given, is the
cache's ``memory_budget`` (default: derived from the cgroup's limit).
Prints one JSON line: values checked, wrong values, and the cache's info.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

from volcache import VolatileCache, cached


def value_of(n: int, size: int) -> bytes:
    seed = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=16).digest()
    return seed * (size // 16)


def main() -> None:
    kind, calls = sys.argv[1], int(sys.argv[2])
    options = {"memory_budget": int(sys.argv[3])} if len(sys.argv) > 3 else {}
    rng = random.Random(0)
    checked = wrong = 0
    if kind == "cached":

        @cached(backend="kernel", **options)
        def make(n: int) -> bytes:
            return value_of(n, 256)

        for n in range(calls):
            key = n if n % 4 else rng.randrange(n + 1)  # a revisit of an older key
            wrong += make(key) != value_of(key, 256)
            checked += 1
        info = make.cache.info()
    else:
        cache = VolatileCache(backend="kernel", regenerate=lambda k: value_of(int(k[2:]), 4096),
                              **options)  # fmt: skip
        for n in range(calls):
            cache[f"k-{n}"] = value_of(n, 4096)
            if n % 16 == 0:
                key = rng.randrange(n + 1)
                got = cache.get(f"k-{key}")
                checked += 1
                wrong += got is not None and got != value_of(key, 4096)
        info = cache.info()
    print(json.dumps({"checked": checked, "wrong": wrong, "info": info.as_dict()}), flush=True)


if __name__ == "__main__":
    main()
