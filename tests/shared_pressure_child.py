"""A worker of test_shared's pressure test: stores and reads values of a shared cache
in a memory cgroup whose limit they exceed together; prints what it saw as JSON."""

from __future__ import annotations

import hashlib
import json
import sys

from volcache import SharedVolatileCache

SIZE = 256 << 10


def value(k: int) -> bytes:
    return hashlib.sha256(b"%d" % k).digest() * (SIZE // 32)


def main() -> None:
    name, first, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cache = SharedVolatileCache(name, size=1 << 30, regenerate=value)
    wrong = 0
    for _ in range(rounds):
        for k in range(first, first + count):
            cache[k] = value(k)
            wrong += cache.get(k - 1 if k > first else k) not in (
                None,
                value(k - 1 if k > first else k),
            )
        for k in range(0, 2 * count):  # the other worker's keys too
            got = cache.get(k)
            wrong += got is not None and got != value(k)
    info = cache.info()
    print(json.dumps({"wrong": wrong, "purged_bytes": info.purged_bytes, "purged": info.purged,
                      "hits": info.hits, "pressure": info.pressure}))  # fmt: skip
    cache.close()


if __name__ == "__main__":
    main()
