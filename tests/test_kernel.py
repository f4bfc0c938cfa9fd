"""The kernel backend beyond the contract, against the real kernel.

Partial marking through a real madvise failure (mlocked pages), purges the
kernel made behind the backend's back, zero system calls on re-pin (seen by
strace), huge pages, and the availability probe.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from volcache import cgroups
from volcache.backends import NONVOLATILE, VOLATILE, available_backends, clib, get_backend
from volcache.backends import kernel as kernel_module

from .conftest import need_backend, on_one_cpu, require

PS = os.sysconf("SC_PAGE_SIZE")
HERE = Path(__file__).resolve().parent
LIBC = ctypes.CDLL(None, use_errno=True)
MADV_PAGEOUT = 21


@pytest.fixture
def kernel():
    need_backend("kernel")
    with get_backend("kernel") as backend:
        yield backend


def mlock(address: int, length: int) -> None:
    if LIBC.mlock(ctypes.c_void_p(address), ctypes.c_size_t(length)) != 0:
        err = ctypes.get_errno()
        pytest.fail(f"mlock failed: {os.strerror(err)}")


def smaps_entry(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that starts at ``address``."""
    entry: dict[str, str] = {}
    found = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                if found:
                    break
                found = int(head.split("-")[0], 16) == address
            elif found:
                key, _, value = line.partition(":")
                entry[key] = value.strip()
    assert found, f"no mapping at {address:#x}"
    return entry


def test_a_real_madvise_failure_part_way_gives_a_short_count(kernel):
    """mlocked pages make MADV_FREE fail: the count stops there, nothing half-tagged."""
    region = kernel.allocate(PS * 8)
    data = os.urandom(region.size)
    region.view[:] = data
    mlock(region.address + PS * 3, PS * 2)
    result = kernel.vrange(region, 0, region.size, VOLATILE)
    assert result.count == PS * 3
    assert region.view[PS * 3 :] == data[PS * 3 :]  # tags of unmarked pages restored
    with pytest.raises(OSError) as raised:
        kernel.vrange(region, PS * 3, PS, VOLATILE)
    assert raised.value.errno == errno.EINVAL
    assert region.view[PS * 3 : PS * 4] == data[PS * 3 : PS * 4]
    # Pages past the count stayed pinned: only the first three can be purged.
    assert kernel.reclaim(region.size) == PS * 3
    assert kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2)
    assert region.view[PS * 3 :] == data[PS * 3 :]


def test_pages_the_kernel_purged_on_its_own_are_found_without_using_memory(kernel):
    """A purge the backend did not see is detected, and re-pinning allocates nothing."""
    region = kernel.allocate(PS * 64)
    region.view[:] = b"\x77" * region.size
    kernel.vrange(region, 0, region.size, VOLATILE)
    # Real kernel reclaim behind the backend's back, from this CPU (whose
    # batches MADV_PAGEOUT drains), as memory pressure would do it.
    with on_one_cpu():
        clib.madvise(region.address + PS * 16, PS * 32, MADV_PAGEOUT)
    result = kernel.vrange(region, 0, region.size, NONVOLATILE)
    assert result.purged_pages == tuple(range(16, 48))
    assert region.view[PS * 16 : PS * 48] == bytes(PS * 32)
    assert region.view[: PS * 16] == b"\x77" * PS * 16
    # The purged pages read the shared zero page: 32 pages that cost no memory.
    assert int(smaps_entry(region.address)["Rss"].split()[0]) * 1024 == PS * 32


