"""The uffd purger against the memory limit: under a real memory cgroup, before the OOM killer.

Each scenario runs a uffd-backed cache in a child process inside a fresh
memory cgroup. With the purger it must never be killed, nor let the kernel
kill a competitor, and every value it returns must be right; without it
(``pressure=None``) the same scenario meets the OOM killer, which shows that
the scenario reaches the limit for certain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from volcache import cgroups
from volcache.backends import BackendUnavailable, get_backend
from volcache.backends.limits import (
    CgroupV1Limit,
    CgroupV2Limit,
    MachineLimit,
    cgroup_limit,
    default_headroom,
    find_limit,
)

from .conftest import need_backend, require

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
LIMIT = 192 * MIB


def _need_cgroup() -> None:
    need_backend("uffd")
    require("uffd", cgroups.unavailable_reason())


def _run(mode: str, fill_mib: int, seconds: float, hog_mib: int = 0, rate: float | None = None):
    """(the child's JSON or None if it was killed, its exit code, OOM kills, hog exit code)."""
    with cgroups.MemoryCgroup(LIMIT, name="volcache-test") as group:
        argv = [sys.executable, str(HERE / "uffd_limit_child.py"), mode, str(fill_mib)]
        child = subprocess.Popen(
            group.command([*argv, str(seconds)]), stdout=subprocess.PIPE, text=True
        )
        hog = None
        try:
            ready = child.stdout.readline().strip()
            if ready == "ready" and hog_mib:
                hog_argv = [sys.executable, str(HERE / "grow_hog.py"), str(hog_mib), "1"]
                if rate is not None:
                    hog_argv.append(str(rate))
                hog = subprocess.Popen(group.command(hog_argv), stdout=subprocess.PIPE, text=True)
            out, _ = child.communicate(timeout=120)
            if hog is not None:
                hog.communicate(timeout=120)
        finally:
            child.kill()
            if hog is not None:
                hog.kill()
        oom_kills = group.oom_kills()
    result = json.loads(out) if child.returncode == 0 else None
    return result, child.returncode, oom_kills, None if hog is None else hog.returncode


def test_the_limit_is_the_cgroups_where_the_process_runs():
    """With no options, the backend follows the memory cgroup it runs in, not the machine."""
    _need_cgroup()
    code = (
        "from volcache.backends import get_backend; import json;"
        "s = get_backend('uffd').stats();"
        "print(json.dumps([s['pressure'], s['limit'], s['limit_bytes'], s['headroom_bytes']]))"
    )
    with cgroups.MemoryCgroup(LIMIT, name="volcache-test") as group:
        run = subprocess.run(
            group.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        pressure, where, limit, headroom = json.loads(run.stdout)
        assert pressure == "limit" and str(group.path) in where
        assert limit == LIMIT and headroom == default_headroom(LIMIT) == LIMIT // 8


def test_a_cache_larger_than_the_limit_purges_before_its_own_allocations():
    """Storing 1.5x the limit: each allocation that would cross the watermark purges first.

    The purger's thread is kept out (the child holds the backend's lock), so
    only the synchronous path acts; without any purger the same fill is killed.
    """
    _need_cgroup()
    result, code, oom_kills, _ = _run("sync", fill_mib=288, seconds=0.5)
    assert code == 0 and oom_kills == 0, (code, oom_kills)
    stats = result["stats"]
    assert stats["limit_purged_bytes"] >= 288 * MIB - LIMIT
    assert result["wrong"] == 0 and result["checked"] > 0

    _, code, oom_kills, _ = _run("none", fill_mib=288, seconds=0.5)
    assert code == -9 and oom_kills >= 1  # the control: the scenario does reach the limit


@pytest.mark.parametrize("rate", [None, 200.0], ids=["as-fast-as-it-can", "200MiB/s"])
def test_a_fast_competitor_beside_a_uffd_cache_is_never_killed(rate):
    """A cache holding most of the limit, then a competitor growing to 60 % of it.

    The purger gives the cache's volatile memory back before the group reaches
    its limit: nobody is killed, and every value read is the stored one or a
    regenerated one.
    """
    _need_cgroup()
    hog_mib = int(LIMIT * 0.6) // MIB
    result, code, oom_kills, hog_code = _run("limit", 160, 3.0, hog_mib=hog_mib, rate=rate)
    assert (code, hog_code, oom_kills) == (0, 0, 0)
    assert result["wrong"] == 0 and result["checked"] > 100
    assert result["stats"]["limit_purged_bytes"] > 0 and result["regenerated"] > 0
    assert result["stats"]["pressure_errors"] == 0


def test_without_the_purger_the_same_competitor_meets_the_oom_killer():
    """The control for the test above: the scenario is one that reaches the limit."""
    _need_cgroup()
    hog_mib = int(LIMIT * 0.6) // MIB
    _, code, oom_kills, hog_code = _run("none", 160, 3.0, hog_mib=hog_mib)
    assert oom_kills >= 1 and -9 in (code, hog_code)


def test_each_limit_source_that_can_run_here_runs_and_the_others_say_why():
    """v1 thresholds and the machine work here; a v2 memory group raises with the reason."""
    _need_cgroup()
    machine = MachineLimit()
    try:
        assert machine.limit > 0 and 0 < machine.usage() < machine.limit
        assert machine.headroom == default_headroom(machine.limit)
    finally:
        machine.close()
    version, _ = cgroups.memory_controller()
    with cgroups.MemoryCgroup(LIMIT, name="volcache-test") as group:
        source = cgroup_limit(group.path, headroom=16 * MIB)
        try:
            assert isinstance(source, CgroupV1Limit if version == "v1" else CgroupV2Limit)
            assert (source.limit, source.high) == (LIMIT, LIMIT - 16 * MIB)
            assert source.usage() == group.usage()
        finally:
            source.close()
    if version == "v1":
        # The v2 hierarchy here has no memory controller: its groups have no memory files.
        v2 = Path("/sys/fs/cgroup/unified")
        with pytest.raises(BackendUnavailable, match="not a memory cgroup"):
            cgroup_limit(v2)
    with pytest.raises(BackendUnavailable, match="not a memory cgroup"):
        get_backend("uffd", pressure_path="/tmp")
    with pytest.raises(ValueError, match="headroom"):
        get_backend("uffd", headroom=-1)


def test_a_v1_threshold_crossing_wakes_the_watcher(tmp_path):
    """The eventfd fires when the group's usage crosses a threshold (both ways)."""
    _need_cgroup()
    if cgroups.memory_controller()[0] != "v1":
        pytest.skip("cgroup v2 here: no usage thresholds, memory.current is polled")
    with cgroups.MemoryCgroup(LIMIT, name="volcache-test") as group:
        source = cgroup_limit(group.path, headroom=32 * MIB)
        try:
            low = source.thresholds()[0]
            grow = subprocess.Popen(
                group.command([sys.executable, str(HERE / "grow_hog.py"), str(low // MIB + 8), "0"])
            )
            grow.wait(timeout=60)
            assert grow.returncode == 0
            assert os.eventfd_read(source.fileno()) >= 1
        finally:
            source.close()


def test_find_limit_outside_any_limited_group_is_the_machine_or_the_tightest_group():
    """This test process: whatever limits it, find_limit names it (or the machine)."""
    source, machine = find_limit(), MachineLimit()
    try:
        assert source.limit <= machine.limit
        assert 0 < source.headroom < source.limit and source.usage() > 0
    finally:
        source.close()
        machine.close()
