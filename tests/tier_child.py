"""A process of its own using a memoized function with a shared tier.

Usage: python tier_child.py KIND URL NAMESPACE LOG KEYS [--lock] [--sleep S]

Computes f(k) for each comma-separated key, appending a line to LOG for each
computation (so that the parent counts them across processes), and prints
the results as JSON with the cache's tier counters.
"""

from __future__ import annotations

import json
import sys
import time

from volcache import cached
from volcache.tiers import MemcachedTier, RedisTier


def main() -> None:
    kind, url, namespace, log, keys = sys.argv[1:6]
    lock = "--lock" in sys.argv
    pause = float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0.0
    options = {"namespace": namespace, "lock": lock, "timeout": 1.0, "lock_timeout": 10.0}
    if kind == "memcached":
        tier = MemcachedTier(url, **options)
    else:
        tier = RedisTier(url, cluster=kind == "redis-cluster", **options)

    @cached(tier=tier, backend="sim")
    def f(k: int) -> bytes:
        with open(log, "a") as out:
            out.write(f"{k}\n")
        time.sleep(pause)
        return b"value-%d" % k

    results = {k: f(int(k)).decode() for k in keys.split(",")}
    info = f.cache.info()
    print(json.dumps({"results": results, "tier_hits": info.tier_hits}))


if __name__ == "__main__":
    main()
