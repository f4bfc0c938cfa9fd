"""The uffd backend beyond the contract, against a real userfaultfd.

Touches of purged pages caught (also from a Python thread, also by the
kernel), strict mode, the byte budget, each pressure source under real
pressure in a memory cgroup, and clean shutdown on close, at exit and after
fork().
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from volcache import cgroups
from volcache.backends import NONVOLATILE, VOLATILE, BackendUnavailable, get_backend

from .conftest import need_backend, require, wait_child

PS = os.sysconf("SC_PAGE_SIZE")
HERE = Path(__file__).resolve().parent


@pytest.fixture
def uffd():
    need_backend("uffd")
    with get_backend("uffd") as backend:
        yield backend


def purged_region(backend, pages: int = 4, fill: bytes = b"\x11"):
    """A region whose pages were all filled, marked volatile and purged."""
    region = backend.allocate(pages * PS)
    region.view[:] = fill * region.size
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.reclaim(region.size) == region.size
    return region


def test_a_touch_of_a_purged_page_is_caught_counted_and_reads_zeros(uffd):
    region = purged_region(uffd)
    assert uffd.touches(region) == 0
    assert region.view[PS : PS + 8] == bytes(8)
    assert uffd.touches(region) == 1 and uffd.stats()["caught_faults"] == 1
    assert region.view[PS + 8 : PS + 16] == bytes(8)  # the same page: resolved, no new fault
    assert uffd.touches(region) == 1


def test_a_touch_from_a_python_thread_does_not_hang(uffd):
    """The faulting thread holds the GIL; the native handler does not need it."""
    region = purged_region(uffd)
    seen = []
    reader = threading.Thread(target=lambda: seen.append(bytes(region.view[: 2 * PS])))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert seen == [bytes(2 * PS)] and uffd.touches(region) == 2


def test_a_kernel_read_of_a_purged_page_is_caught_too(uffd):
    if uffd.stats()["user_mode_only"]:
        pytest.skip("UFFD_USER_MODE_ONLY: kernel reads of purged pages fail with EFAULT")
    region = purged_region(uffd)
    read_end, write_end = os.pipe()
    try:
        assert os.write(write_end, region.view[:PS]) == PS  # copy_from_user faults
        assert os.read(read_end, PS) == bytes(PS)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert uffd.touches(region) == 1


def test_repinned_purged_pages_are_usable_without_faults(uffd):
    region = purged_region(uffd)
    assert uffd.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)
    region.view[:] = b"\x22" * region.size
    assert region.view == b"\x22" * region.size and uffd.touches(region) == 0


def test_strict_mode_makes_the_next_call_raise_naming_region_and_page():
    need_backend("uffd")
    from volcache.backends.uffd import PurgedAccessError

    with get_backend("uffd", strict=True) as backend:
        other = backend.allocate(PS)
        region = purged_region(backend)
        assert region.view[2 * PS] == 0
        with pytest.raises(PurgedAccessError, match=r"page 2 of <Region uffd") as raised:
            backend.vrange(other, 0, PS, VOLATILE)
        assert raised.value.region is region and raised.value.page == 2
        assert backend.vrange(other, 0, PS, VOLATILE).count == PS  # reported once
        assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)


def test_the_budget_keeps_resident_bytes_under_it_oldest_first():
    need_backend("uffd")
    with get_backend("uffd", budget=8 * PS) as backend:
        regions = []
        for fill in (b"a", b"b", b"c"):
            region = backend.allocate(4 * PS)
            region.view[:] = fill * region.size
            backend.vrange(region, 0, region.size, VOLATILE)
            regions.append(region)
            assert backend.resident_bytes() <= 8 * PS
        # 12 pages, budget 8: the 4 oldest volatile pages (region a) went.
        a, b, c = regions
        assert backend.vrange(b, 0, b.size, NONVOLATILE).purged_pages == ()
        assert backend.vrange(a, 0, a.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)
        # Re-pinning a made it resident again: c, the only volatile region, paid.
        assert backend.resident_bytes() <= 8 * PS
        assert backend.vrange(c, 0, c.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)
        assert b.view == b"b" * b.size
        assert backend.stats()["budget_purged_bytes"] == 8 * PS


def _pressure_run(source: str, use_pressure_file: bool, tmp_path: Path) -> tuple[dict, int, str]:
    """A uffd child with 64 MiB volatile and a thrashing hog, in one memory cgroup."""
    hog_file = tmp_path / "thrash.bin"
    with open(hog_file, "wb") as f:
        f.truncate(192 << 20)
    group = cgroups.MemoryCgroup(160 << 20, name="volcache-test", pressure_group=use_pressure_file)
    with group:
        path = str(group.pressure_file) if use_pressure_file else "-"
        child_argv = [sys.executable, str(HERE / "uffd_pressure_child.py"), source, path]
        child_argv += ["64", "30"]  # MiB of volatile regions, seconds to wait for the purger
        child = subprocess.Popen(group.command(child_argv), stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            hog_argv = [sys.executable, str(HERE / "thrash_hog.py"), str(hog_file), "40", "8"]
            hog = subprocess.Popen(group.command(hog_argv), stdout=subprocess.PIPE, text=True)
            out, _ = child.communicate(timeout=120)
            hog_out, _ = hog.communicate(timeout=120)
            assert hog.returncode == 0, hog_out
        finally:
            child.kill()
        oom_kills = group.oom_kills()
    assert child.returncode == 0, out
    return json.loads(out), oom_kills, hog_out


def test_cgroup_v1_pressure_levels_make_the_purger_give_memory_back(tmp_path):
    need_backend("uffd")
    require("uffd", cgroups.unavailable_reason())
    if cgroups.memory_controller()[0] != "v1":
        pytest.skip("the memory cgroup here is v2: no memory.pressure_level")
    result, oom_kills, _ = _pressure_run("pressure_level", False, tmp_path)
    stats = result["stats"]
    assert oom_kills == 0 and result["wrong"] == 0
    assert stats["pressure_events"] > 0 and stats["pressure_purged_bytes"] > 0
    assert stats["pressure_reaction_ms"] is not None


def test_psi_of_the_cgroup_makes_the_purger_give_memory_back(tmp_path):
    """The cgroup's memory.pressure fires (a v2 group, even where memory is v1)."""
    need_backend("uffd")
    require("uffd", cgroups.unavailable_reason())
    result, oom_kills, _ = _pressure_run("psi", True, tmp_path)
    stats = result["stats"]
    assert oom_kills == 0 and result["wrong"] == 0
    assert stats["pressure_events"] > 0 and stats["pressure_purged_bytes"] > 0


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"pressure": "psi", "psi_trigger": "some 150000 1000000"}, "multiple of 2 s"),
        ({"pressure": "psi", "pressure_path": "/nonexistent/memory.pressure"}, "does not exist"),
        ({"pressure": "pressure_level", "pressure_path": "/tmp"}, "memory.pressure_level"),
    ],
)
def test_a_pressure_source_that_cannot_work_says_why(options, says):
    need_backend("uffd")
    threads = threading.active_count()
    fds = _open_files()
    with pytest.raises(BackendUnavailable, match=says):
        get_backend("uffd", **options)
    # Nothing the call opened is left open. (Not a count: other threads of the
    # process, earlier tests' idle work, open and close files meanwhile.)
    assert threading.active_count() == threads and not _open_files() - fds