def test_reclaim_is_exact_when_pages_were_marked_on_another_cpu(kernel):
    """Pages parked in another CPU's LRU batch are still reclaimed."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    region = kernel.allocate(PS * 64)
    try:
        for _ in range(20):
            os.sched_setaffinity(0, {cpus[0]})
            kernel.vrange(region, 0, region.size, VOLATILE)
            os.sched_setaffinity(0, {cpus[1]})
            assert kernel.reclaim(region.size) == region.size
            assert len(kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages) == 64
    finally:
        os.sched_setaffinity(0, set(cpus))


def test_pages_written_on_one_cpu_and_marked_on_another_are_lazily_freed(kernel):
    """A page is written (faulted in) on one CPU and marked volatile on another.

    The kernel parks a newly faulted page in the faulting CPU's LRU batch, and
    MADV_FREE from another CPU skips a page it finds there: left as it was, it
    would never be purged (no swap). The backend drains every CPU's batches
    before it marks, so each page is volatile for real.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    try:
        for _ in range(5):
            region = kernel.allocate(PS * 16)
            os.sched_setaffinity(0, {cpus[0]})
            region.view[:] = b"\x55" * region.size
            os.sched_setaffinity(0, {cpus[1]})
            kernel.vrange(region, 0, region.size, VOLATILE)
            os.sched_setaffinity(0, set(cpus))
            assert kernel.reclaim(region.size) == region.size
            assert len(kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages) == 16
            kernel.release(region)
    finally:
        os.sched_setaffinity(0, set(cpus))


def test_without_madvise_collapse_cpus_are_visited_to_drain_them():
    """The drain that works on every kernel: visiting each CPU. Forced in a child
    (the way of draining is found once per process), and checked as above."""
    need_backend("kernel")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    script = textwrap.dedent(
        """
        import os
        from volcache.backends import NONVOLATILE, VOLATILE, get_backend
        kernel = get_backend("kernel")
        cpus = sorted(os.sched_getaffinity(0))
        region = kernel.allocate(kernel.page_size * 16)
        os.sched_setaffinity(0, {cpus[0]})
        region.view[:] = b"\\x55" * region.size
        os.sched_setaffinity(0, {cpus[1]})
        kernel.vrange(region, 0, region.size, VOLATILE)
        os.sched_setaffinity(0, set(cpus))
        print(kernel.stats()["lru_drain"], kernel.reclaim(region.size) // kernel.page_size,
              len(kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages))
        """
    )
    env = dict(os.environ, VOLCACHE_LRU_DRAIN="visit")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["visiting", "each", "CPU", "16", "16"]


