"""The uffd backend: what the correctness review found (findings 3, 4, 5, 10, 13, 14).

Each test stands for one of the review's reproducers: a purge that fails after
a call committed, fork with a backend call under way, backends and caches
dropped without close, strict-mode reports of several regions, the handler
thread's signal mask, and a pressure thread that meets an exception.
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

from volcache import VolatileCache
from volcache.backends import NONVOLATILE, VOLATILE, get_backend
from volcache.backends.pressure import ManualSource, PressureWatcher
from volcache.backends.uffd import PurgedAccessError

from .conftest import held_by_another_thread, need_backend, wait_child

LIBC = ctypes.CDLL(None, use_errno=True)
PS = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def _uffd():
    need_backend("uffd")


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _lock(address: int, length: int, lock: bool = True) -> None:
    call = LIBC.mlock if lock else LIBC.munlock
    assert call(ctypes.c_void_p(address), ctypes.c_size_t(length)) == 0


def test_a_purge_that_madvise_refuses_never_undoes_a_committed_call():
    """Finding 3: MADV_DONTNEED refused (mlocked pages) while keeping the budget.

    The call that asked for the purge still succeeds and reports what it did;
    the refused pages are counted and skipped, and nothing reads as zeros.
    """
    with get_backend("uffd", budget=2 * PS, pressure=None) as backend:
        locked = backend.allocate(4 * PS)
        locked.view[:] = b"L" * locked.size
        _lock(locked.address, locked.size)
        try:
            backend.vrange(locked, 0, locked.size, VOLATILE)  # over budget: purge refused
            assert backend.stats()["purge_errors"] >= 1
            other = backend.allocate(2 * PS)  # commits, and the next purge moves on
            other.view[:] = b"O" * other.size
            assert backend.vrange(other, 0, other.size, VOLATILE).count == other.size
            result = backend.vrange(locked, 0, locked.size, NONVOLATILE)
            assert result.purged_pages == () and locked.view == b"L" * locked.size
        finally:
            _lock(locked.address, locked.size, lock=False)


def test_a_cache_on_mlocked_memory_returns_no_zeros():
    """The review's reproducer through the cache: a refused purge, then a read."""
    backend = get_backend("uffd", budget=2 * PS, pressure=None)
    cache = VolatileCache(backend=backend, hot_bytes=0, mark_batch=1 << 20, slab_bytes=8 * PS)
    small = b"A" * PS
    cache["a"] = small
    cache.maintain()
    big = b"B" * (16 * PS)
    cache["big"] = big
    region = next(r for r in cache._entries.store.slabs.regions() if r.pages >= 16)
    _lock(region.address, region.size)
    try:
        cache.maintain()
        assert cache.get("a") in (small, None)  # intact, or a miss: never zeros
    finally:
        _lock(region.address, region.size, lock=False)
    assert cache.get("a") in (small, None) and cache.get("big") in (big, None)
    cache.close()
    backend.close()


