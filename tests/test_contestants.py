"""The bench's contestants: the peers users pick instead (cachebox, lru-dict,
diskcache) serve the workload like the others, bounded as said; a peer whose
library is missing is listed as skipped with the command that installs it."""

from __future__ import annotations

import importlib.util
import os

import pytest

from volcache.bench import contestants, report, scenario
from volcache.bench.contestants import Contestant, Getter, lineup
from volcache.bench.results import Settings
from volcache.bench.workload import Workload, check_value

WORKLOAD = Workload(keys=40, min_size=4096, max_size=16384, seed=3)


@pytest.mark.parametrize("kind", ["cachebox", "lru-dict", "diskcache"])
def test_a_peer_serves_right_values_and_hits_on_a_second_lookup(kind):
    pytest.importorskip(contestants.PEERS[kind])
    limit = 10 * WORKLOAD.working_set()  # room for everything
    getter = Getter(Contestant(kind, kind, fraction=0.5), WORKLOAD, limit)
    try:
        first = [getter.get(key) for key in range(WORKLOAD.keys)]
        again = [getter.get(key) for key in range(WORKLOAD.keys)]
    finally:
        getter.close()
    assert all(check_value(key, value) for key, (value, _) in enumerate(first))
    assert not any(hit for _, hit in first) and all(hit for _, hit in again)
    assert [value for value, _ in first] == [value for value, _ in again]


@pytest.mark.parametrize("kind", ["cachebox", "lru-dict"])
def test_a_counting_peer_holds_the_entries_its_fraction_of_the_limit_makes(kind):
    pytest.importorskip(contestants.PEERS[kind])
    mean = WORKLOAD.working_set() / WORKLOAD.keys
    limit = int(8 * mean) + 8  # a quarter of it: two entries of the mean size
    getter = Getter(Contestant(kind, kind, fraction=0.25), WORKLOAD, limit)
    try:
        for key in range(WORKLOAD.keys):
            getter.get(key)
        assert len(getter.cache) == 2
    finally:
        getter.close()


def test_diskcache_leaves_no_directory_behind():
    pytest.importorskip("diskcache")
    getter = Getter(Contestant("diskcache", "diskcache"), WORKLOAD, 1 << 30)
    getter.get(1)
    directory = getter._directory
    assert os.path.isdir(directory)
    getter.close()
    assert not os.path.exists(directory)


def test_a_peer_not_installed_is_skipped_with_the_command_that_installs_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cachebox" else real(name, *a)
    )
    listed = {c.name: c for c in lineup(["sim"])}
    assert (
        listed["cachebox-25%"].missing and "pip install cachebox" in listed["cachebox-25%"].missing
    )
    assert not listed["lru-dict-25%"].missing or importlib.util.find_spec("lru") is None

    def never(*args):
        raise AssertionError("a skipped contestant ran")

    monkeypatch.setattr(scenario, "run_simulated", never)
    monkeypatch.setattr(scenario, "run_contestant", never)
    results = scenario.run([listed["cachebox-25%"]], Settings(), True, lambda *a: None)
    assert results[0].status == "skipped"
    assert report.status(results[0]).startswith("skipped: not installed: pip install cachebox")
    assert "cachebox-25%" in report.table(results)
