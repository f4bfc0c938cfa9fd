"""The volcache command: info, bench (real and simulated), and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from volcache import cgroups

from .conftest import need_backend, require


def volcache(*args: str, timeout: float = 300, prefix: list[str] | None = None):
    """Run the command; the result has ``pid`` too (its groups are named after it)."""
    with subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "volcache", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    run = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    run.pid = process.pid
    return run


def leftover_groups(pid: int) -> list[str]:
    """Memory cgroups that the command with this pid made and did not remove."""
    root = cgroups.memory_controller()[1]
    return [p for p in os.listdir(root) if p.startswith(f"volcache-bench-{pid}-")]


def test_info_lists_backends_and_what_the_machine_offers():
    run = volcache("info")
    assert run.returncode == 0, run.stderr
    for word in ("volcache 0.", "kernel", "uffd", "sim", "MADV_FREE", "MADV_PAGEOUT",
                 "userfaultfd", "memory cgroup", "PSI"):  # fmt: skip
        assert word in run.stdout
    assert volcache("--version").stdout.startswith("volcache ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--limit", "lots"], "is not a size"),
        (["--limit", "10M"], "too small"),
        (["--backend", "nosuch"], "no backend 'nosuch'"),
        (["--duration", "0"], "must be positive"),
        (["--fill", "-1"], "--fill must be within"),
        (["--scenario", "shared", "--workers", "0"], "--workers must be within"),
    ],
)
def test_bench_errors_are_one_line_and_a_nonzero_exit(args, says):
    run = volcache("bench", *args)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and says in run.stderr and "Traceback" not in run.stderr


def test_bench_quick_under_real_pressure(tmp_path):
    """The real scenario: every contestant in a memory cgroup beside the competitor.

    What a short run guarantees, however fast the machine: each cache is
    offered values worth the limit before the clock starts, so an LRU cache
    bounded at 100 % of the limit (plus an interpreter) meets the OOM killer
    in its fill, while volcache on every real backend gives memory back,
    finishes, and lets the competitor live.
    """
    require("kernel", cgroups.unavailable_reason())
    need_backend("uffd")
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    run = volcache(
        "bench", "--quick", "--limit", "128M", "--json", str(report), "--plot", str(plot)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "simulated" not in run.stdout and "hit ratio" in run.stdout
    results = {r["contestant"]["name"]: r for r in json.loads(report.read_text())["results"]}
    assert {"volcache-kernel", "volcache-uffd", "LRUCache-100%", "lru_cache", "no cache"} <= set(
        results
    )
    assert all(r["wrong"] == 0 for r in results.values())
    peers = ("cachebox-25%", "cachebox-50%", "lru-dict-25%", "lru-dict-50%", "diskcache")
    assert all(results[name]["status"] in ("finished", "killed") for name in peers)
    survivors = [r for r in results.values() if r["status"] == "finished"]
    assert all(r["ops"] > 0 and r["samples"] for r in survivors)
    assert all(r["stalls"]["steps"] > 0 and r["stalls"]["p99_ms"] > 0 for r in survivors)
    assert "stall p50/p99" in run.stdout and "oracle" in run.stdout
    document = json.loads(report.read_text())
    assert 0 < document["oracle"]["hit_ratio"] < 1 and document["oracle"]["ops"] > 0
    assert all(r["of_oracle"] > 0 for r in survivors if r["hits"])
    for name in ("volcache-kernel", "volcache-uffd"):
        ours = results[name]
        assert ours["status"] == "finished" and not ours["competitor_killed"], name
        assert ours["info"]["purged"] > 0 or ours["info"]["regenerated"] > 0, name
    lru = results["LRUCache-100%"]
    assert lru["status"] == "killed" and lru["fill_s"] is None and lru["ops"] == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not leftover_groups(run.pid)


def test_bench_simulated_says_so():
    run = volcache("bench", "--backend", "sim", "--duration", "1.5", "--fill", "0.25")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "simulated memory" in run.stdout.splitlines()[0]
    assert "volcache-sim" in run.stdout and "LRUCache-25%" in run.stdout


def test_without_cgroups_bench_runs_simulated_and_says_why_first():
    """As nobody, cgroups are not writable: one line says so, then the simulated run."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as an unprivileged user")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]  # fmt: skip
    run = volcache("bench", "--duration", "1", "--fill", "0.25", prefix=nobody)
    assert run.returncode == 0, run.stderr[-2000:]
    first = run.stdout.splitlines()[0]
    assert first.startswith("no writable memory cgroup here") and "sim backend" in first