def test_fork_while_a_thread_is_inside_a_backend_call_leaves_no_hang():
    """Finding 4: the child gets fresh locks; its calls raise, its exit does not hang."""
    script = textwrap.dedent(
        """
        import os, sys, threading, time, warnings
        from volcache.backends import NONVOLATILE, VOLATILE, get_backend
        warnings.simplefilter("ignore", DeprecationWarning)
        b = get_backend("uffd")
        region = b.allocate(64 * 4096)
        stop = False
        def busy():
            while not stop:
                b.vrange(region, 0, region.size, VOLATILE)
                b.vrange(region, 0, region.size, NONVOLATILE)
        t = threading.Thread(target=busy)
        t.start()
        hung = bad = 0
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                try:
                    b.touches(region)
                except RuntimeError:
                    sys.exit(0)  # atexit closes the backend: it must not hang
                sys.exit(3)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    bad += os.waitstatus_to_exitcode(status) != 0
                    break
                time.sleep(0.01)
            else:
                hung += 1
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        stop = True
        t.join()
        b.close()
        print(hung, bad)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=200
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "0"]


def test_a_cache_locked_by_another_thread_at_fork_works_in_the_child():
    """The cache's lock, held by a thread that does not exist in the child, is replaced."""
    cache = VolatileCache(backend="sim")
    cache["k"] = b"value"
    with held_by_another_thread(cache._lock):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                cache["j"] = b"other"
                status = 0 if cache["k"] == b"value" and cache["j"] == b"other" else 2
            finally:
                os._exit(status)
    assert wait_child(pid) == 0
    cache.close()


def test_backends_and_caches_dropped_without_close_leave_nothing_behind():
    """Finding 5: threads, descriptors and memory go with the last reference."""
    gc.collect()
    tasks, fds = _tasks(), _fds()
    refs = []
    for _ in range(4):
        cache = VolatileCache(backend="uffd", backend_options={"pressure": "psi"})
        cache["v"] = b"x" * (8 << 20)
        refs.append(weakref.ref(cache._backend))
        del cache
    for _ in range(3):
        with pytest.raises(ValueError, match="slab_bytes"):
            VolatileCache(backend="uffd", slab_bytes=1)
    gc.collect()
    assert all(ref() is None for ref in refs)  # no thread keeps a backend alive
    deadline = time.monotonic() + 10
    while _tasks() - tasks and time.monotonic() < deadline:
        time.sleep(0.01)  # joined by the finalizer; the kernel reaps the task a moment later
    assert not _tasks() - tasks and _fds() <= fds  # nothing new left open


def test_strict_mode_reports_touches_in_every_region():
    """Finding 10: one report a call, region after region, none lost."""
    with get_backend("uffd", strict=True, pressure=None) as backend:
        first, second = backend.allocate(PS), backend.allocate(PS)
        for region in (first, second):
            backend.vrange(region, 0, PS, VOLATILE)
        backend.reclaim(2 * PS)
        assert first.view[0] == 0 and second.view[0] == 0  # both touches caught
        reported = []
        for _ in range(4):
            try:
                backend.reclaim(0)
            except PurgedAccessError as exc:
                reported.append(exc.region.ident)
        assert reported == [first.ident, second.ident]


def test_the_fault_handler_thread_blocks_every_signal():
    """Finding 13: process-directed signals go to the interpreter's threads, not the handler."""
    before = _tasks()
    with get_backend("uffd", pressure=None):
        (handler,) = _tasks() - before
        status = Path(f"/proc/self/task/{handler}/status").read_text()
        blocked = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk")), 16
        )
    # Every standard signal but the two that cannot be blocked (SIGKILL, SIGSTOP).
    assert [s for s in range(1, 32) if not blocked >> (s - 1) & 1] == [9, 19]


def test_the_pressure_thread_survives_an_exception_and_counts_it():
    """Finding 14: a purge that raised once does not end the purges after it."""
    calls = []
    done = threading.Event()

    def on_pressure(woke):
        calls.append(woke)
        if len(calls) == 1:
            raise OSError(22, "madvise: Invalid argument")
        done.set()

    source = ManualSource()
    watcher = PressureWatcher(source, on_pressure)
    try:
        source.fire()
        deadline = time.monotonic() + 10
        while watcher.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        source.fire()
        assert done.wait(10) and watcher.alive
        assert watcher.errors == 1 and "Invalid argument" in watcher.last_error
    finally:
        watcher.stop()


def test_a_followed_group_that_goes_away_does_not_fail_allocations(tmp_path):
    """The limit's files vanish with its cgroup: allocations go on, unguarded."""
    from volcache import cgroups

    from .conftest import require

    require("uffd", cgroups.unavailable_reason())
    group = cgroups.MemoryCgroup(256 << 20, name="volcache-test")
    with group:
        backend = get_backend("uffd", pressure_path=str(group.path))
    try:  # the group is removed now
        region = backend.allocate(4 * PS)
        region.view[:] = b"z" * region.size
        assert backend.vrange(region, 0, region.size, VOLATILE).count == region.size
    finally:
        backend.close()
