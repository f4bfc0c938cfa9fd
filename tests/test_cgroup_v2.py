"""The cgroup v2 paths, against a fake v2 tree (files this test writes).

This machine mounts the memory controller on cgroup v1, so these paths never
meet a real v2 kernel here. What a tree of plain files can check is checked:
which group's limit counts (``memory.max``, a lower ``memory.high``, nested
groups, "max"), the usage read from ``memory.current``, the events file
opened and read, and a bench group's files written and read. What it cannot
(the kernel's wake-ups on ``memory.events``, charging, the OOM killer) is
said in the README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from volcache import cgroups
from volcache.backends import limits
from volcache.backends.pressure import PressureUnavailable

MIB = 1 << 20


def group(root: Path, path: str, **files: str) -> Path:
    """A fake v2 group: a directory with the given control files."""
    where = root / path
    where.mkdir(parents=True, exist_ok=True)
    defaults = {"memory.current": "0", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"}
    for name, text in {**defaults, **files}.items():
        (where / name.replace("_", ".", 1)).write_text(text)
    return where


def test_a_groups_limit_is_its_memory_max_or_a_lower_memory_high(tmp_path):
    plain = group(tmp_path, "a", memory_max=str(512 * MIB), memory_high="max")
    assert limits.cgroup_limit(plain).limit == 512 * MIB
    high = group(tmp_path, "b", memory_max=str(512 * MIB), memory_high=str(384 * MIB))
    limit = limits.cgroup_limit(high)
    assert isinstance(limit, limits.CgroupV2Limit) and limit.limit == 384 * MIB
    assert limit.kind == "cgroup v2 memory limit" and str(high) in limit.describe()
    limit.close()
    with pytest.raises(PressureUnavailable, match=r"no memory\.max or memory\.high"):
        limits.cgroup_limit(group(tmp_path, "c", memory_max="max", memory_high="max"))


def test_usage_is_memory_current_and_the_watermark_an_eighth_below(tmp_path):
    where = group(tmp_path, "g", memory_max=str(256 * MIB), memory_current=str(100 * MIB))
    limit = limits.cgroup_limit(where)
    try:
        assert limit.usage() == 100 * MIB and limit.high == 224 * MIB
        assert limit.excess() == 100 * MIB - 224 * MIB
        (where / "memory.current").write_text(str(230 * MIB))
        assert limit.excess() == 6 * MIB and limit.poll_ms() == limits.NEAR_POLL_MS
        limit.consume()  # reads memory.events, as a wake-up does
    finally:
        limit.close()


def test_the_tightest_group_up_the_tree_counts(tmp_path, monkeypatch):
    """A process in /outer/inner, where /outer has the smaller limit: the outer's."""
    group(tmp_path, "outer", memory_max=str(300 * MIB))
    group(tmp_path, "outer/inner", memory_max="max", memory_high=str(900 * MIB))
    monkeypatch.setattr(limits, "CGROUP_V1_MEMORY", tmp_path / "no v1 here")
    monkeypatch.setattr(limits, "CGROUP_V2_ROOTS", (tmp_path,))
    monkeypatch.setattr(limits, "_own_cgroup_paths", lambda: (None, "/outer/inner"))
    kind, where, limit = limits._where_bounded()
    assert (kind, where, limit) == ("v2", tmp_path / "outer", 300 * MIB)
    assert limits.process_limit() == 300 * MIB
    found = limits.find_limit()
    try:
        assert isinstance(found, limits.CgroupV2Limit) and found.where == tmp_path / "outer"
    finally:
        found.close()


def test_a_v2_tree_without_a_finite_limit_is_the_machine(tmp_path, monkeypatch):
    group(tmp_path, "free", memory_max="max")
    monkeypatch.setattr(limits, "CGROUP_V1_MEMORY", tmp_path / "no v1 here")
    monkeypatch.setattr(limits, "CGROUP_V2_ROOTS", (tmp_path,))
    monkeypatch.setattr(limits, "_own_cgroup_paths", lambda: (None, "/free"))
    assert limits._where_bounded()[0] == "machine"


def test_a_bench_group_on_v2_writes_memory_max_and_reads_its_counters(tmp_path, monkeypatch):
    (tmp_path / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    monkeypatch.setattr(cgroups, "V2_ROOTS", (tmp_path,))
    assert cgroups.memory_controller() == ("v2", tmp_path)
    with cgroups.MemoryCgroup(64 * MIB, name="fake") as made:
        assert made.version == "v2" and made.path.parent == tmp_path
        assert (made.path / "memory.max").read_text() == str(64 * MIB)
        assert (made.path / "memory.swap.max").read_text() == "0"
        (made.path / "memory.current").write_text(str(10 * MIB))
        (made.path / "memory.peak").write_text(str(20 * MIB))
        (made.path / "memory.events").write_text("low 0\nmax 3\noom 1\noom_kill 2\n")
        assert made.usage() == 10 * MIB and made.peak() == 20 * MIB and made.oom_kills() == 2
        assert made.command(["true"])[3] == str(made.path / "cgroup.procs")
        for name in ("memory.max", "memory.swap.max", "memory.current", "memory.peak",
                     "memory.events"):  # fmt: skip
            (made.path / name).unlink()  # a real group's files go with its rmdir
    assert not made.path.exists()
