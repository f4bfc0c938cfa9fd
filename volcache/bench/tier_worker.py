"""A worker of the tier scenario: the pressure workload, with or without a shared tier.

Run as ``python -m volcache.bench.tier_worker CONFIG_JSON``: waits for the
start time in the config, looks up Zipf keys of its own stream for
``duration`` seconds, checks every value for a wrong byte, and prints one
JSON line: lookups, regenerations, tier hits, purges and wrong values.
"""

from __future__ import annotations

import json
import sys

from ..cache import VolatileCache
from .workload import Workload, make_value, serve


def main() -> None:
    config = json.loads(sys.argv[1])
    workload = Workload(**config["workload"])
    tier = None
    if config.get("redis"):
        from ..tiers import RedisTier

        tier = RedisTier(
            config["redis"], cluster=config.get("cluster", False),
            namespace=config["namespace"], timeout=0.5,
        )  # fmt: skip
    cache = VolatileCache(
        backend=config["backend"], regenerate=lambda key: make_value(workload, key), tier=tier
    )
    keys = workload.stream(seed=config["stream_seed"])
    ops, wrong, seconds = serve(cache.__getitem__, keys, config["start"], config["duration"])
    info = cache.info()
    print(json.dumps({
        "lookups": ops, "seconds": round(seconds, 3), "regenerated": info.regenerated,
        "tier_hits": info.tier_hits, "tier_errors": info.tier_errors, "purged": info.purged,
        "wrong": wrong,
    }))  # fmt: skip
    cache.close()
    if tier is not None:
        tier.close()


if __name__ == "__main__":
    main()