def test_bench_many_small_entries_under_a_limit(tmp_path):
    """--scenario many-small --quick: volcache finishes with every value right; the
    unbounded lru_cache and dict are certain to pass 128 MiB, and are killed."""
    require("kernel", cgroups.unavailable_reason())
    report = tmp_path / "many.json"
    run = volcache("bench", "--scenario", "many-small", "--quick", "--json", str(report))
    assert run.returncode == 0, run.stderr[-3000:]
    results = {
        (r["workload"], r["contestant"]): r for r in json.loads(report.read_text())["results"]
    }
    assert all(r.get("wrong", 0) == 0 for r in results.values())
    for key in [("memoize", "volcache @cached"), ("mapping", "volcache VolatileCache")]:
        assert results[key]["status"] == "finished" and results[key]["ops"] == results[key]["calls"]
    assert results[("memoize", "lru_cache(maxsize=None)")]["status"] == "killed"
    assert results[("mapping", "dict")]["status"] == "killed"
    assert "many small entries" in run.stdout and not leftover_groups(run.pid)


def test_bench_tier_two_workers_without_and_with_a_shared_redis(tmp_path):
    """--scenario tier: both rounds finish with every value right, and with a shared
    Redis each worker takes values from it instead of making them again."""
    from volcache.bench import servers

    require("redis", servers.missing("redis"))
    require("kernel", cgroups.unavailable_reason())
    report = tmp_path / "tier.json"
    run = volcache("bench", "--scenario", "tier", "--duration", "3", "--json", str(report))
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(report.read_text())
    alone, shared = outcome["rounds"]["no tier"], outcome["rounds"]["shared Redis"]
    assert len(alone) == len(shared) == 2 and outcome["cgroups"] is None
    assert all(w["wrong"] == 0 and w["lookups"] > 0 for w in alone + shared)
    assert all(w["tier_hits"] == 0 for w in alone)
    assert all(w["tier_hits"] > 0 and w["tier_errors"] == 0 for w in shared)
    assert "shared Redis" in run.stdout
    root = cgroups.memory_controller()[1]
    assert not [p for p in os.listdir(root) if p.startswith(f"volcache-tier-{run.pid}-")]


def test_bench_shared_private_caches_one_shared_cache_and_diskcache(tmp_path):
    """Four workers and the competitor in one cgroup: every value right in every
    round, the shared cache's round with nobody killed, and the memory of one copy."""
    require("kernel", cgroups.unavailable_reason())
    report = tmp_path / "shared.json"
    run = volcache("bench", "--scenario", "shared", "--duration", "3", "--json", str(report))
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(report.read_text())
    assert set(outcome["rounds"]) == {"private volcache", "shared volcache", "diskcache"}
    for round_ in outcome["rounds"].values():
        assert len(round_["workers"]) == 4
        assert all(
            w["wrong"] == 0 and w["lookups"] > 0 for w in round_["workers"] if "failed" not in w
        )
    shared = outcome["rounds"]["shared volcache"]
    assert shared["oom_kills"] == 0 and all("failed" not in w for w in shared["workers"])
    memory = outcome["memory"]
    assert memory["wrong"] == 0 and memory["entries"] > 0 and memory["segment"] > 0
    assert "shared volcache" in run.stdout and "diskcache" in run.stdout
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"volcache-{os.getuid()}-bench-")]


def test_bench_speed_prints_each_operation_beside_the_peers(tmp_path):
    need_backend("kernel")
    report = tmp_path / "speed.json"
    run = volcache("bench", "--scenario", "speed", "--quick", "--json", str(report))
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(report.read_text())["seconds"]
    assert {"insert 256 B, evicting", "hot hit", "decorated hit", "decorated miss"} <= set(found)
    for operation, medians in found.items():
        assert medians["volcache"] > 0, operation
        assert ("floor" in medians) == operation.startswith("idle hit"), operation
    assert {"cachetools", "cachebox", "lru-dict"} <= set(found["hot hit"])
    assert "functools" in found["decorated hit"]
    assert all(operation in run.stdout for operation in found) and "x cachetools" in run.stdout
