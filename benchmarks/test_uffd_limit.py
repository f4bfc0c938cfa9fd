"""The uffd purger against a real memory limit: how fast it gives memory back, and the headroom.

A uffd-backed cache holds most of a 256 MiB cgroup's limit in volatile
memory; a competitor in the same group then grows by 128 MiB at a set rate
(or as fast as it can). An observer outside the group registers its own
usage threshold at the purger's watermark (``limit - headroom``) and
timestamps each crossing: *above* is the time from usage crossing the
watermark to the memory given back (median and worst of the run's crossings),
*overshoot* is how far past the watermark the group's peak usage went, which
is the headroom this allocation rate needs. Run them with
``python -m pytest benchmarks/test_uffd_limit.py --benchmark-disable -s`` to
see the table.
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from volcache import cgroups
from volcache.backends import available_backends
from volcache.backends.limits import CgroupV1Limit, default_headroom

TESTS = Path(__file__).resolve().parent.parent / "tests"
MIB = 1 << 20
LIMIT = 256 * MIB
HEADROOM = default_headroom(LIMIT)
RATES = [100, 200, 400, None]  # MiB/s; None: as fast as it can (about 350 MiB/s here)

pytestmark = [
    pytest.mark.skipif(
        available_backends()["uffd"] is not None, reason=str(available_backends()["uffd"])
    ),
    pytest.mark.skipif(cgroups.unavailable_reason() is not None, reason="no memory cgroups"),
]


class Observer:
    """Timestamps the group's usage crossing ``high``, both ways, from outside the group."""

    def __init__(self, group: cgroups.MemoryCgroup, high: int) -> None:
        self.high = high
        self.source = CgroupV1Limit(group.path, LIMIT, LIMIT - high)
        self.above: list[float] = []  # seconds above the watermark, one per crossing
        self._since: float | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.source.fileno(), select.POLLIN)
        while not self._stop:
            if not poller.poll(50):
                continue
            now = time.perf_counter()
            os.eventfd_read(self.source.fileno())
            over = self.source.usage() > self.high
            if over and self._since is None:
                self._since = now
            elif not over and self._since is not None:
                self.above.append(now - self._since)
                self._since = None

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.source.close()


def _run(rate: int | None) -> dict:
    with cgroups.MemoryCgroup(LIMIT, name="volcache-bench") as group:
        observer = Observer(group, LIMIT - HEADROOM)
        argv = [sys.executable, str(TESTS / "uffd_limit_child.py"), "limit", "200", "3"]
        child = subprocess.Popen(group.command(argv), stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            (group.path / "memory.max_usage_in_bytes").write_text("0")  # the peak from here on
            hog_argv = [sys.executable, str(TESTS / "grow_hog.py"), "128", "1"]
            if rate is not None:
                hog_argv.append(str(rate))
            began = time.perf_counter()
            hog = subprocess.run(group.command(hog_argv), capture_output=True, timeout=120)
            grew = time.perf_counter() - began - 1  # less the hold
            child.communicate(timeout=60)
        finally:
            child.kill()
            observer.close()
        peak = group.peak()
        kills = group.oom_kills()
    above = observer.above
    return {
        "asked_mib_s": rate,
        "rate_mib_s": round(128 / grew),
        "crossings": len(above),
        "above_median_ms": round(statistics.median(above) * 1e3, 2) if above else None,
        "above_worst_ms": round(max(above) * 1e3, 2) if above else None,
        "overshoot_mib": round((peak - (LIMIT - HEADROOM)) / MIB, 1),
        "headroom_mib": HEADROOM // MIB,
        "oom_kills": kills,
        "competitor": hog.returncode,
    }


@pytest.mark.parametrize("rate", RATES, ids=[f"{r}MiB/s" if r else "max" for r in RATES])
def test_purger_keeps_the_group_under_its_limit(benchmark, rate):
    benchmark.group = "uffd purger under a competitor (256 MiB cgroup)"
    results = benchmark.pedantic(_run, args=(rate,), rounds=1, iterations=1)
    benchmark.extra_info.update(results)
    print(f"\n{results}")
    assert results["oom_kills"] == 0 and results["competitor"] == 0
    assert results["crossings"] >= 1  # the scenario did reach the watermark
