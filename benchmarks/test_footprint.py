"""What an idle entry costs in memory no purge can take back, beside cachetools.

Each measurement runs in a fresh interpreter (``footprint_child.py``):
300,000 entries of 256-byte values, then ``(Anonymous - LazyFree)`` per
entry from ``/proc/self/smaps_rollup`` once volcache's entries went idle
(their values and keys are volatile: lazily freed pages are not counted),
against cachetools ``LRUCache`` holding the same entries with their values.
The numbers are in ``extra_info`` (``--benchmark-json``) and printed with
``-s``; volcache's must be at most 48 bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from volcache.backends import available_backends

HERE = Path(__file__).resolve().parent
ENTRIES = 300_000  # as the footprint issue measured
KINDS = ["volcache-str", "cached-int", "cachetools-str"]
IDLE_ENTRY_BOUND = 48  # bytes of non-volatile memory per idle entry, its key included


def _measure(kind: str) -> float:
    run = subprocess.run(
        [sys.executable, str(HERE / "footprint_child.py"), kind, str(ENTRIES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)["bytes_per_entry"]


@pytest.mark.skipif(available_backends()["kernel"] is not None, reason="needs the kernel backend")
@pytest.mark.parametrize("kind", KINDS)
def test_nonvolatile_bytes_per_idle_entry(benchmark, kind):
    benchmark.group = "non-volatile bytes per idle entry (256 B values)"
    per_entry = benchmark.pedantic(_measure, args=(kind,), rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_entry"] = round(per_entry, 1)
    print(f"\n{kind}: {per_entry:.0f} B per entry")
    if kind.startswith("cachetools"):
        assert per_entry > 256  # the values are in it: something real was measured
    else:
        # The bound the cold index is built for: an idle entry's record, its
        # share of the buckets and the allocator's books, key included.
        assert 0 < per_entry <= IDLE_ENTRY_BOUND