def _open_files() -> set[tuple[str, str]]:
    """The process's descriptors, each with what it refers to."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        # Closed meanwhile: the listing's own descriptor, among others.
        with contextlib.suppress(OSError):
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return found


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _threads_settle_to(count: int, seconds: float = 5.0) -> int:
    """The thread count once it is ``count``, or after ``seconds``: a joined thread
    has finished its work but may still be leaving /proc/self/task for a moment."""
    deadline = time.monotonic() + seconds
    while _native_threads() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return _native_threads()


def test_close_joins_the_threads_closes_descriptors_and_unmaps():
    need_backend("uffd")
    threads, fds = _native_threads(), _open_files()
    backend = get_backend("uffd", pressure="psi")
    region = purged_region(backend)
    assert _native_threads() == threads + 2  # the fault handler and the pressure watcher
    start = f"{region.address:x}-"
    backend.close()
    assert _threads_settle_to(threads) == threads and not _open_files() - fds
    assert region.released
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert not any(line.startswith(start) for line in maps)


def test_exiting_without_close_is_clean():
    """atexit stops the handler and pressure threads; the interpreter exits at once."""
    need_backend("uffd")
    script = textwrap.dedent(
        """
        from volcache.backends import get_backend, VOLATILE
        backend = get_backend("uffd", pressure="psi")
        region = backend.allocate(4 * 4096)
        backend.vrange(region, 0, region.size, VOLATILE)
        backend.reclaim(region.size)
        assert region.view[0] == 0  # a caught touch, left behind
        print(backend.stats()["caught_faults"])
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert run.stdout.strip() == "1"


def test_after_fork_the_child_neither_hangs_nor_uses_the_backend(uffd):
    region = purged_region(uffd)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        status = 1
        try:
            zeros = region.view[:8] == bytes(8)  # no handler here: the kernel maps zeros
            try:
                uffd.vrange(region, 0, PS, NONVOLATILE)
            except RuntimeError as exc:
                status = 0 if zeros and "fork" in str(exc) else 2
            uffd.close()
        finally:
            os._exit(status)
    assert wait_child(pid) == 0  # None: the child hung
    assert region.view[PS] == 0 and uffd.touches(region) == 1  # the parent still catches


def test_an_unprivileged_process_gets_user_mode_only_faults():
    """As nobody with vm.unprivileged_userfaultfd=0: UFFD_USER_MODE_ONLY, kernel reads EFAULT."""
    need_backend("uffd")
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        require("uffd", "needs root and setpriv (util-linux) to run a process as nobody")
    script = textwrap.dedent(
        """
        import errno, json, os
        from volcache.backends import available_backends, get_backend, VOLATILE
        backend = get_backend("uffd")
        region = backend.allocate(2 * 4096)
        backend.vrange(region, 0, region.size, VOLATILE)
        backend.reclaim(region.size)
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, region.view[:4096])
            kernel = "ok"
        except OSError as exc:
            kernel = errno.errorcode[exc.errno]
        user = region.view[4096] == 0
        stats = backend.stats()
        caught = stats["caught_faults"]
        print(json.dumps([os.getuid(), stats["user_mode_only"], kernel, user, caught]))
        """
    )
    # CAP_DAC_READ_SEARCH only lets nobody reach the interpreter under /root.
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
            sys.executable, "-c", script]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    uid, user_mode_only, kernel, user, caught = json.loads(run.stdout)
    if not user_mode_only:
        pytest.skip("userfaultfd is open to unprivileged users (vm.unprivileged_userfaultfd=1)")
    assert (uid, kernel, user, caught) == (65534, "EFAULT", True, 1)


def test_the_reasons_say_what_to_do():
    from volcache.backends.uffd import _reason_for

    assert "vm.unprivileged_userfaultfd=1" in _reason_for(errno.EPERM)
    assert "CAP_SYS_PTRACE" in _reason_for(errno.EPERM)
    assert "CONFIG_USERFAULTFD" in _reason_for(errno.ENOSYS)
