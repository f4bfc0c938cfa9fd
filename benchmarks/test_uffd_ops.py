"""The uffd backend: the cost of a caught fault, and how fast the purger reacts.

A caught fault is a touch of a purged page before re-pinning: the faulting
thread waits while the native handler thread maps a zero page. It is timed
with the handler on the toucher's CPU and on another one, beside an ordinary
fault on a dropped page of a plain mapping (what the kernel alone costs).
The purger's reaction is timed from a pressure event (an eventfd, which is how
cgroup v1 delivers pressure levels) to the memory given back.
"""

from __future__ import annotations

import mmap
import os
import threading

import pytest

from volcache.backends import NONVOLATILE, VOLATILE, available_backends, get_backend
from volcache.backends.pressure import ManualSource, PressureWatcher

PS = mmap.PAGESIZE
pytestmark = pytest.mark.skipif(
    available_backends()["uffd"] is not None, reason=str(available_backends()["uffd"])
)


def _tasks() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


@pytest.mark.parametrize("placement", ["same CPU", "across CPUs"])
def test_caught_fault(benchmark, placement):
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "across CPUs" and len(cpus) < 2:
        pytest.skip("needs two CPUs")
    before = _tasks()
    backend = get_backend("uffd", pressure=None)
    (handler,) = _tasks() - before  # the native fault handler thread
    me = threading.get_native_id()
    os.sched_setaffinity(me, {cpus[0]})
    os.sched_setaffinity(handler, {cpus[0] if placement == "same CPU" else cpus[1]})
    benchmark.group = "touch of a dropped page"
    region = backend.allocate(PS)

    def purge():
        backend.vrange(region, 0, PS, NONVOLATILE)
        backend.vrange(region, 0, PS, VOLATILE)
        backend.reclaim(PS)

    touches = []

    def touch():
        touches.append(region.view[0])

    try:
        benchmark.pedantic(touch, setup=purge, rounds=1000)
        assert backend.stats()["caught_faults"] == len(touches)  # each touch caught
    finally:
        os.sched_setaffinity(me, set(cpus))
        backend.close()


def test_kernel_fault_on_a_dropped_page(benchmark):
    benchmark.group = "touch of a dropped page"
    plain = mmap.mmap(-1, PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def drop():
        plain[0] = 1
        plain.madvise(mmap.MADV_DONTNEED)

    benchmark.pedantic(plain.__getitem__, args=(0,), setup=drop, rounds=1000)


@pytest.mark.parametrize("mib", [1, 64])
def test_purger_reaction(benchmark, mib):
    """From a pressure event to ``mib`` MiB of volatile memory given back."""
    benchmark.group = "purger reaction"
    backend = get_backend("uffd", pressure=None, pressure_purge=1.0)
    source = ManualSource()
    done = threading.Event()
    react = backend._on_pressure

    def on_pressure(woke):
        react(woke)
        done.set()

    watcher = PressureWatcher(source, on_pressure)
    region = backend.allocate(mib << 20)

    def volatile():
        backend.vrange(region, 0, region.size, NONVOLATILE)
        region.view[:] = b"\x01" * region.size  # resident again: something to give back
        backend.vrange(region, 0, region.size, VOLATILE)
        done.clear()

    def fire_and_wait():
        source.fire()
        done.wait(10)

    try:
        benchmark.pedantic(fire_and_wait, setup=volatile, rounds=30 if mib > 1 else 300)
        stats = backend.stats()
        assert stats["pressure_purged_bytes"] >= region.size
        benchmark.extra_info["purge_only_ms"] = stats["pressure_reaction_ms"]
    finally:
        watcher.stop()
        backend.close()
