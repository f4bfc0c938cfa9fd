"""The tier scenario: two processes under memory pressure, alone and sharing one Redis
(or, with ``cluster``, a Redis Cluster of three masters and three replicas).

Each worker runs the pressure workload (Zipf keys over a working set twice
the limit, values that cost CPU) with its own key stream, in a memory cgroup
of its own with the limit when this machine has them (else without one, and
the report says so). First both run without a tier, then both with one
Redis between them: what each made again, and how many lookups a second.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from typing import Any

from .. import cgroups
from . import cluster as redis_cluster
from . import servers
from .workload import Workload

WORKERS = 2
_GRACE = 60.0


def compete(
    limit: int, duration: float, backend: str, seed: int = 0, cluster: bool = False
) -> dict[str, Any]:
    """Run both rounds; the results of each worker of each, and whether under cgroups."""
    workload = Workload.for_memory(2 * limit, seed=seed)
    no_cgroups = cgroups.unavailable_reason()
    rounds: dict[str, list[dict[str, Any]]] = {}
    server: Any = (
        redis_cluster.running_cluster() if cluster else servers.running("redis", memory=4 * limit)
    )
    shared = "shared Redis Cluster" if cluster else "shared Redis"
    with server as redis:
        for mode, url in (("no tier", None), (shared, redis.url)):
            config = {
                "workload": asdict(workload), "duration": duration, "backend": backend,
                "redis": url, "cluster": cluster, "namespace": f"bench-{uuid.uuid4().hex[:8]}",
            }  # fmt: skip
            rounds[mode] = _round(config, limit, no_cgroups is None)
    return {"rounds": rounds, "cgroups": no_cgroups, "workload": asdict(workload),
            "cluster": cluster}  # fmt: skip


def _round(config: dict[str, Any], limit: int, limited: bool) -> list[dict[str, Any]]:
    start = time.time() + 2.0  # both import and connect first, then start together
    with contextlib.ExitStack() as stack:
        children = []
        for n in range(WORKERS):
            command = [sys.executable, "-m", "volcache.bench.tier_worker"]
            own = {**config, "start": start, "stream_seed": config["workload"]["seed"] + 1 + n}
            command.append(json.dumps(own))
            if limited:
                group = stack.enter_context(cgroups.MemoryCgroup(limit, name="volcache-tier"))
                command = group.command(command)
            children.append(
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        results = []
        for child in children:
            try:
                out, err = child.communicate(timeout=config["duration"] + _GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            if child.returncode != 0 or not out.strip():
                last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
                results.append({"failed": last})
            else:
                results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def table(outcome: dict[str, Any]) -> str:
    """The rounds side by side, a line per worker."""
    lines = [
        f"{'':20} {'worker':>6} {'lookups/s':>10} {'regenerated':>12} {'tier hits':>10} "
        f"{'purged':>8} {'wrong':>6}"
    ]
    for mode, workers in outcome["rounds"].items():
        for n, result in enumerate(workers, 1):
            if "failed" in result:
                lines.append(f"{mode:20} {n:>6} failed: {result['failed']}")
                continue
            rate = result["lookups"] / result["seconds"] if result["seconds"] else 0.0
            lines.append(
                f"{mode:20} {n:>6} {rate:>10,.0f} {result['regenerated']:>12,} "
                f"{result['tier_hits']:>10,} {result['purged']:>8,} {result['wrong']:>6}"
            )
    return "\n".join(lines)