def test_the_way_of_draining_does_not_depend_on_the_first_marking_threads_mask(kernel):
    """The first drain tries MADV_COLLAPSE on two CPUs the cpuset allows, even
    when the thread that marks first is pinned to one."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    script = textwrap.dedent(
        """
        import os
        from volcache.backends import VOLATILE, get_backend
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        kernel = get_backend("kernel")
        region = kernel.allocate(kernel.page_size)
        kernel.vrange(region, 0, region.size, VOLATILE)
        print(kernel.stats()["lru_drain"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == kernel.stats()["lru_drain"]


def test_a_page_written_while_volatile_is_reported_purged(kernel):
    """Writing to volatile memory is a bug; its page is reported, never trusted."""
    region = kernel.allocate(PS * 2)
    region.view[:] = b"\x11" * region.size
    kernel.vrange(region, 0, region.size, VOLATILE)
    region.view[PS : PS + 4] = b"oops"
    assert kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (1,)
    assert kernel.stats()["tag_mismatches"] == 1
    assert region.view[:PS] == b"\x11" * PS


def test_repinning_makes_no_system_call():
    """strace sees nothing between two markers around 50 re-pins of 256 pages."""
    need_backend("kernel")
    strace = shutil.which("strace")
    if strace is None:
        require("kernel", "strace is not installed (Debian package strace)")
    script = textwrap.dedent(
        """
        import os
        from volcache.backends import get_backend, VOLATILE, NONVOLATILE
        backend = get_backend("kernel")
        regions = [backend.allocate(256 * 4096) for _ in range(50)]
        for region in regions:
            region.view[:] = b"x" * region.size
            backend.vrange(region, 0, region.size, VOLATILE)
        os.getppid()
        for region in regions:
            assert backend.vrange(region, 0, region.size, NONVOLATILE).count == region.size
        os.getppid()
        """
    )
    run = subprocess.run(
        [strace, "-qq", "-e", "trace=all", sys.executable, "-c", script],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    markers = [i for i, line in enumerate(lines) if line.startswith("getppid(")]
    assert len(markers) == 2, run.stderr[-2000:]
    between = lines[markers[0] + 1 : markers[1]]
    assert between == [], between


def test_regions_refuse_huge_pages_unless_asked(kernel):
    """MADV_NOHUGEPAGE by default ('nh' in VmFlags); huge_pages=True leaves THP on."""
    region = kernel.allocate(4 << 20)
    assert "nh" in smaps_entry(region.address)["VmFlags"].split()
    with get_backend("kernel", huge_pages=True) as huge:
        region = huge.allocate(4 << 20)
        assert "nh" not in smaps_entry(region.address)["VmFlags"].split()
        region.view[:] = b"\x33" * region.size
        huge.vrange(region, 0, region.size, VOLATILE)
        assert huge.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
        assert region.view == b"\x33" * region.size


def test_stats_show_system_calls_and_lazyfree_memory(kernel, monkeypatch):
    """Marking makes one system call (MADV_FREE) between drains, remembered until
    the next; settling drains every CPU's LRU batches and lazily frees it again.
    LazyFree shows it; re-pinning takes it back without a system call."""
    monkeypatch.setattr(kernel_module, "_DRAIN_EVERY", math.inf)  # only the first marking drains
    warm = kernel.allocate(PS)
    kernel.vrange(warm, 0, PS, VOLATILE)
    region = kernel.allocate(PS * 256)
    region.view[:] = b"\x01" * region.size
    before = kernel.stats()
    kernel.vrange(region, 0, region.size, VOLATILE)
    marked = kernel.stats()
    assert marked["syscalls"] == before["syscalls"] + 1
    assert marked["undrained_marks"] == 1
    kernel.settle()
    settled = kernel.stats()
    drain = 1 if before["lru_drain"] == "MADV_COLLAPSE" else 2 + 2 * os.cpu_count()
    assert settled["syscalls"] == marked["syscalls"] + drain + 1
    assert settled["undrained_marks"] == 0
    # Up to one per-CPU batch (31 pages) is not counted as LazyFree until it drains.
    assert settled["lazyfree_bytes"] >= before["lazyfree_bytes"] + region.size - 31 * PS
    kernel.vrange(region, 0, region.size, NONVOLATILE)
    repinned = kernel.stats()
    assert repinned["syscalls"] == settled["syscalls"]
    assert repinned["lazyfree_bytes"] <= settled["lazyfree_bytes"] - region.size + 31 * PS
    assert marked["reclaim_advice"] == "MADV_PAGEOUT"


def test_markings_between_drains_are_lazily_freed_when_the_backend_settles(monkeypatch):
    """A marking that did not drain may leave pages waiting in another CPU's
    batch as ordinary memory; settle() drains and frees them again, so that
    the kernel's own reclaim (a MADV_PAGEOUT here) can drop every page."""
    need_backend("kernel")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(kernel_module, "_DRAIN_EVERY", math.inf)
    with get_backend("kernel") as kernel:
        warm = kernel.allocate(PS)
        kernel.vrange(warm, 0, PS, VOLATILE)  # the one drain
        region = kernel.allocate(PS * 16)
        try:
            os.sched_setaffinity(0, {cpus[0]})
            region.view[:] = b"\x66" * region.size
            os.sched_setaffinity(0, {cpus[1]})
            kernel.vrange(region, 0, region.size, VOLATILE)
            assert kernel.stats()["undrained_marks"] == 1
            kernel.vrange(region, 0, PS * 4, NONVOLATILE)  # pinned again: not to be freed
            kernel.settle()
            clib.madvise(region.address, region.size, MADV_PAGEOUT)  # drains this CPU's batch
        finally:
            os.sched_setaffinity(0, set(cpus))
        assert kernel.vrange(region, 0, region.size, NONVOLATILE).purged_pages == tuple(
            range(4, 16)
        )
        assert region.view[: PS * 4] == b"\x66" * PS * 4


def test_page_size_other_than_the_systems_is_refused():
    need_backend("kernel")
    with pytest.raises(ValueError, match="page_size"):
        get_backend("kernel", page_size=PS * 4)


def _probe_in_child(prelude: str) -> dict:
    script = prelude + textwrap.dedent(
        """
        import json
        from volcache.backends import available_backends, get_backend
        with get_backend("auto") as chosen:
            print(json.dumps({"available": available_backends(), "auto": chosen.name}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_without_the_native_helper_the_kernel_backend_says_why_and_sim_works():
    """A missing helper makes kernel unavailable with a reason; auto still works."""
    found = _probe_in_child("import sys; sys.modules['volcache.backends._native'] = None\n")
    assert "native helper (volcache.backends._native) was not built" in found["available"]["kernel"]
    assert "reinstall" in found["available"]["kernel"]
    assert found["available"]["sim"] is None and found["auto"] != "kernel"


def test_a_stale_native_helper_is_refused():
    """A helper built from other declarations is refused, not used."""
    prelude = textwrap.dedent(
        """
        import sys, types
        import volcache.backends._native as real
        stale = types.SimpleNamespace(ffi=real.ffi, lib=types.SimpleNamespace(VC_NATIVE_VERSION=0))
        sys.modules['volcache.backends._native'] = stale
        """
    )
    found = _probe_in_child(prelude)
    assert "stale" in found["available"]["kernel"]


def test_kernel_is_the_preferred_backend_here():
    need_backend("kernel")
    assert next(iter(available_backends())) == "kernel"
    with get_backend() as chosen:
        assert chosen.name == os.environ.get("VOLCACHE_BACKEND", "kernel")


def test_real_pressure_in_a_memory_cgroup():
    """Under a cgroup limit and a memory hog: not killed, purges real, every byte right.

    The child re-pins 64 MiB after each of 5 forced reclaims, then 20 cycles
    with the hog running concurrently, and checks every page.
    """
    need_backend("kernel")
    require("kernel", cgroups.unavailable_reason())
    with cgroups.MemoryCgroup(128 << 20, name="volcache-test") as group:
        child = [sys.executable, str(HERE / "pressure_child.py"), "kernel", "64", "80", "5", "20"]
        run = subprocess.run(group.command(child), capture_output=True, text=True, timeout=300)
        oom_kills = group.oom_kills()
        path = group.path
    assert not path.exists()
    assert run.returncode == 0, f"child exit {run.returncode}: {run.stderr[-2000:]}"
    assert oom_kills == 0
    counts = json.loads(run.stdout)
    assert counts["cycles"] == 25
    assert counts["pages_checked"] == 25 * 64 * 256
    assert counts["wrong_intact"] == 0
    assert counts["purged_not_gone"] == 0
    assert counts["purged"] > 0 and counts["intact"] > 0


def test_real_pressure_drops_pages_written_on_one_cpu_and_marked_on_another():
    """The kernel itself, under a cgroup's limit, can drop volatile pages whose
    marking met them in another CPU's LRU batch. Without the drain before each
    marking about half of them stayed ordinary memory for good, and the child
    was killed for its hog (80 MiB of hog was enough for that; 88 here)."""
    need_backend("kernel")
    require("kernel", cgroups.unavailable_reason())
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    with cgroups.MemoryCgroup(128 << 20, name="volcache-test") as group:
        child = [sys.executable, str(HERE / "cpu_hop_child.py"), "64", "88"]
        run = subprocess.run(group.command(child), capture_output=True, text=True, timeout=300)
        oom_kills = group.oom_kills()
    assert run.returncode == 0 and oom_kills == 0, f"child exit {run.returncode}: {run.stderr}"
    counts = json.loads(run.stdout)
    assert counts["wrong"] == 0
    assert counts["purged"] >= counts["pages"] // 2  # the hog needed more than half of them


def test_reclaim_moves_past_pages_the_kernel_will_not_page_out(kernel):
    """Review finding 9: pages shared with a forked child are skipped by MADV_PAGEOUT.

    They are made young, and reclaim() reaches the private pages behind them.
    """
    ps = kernel.page_size
    shared = kernel.allocate(64 * ps)
    shared.view[:] = b"s" * shared.size
    kernel.vrange(shared, 0, shared.size, VOLATILE)  # the oldest volatile pages
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a pre-forked worker: holds the pages shared until told to go
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        private = kernel.allocate(64 * ps)
        private.view[:] = b"p" * private.size
        kernel.vrange(private, 0, private.size, VOLATILE)
        purged = [kernel.reclaim(16 * ps) // ps for _ in range(4)]
        assert purged == [16, 16, 16, 16]
        result = kernel.vrange(private, 0, private.size, NONVOLATILE)
        assert len(result.purged_pages) == 64
        assert kernel.vrange(shared, 0, shared.size, NONVOLATILE).purged_pages == ()
        assert shared.view == b"s" * shared.size
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
