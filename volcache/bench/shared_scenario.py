"""The shared scenario: N workers under one memory limit, with the competitor.

Three rounds of the pressure workload (Zipf keys over a working set 2.5 times
the limit, values that cost CPU), each with N worker processes and the
competitor in one memory cgroup of the limit: every worker with a private
VolatileCache; all of them with one SharedVolatileCache; all of them with one
``diskcache.Cache`` directory (the cross-process cache users pick today).
Each round reports its workers' lookups, values made again and wrong values,
and whether the OOM killer took anyone.

Before them, one measurement of memory without a limit: the same entries held
by one process's private cache, and by N processes sharing one segment (each
process's PSS without its shared part, plus the segment's memory once).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from typing import Any

from .. import cgroups
from ..shared import SharedVolatileCache
from ..shared.segment import path_of
from .workload import Workload

WORKERS = 4
_GRACE = 60.0
ROUNDS = {"private volcache": "private", "shared volcache": "shared", "diskcache": "diskcache"}


def compete(
    limit: int, duration: float, backend: str, workers: int = WORKERS, seed: int = 0,
    memory_bytes: int = 64 << 20,
) -> dict[str, Any]:  # fmt: skip
    """The memory measurement, then the three rounds."""
    workload = Workload.for_memory(int(2.5 * limit), seed=seed)
    no_cgroups = cgroups.unavailable_reason()
    outcome: dict[str, Any] = {"workers": workers, "workload": asdict(workload),
                               "cgroups": no_cgroups, "rounds": {}}  # fmt: skip
    outcome["memory"] = one_copy(workload, backend, workers, memory_bytes)
    for label, mode in ROUNDS.items():
        if mode == "diskcache" and importlib.util.find_spec("diskcache") is None:
            outcome["rounds"][label] = {"skipped": "not installed (pip install diskcache)"}
            continue
        config = {"mode": mode, "workload": asdict(workload), "duration": duration,
                  "backend": backend, "size": 4 * limit}  # fmt: skip
        outcome["rounds"][label] = _round(config, limit, workers, no_cgroups is None)
    return outcome


@contextlib.contextmanager
def _place(mode: str):  # type: ignore[no-untyped-def]
    """A fresh segment name or cache directory for a round, removed after."""
    if mode == "diskcache":
        where = tempfile.mkdtemp(prefix="volcache-bench-diskcache-", dir="/var/tmp")
        try:
            yield where
        finally:
            shutil.rmtree(where, ignore_errors=True)
    else:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        try:
            yield name
        finally:
            SharedVolatileCache.unlink(name)


def _spawn(config: dict[str, Any], group: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "volcache.bench.shared_worker", json.dumps(config)]
    if group is not None:
        command = group.command(command)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(child: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    if child.returncode != 0 or not out.strip():
        if child.returncode == -9:
            return {"failed": "killed (SIGKILL: the OOM killer, in a cgroup)"}
        last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"failed": last}
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _round(config: dict[str, Any], limit: int, workers: int, limited: bool) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        config = {**config, "name": stack.enter_context(_place(config["mode"]))}
        group = None
        if limited:
            group = stack.enter_context(cgroups.MemoryCgroup(limit, name="volcache-shared"))
        start = time.time() + 3.0  # all import and open first, then start together
        children = [
            _spawn({**config, "start": start, "stream_seed": config["workload"]["seed"] + 1 + n},
                   group)
            for n in range(workers)
        ]  # fmt: skip
        competitor = [sys.executable, "-m", "volcache.bench.competitor",
                      str(limit // 2), str(config["duration"]), str(start)]  # fmt: skip
        rival = subprocess.Popen(group.command(competitor) if group is not None else competitor)
        results = [_collect(child, config["duration"] + _GRACE) for child in children]
        rival.wait(timeout=_GRACE)
        oom_kills = group.oom_kills() if group is not None else 0
    return {"workers": results, "oom_kills": oom_kills, "competitor": rival.returncode}


def one_copy(workload: Workload, backend: str, workers: int, nbytes: int) -> dict[str, Any]:
    """The same entries (the most popular, ``nbytes`` of them) in one private cache,
    and in one segment shared by ``workers`` processes: the memory each takes."""
    keys, total = [], 0
    for key in workload.by_popularity():
        if total >= nbytes:
            break
        keys.append(key)
        total += workload.size(key)
    base = {"workload": asdict(workload), "backend": backend, "keys": keys, "size": 4 * nbytes}
    private = _collect(_spawn({**base, "mode": "private", "start": 0.0}, None), 300)
    with _place("shared") as name:
        start = time.time() + 2.0
        children = [_spawn({**base, "mode": "shared", "name": name, "start": start}, None)
                    for _ in range(workers)]  # fmt: skip
        shared = [_collect(child, 300) for child in children]
        segment = os.stat(path_of(name)).st_blocks * 512 if path_of(name).exists() else 0
    failed = [r["failed"] for r in [private, *shared] if "failed" in r]
    if failed:
        return {"failed": failed[0]}
    own = private["after"]["Pss"] - private["before"]["Pss"]
    parts = [
        (r["after"]["Pss"] - r["after"].get("Pss_Shmem", 0))
        - (r["before"]["Pss"] - r["before"].get("Pss_Shmem", 0))
        for r in shared
    ]
    return {
        "entries": len(keys), "entry_bytes": total, "private": own, "shared_processes": parts,
        "segment": segment, "shared": sum(parts) + segment,
        "ratio": (sum(parts) + segment) / own if own > 0 else None,
        "wrong": private["wrong"] + sum(r["wrong"] for r in shared),
    }  # fmt: skip


def table(outcome: dict[str, Any]) -> str:
    """The memory line, then each round's totals and its workers."""
    lines = []
    memory = outcome["memory"]
    if "failed" in memory:
        lines.append(f"memory: failed: {memory['failed']}")
    else:
        lines.append(
            f"memory of {memory['entries']} entries ({memory['entry_bytes'] / 2**20:.0f} MiB): "
            f"one private cache {memory['private'] / 2**20:.1f} MiB; {outcome['workers']} "
            f"processes sharing one {memory['shared'] / 2**20:.1f} MiB (segment "
            f"{memory['segment'] / 2**20:.1f} MiB + processes "
            f"{sum(memory['shared_processes']) / 2**20:.1f} MiB): {memory['ratio']:.2f}x"
        )
    lines.append("")
    lines.append(f"{'':18} {'lookups/s':>10} {'hit ratio':>10} {'regenerated':>12} "
                 f"{'wrong':>6} {'killed':>7}")  # fmt: skip
    for label, round_ in outcome["rounds"].items():
        if "skipped" in round_:
            lines.append(f"{label:18} skipped: {round_['skipped']}")
            continue
        summary = summarize(round_)
        lines.append(
            f"{label:18} {summary['rate']:>10,.0f} {summary['hit_ratio']:>10.1%} "
            f"{summary['regenerated']:>12,} {summary['wrong']:>6} {summary['killed']:>7}"
        )
        for n, worker in enumerate(round_["workers"], 1):
            if "failed" in worker:
                lines.append(f"{'':4}worker {n}: failed: {worker['failed']}")
    return "\n".join(lines)


def summarize(round_: dict[str, Any]) -> dict[str, Any]:
    """A round's totals over its workers that finished."""
    done = [w for w in round_["workers"] if "failed" not in w]
    lookups = sum(w["lookups"] for w in done)
    regenerated = sum(w["regenerated"] for w in done)
    seconds = max((w["seconds"] for w in done), default=0.0)
    return {
        "rate": lookups / seconds if seconds else 0.0,
        "hit_ratio": 1 - regenerated / lookups if lookups else 0.0,
        "regenerated": regenerated,
        "wrong": sum(w["wrong"] for w in done),
        "killed": len(round_["workers"]) - len(done) + (round_["competitor"] not in (0, None)),
    }
