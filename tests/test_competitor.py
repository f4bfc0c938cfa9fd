"""The competitor: its memory over the run, and its allocation steps, timed and
kept even when it is killed part way."""

from __future__ import annotations

import subprocess
import sys
import time

from volcache.bench import competitor
from volcache.bench.scenario import _read_steps


def test_its_steps_are_logged_as_they_happen_and_a_cut_line_is_dropped(tmp_path):
    log = tmp_path / "steps"
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "volcache.bench.competitor", str(32 << 20), "1.5", str(start),
         str(log)],
        check=True, timeout=60,
    )  # fmt: skip
    steps = _read_steps(str(log))
    peak_chunks = (32 << 20) // competitor.CHUNK
    assert len(steps) == peak_chunks  # grown once to its peak, each chunk a step
    assert all(0 <= t <= 1.5 and ms > 0 for t, ms in steps)
    log.write_text(log.read_text() + "[1.2, 3")  # a kill in the middle of a line
    assert _read_steps(str(log)) == steps
    assert _read_steps(str(tmp_path / "never written")) == []


def test_stalls_are_the_median_99th_percentile_and_longest_step():
    steps = [[i / 100, float(ms)] for i, ms in enumerate([5, 1, 3, 2, 4] * 20 + [90])]
    assert competitor.stalls(steps) == {"steps": 101, "p50_ms": 3.0, "p99_ms": 5.0, "max_ms": 90.0}
    assert competitor.stalls([])["steps"] == 0
