"""The pressure scenario under a real memory cgroup: one contestant at a time.

Each contestant serves the workload in a worker process inside a fresh memory
cgroup with the limit, beside the competitor in the same cgroup. Before the
clock starts the worker fills its cache with values worth the limit (most
popular first), so that a cache bounded near the limit reaches it for certain,
however fast this machine makes values. The parent samples both processes'
resident memory and notes who the OOM killer took.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import cgroups
from . import competitor
from .contestants import Contestant
from .workload import Workload

SAMPLE = 0.1  # seconds between memory samples
GRACE = 30.0  # seconds a worker may take past its duration (startup, a slow last value)
FILL_TIMEOUT = 300.0  # seconds a worker may take to fill its cache
NOISE = 8 << 20  # resident memory moves this much without giving anything back


@dataclass
class Settings:
    """What a run does; the defaults finish in a few minutes on 2 cores."""

    limit: int = 256 << 20
    duration: float = 20.0
    working_set: float = 2.5  # the working set, as a multiple of the limit
    competitor: float = 0.5  # the competitor's peak, as a fraction of the limit
    fill: float = 1.0  # values made before the clock starts, as a multiple of the limit
    seed: int = 0

    def workload(self) -> Workload:
        """The workload for this limit."""
        return Workload.for_memory(int(self.limit * self.working_set), seed=self.seed)

    @property
    def fill_bytes(self) -> int:
        """Bytes of values each worker makes before the clock starts."""
        return int(self.limit * self.fill)

    @property
    def competitor_peak(self) -> int:
        """The competitor's largest memory, in bytes."""
        return int(self.limit * self.competitor)


@dataclass
class Result:
    """How one contestant did."""

    contestant: Contestant
    status: str = "finished"  # "finished", "killed" (by the OOM killer) or "failed"
    killed_at: float | None = None
    served: float = 0.0  # seconds of lookups
    ops: int = 0
    hits: int = 0
    misses: int = 0
    wrong: int = 0
    peak_rss: int = 0
    competitor_killed: bool = False  # the OOM killer took the competitor instead
    returned: int = 0  # bytes of the worker's memory given back when the competitor grew
    return_s: float | None = None  # seconds to give back half of that
    fill_s: float | None = None  # seconds the fill took, before the clock
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def ops_per_s(self) -> float:
        """Lookups per second while it ran."""
        return self.ops / self.served if self.served else 0.0

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups."""
        return self.hits / self.ops if self.ops else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For JSON."""
        return {**asdict(self), "ops_per_s": self.ops_per_s, "hit_ratio": self.hit_ratio}


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_contestant(
    contestant: Contestant,
    settings: Settings,
    progress: Callable[[Contestant, float, dict[str, Any]], None],
) -> Result:
    """One contestant in a fresh memory cgroup: its fill, then the clock beside the competitor."""
    result = Result(contestant)
    with cgroups.MemoryCgroup(settings.limit, name="volcache-bench") as group:
        config = {
            "contestant": asdict(contestant),
            "workload": asdict(settings.workload()),
            "limit": settings.limit,
            "duration": settings.duration,
            "fill": settings.fill_bytes,
        }
        python = [sys.executable, "-m"]
        worker = subprocess.Popen(
            group.command([*python, "volcache.bench.worker", json.dumps(config)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(worker.stdout, lines), daemon=True)
        reader.start()
        last: dict[str, Any] = {}
        rival = None
        if _wait_ready(lines, result):
            start = time.time() + 0.2  # both processes start their clocks together
            worker.stdin.write(f"{start}\n")
            worker.stdin.flush()
            peak, duration = str(settings.competitor_peak), str(settings.duration)
            rival = subprocess.Popen(
                group.command([*python, "volcache.bench.competitor", peak, duration, str(start)])
            )
            last = _serve_and_sample(worker, rival, lines, result, settings, start, progress)
        if worker.poll() is None:
            worker.kill()
            result.status, result.note = "failed", "did not finish in time"
        worker.wait()
        reader.join(timeout=5)
        last = _drain(lines, last, result)
        if rival is not None:
            rival.kill()
            rival.wait()
        oom_kills = group.oom_kills()
        errors = worker.stderr.read()
    rival_code = None if rival is None else rival.returncode
    _finish(result, worker.returncode, rival_code, oom_kills, errors, settings, last)
    return result


def _wait_ready(lines: queue.Queue[str | None], result: Result) -> bool:
    """Wait for the worker's fill; False if it ended (or took too long) before it was ready."""
    deadline = time.monotonic() + FILL_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            result.note = "during the fill"
            return False
        sample = json.loads(line)
        if sample.get("ready"):
            result.fill_s = sample["fill_s"]
            return True
    result.note = "the fill did not finish in time"
    return False


def _serve_and_sample(
    worker: subprocess.Popen[str],
    rival: subprocess.Popen[bytes],
    lines: queue.Queue[str | None],
    result: Result,
    settings: Settings,
    start: float,
    progress: Callable[[Contestant, float, dict[str, Any]], None],
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    deadline = start + settings.duration + GRACE
    while worker.poll() is None and time.time() < deadline:
        last = _drain(lines, last, result)
        t = time.time() - start
        rss = _rss(worker.pid)
        if t >= 0 and rss:  # a process that is gone has nothing resident
            result.samples.append(
                {
                    "t": round(t, 3),
                    "rss": rss,
                    "competitor": _rss(rival.pid),
                    "ops": last.get("ops", 0),
                    "hits": last.get("hits", 0),
                }
            )
            progress(result.contestant, t, last)
        time.sleep(SAMPLE)
    return last


def _read_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _drain(lines: queue.Queue[str | None], last: dict[str, Any], result: Result) -> dict[str, Any]:
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return last
        if line is None:
            return last
        sample = json.loads(line)
        if sample.get("done"):
            result.info = sample.pop("info", {})
        last = sample


def _finish(
    result: Result,
    code: int,
    rival_code: int | None,
    oom_kills: int,
    errors: str,
    settings: Settings,
    last: dict[str, Any],
) -> None:
    for name in ("ops", "hits", "misses", "wrong"):
        setattr(result, name, last.get(name, 0))
    result.served = min(last.get("t", 0.0), settings.duration)
    if code == -9 and oom_kills:
        result.status = "killed"
        result.killed_at = result.served if result.fill_s is not None else 0.0
    elif code != 0 and result.status == "finished":
        result.status = "failed"
        result.note = (errors.strip().splitlines() or [f"exit status {code}"])[-1]
    if rival_code == -9 and oom_kills and result.status != "killed":
        result.competitor_killed = True
    result.peak_rss = max((s["rss"] for s in result.samples), default=0)
    _returned(result, settings)


def _returned(result: Result, settings: Settings) -> None:
    """How much memory the worker gave back while the competitor grew, and how fast."""
    grow = settings.duration * competitor.GROW
    high = settings.duration * competitor.SHRINK
    before = [s["rss"] for s in result.samples if s["t"] <= grow and s["rss"]]
    during = [s for s in result.samples if grow < s["t"] <= high and s["rss"]]
    if not before or not during:
        return
    start_rss = before[-1]
    returned = start_rss - min(s["rss"] for s in during)
    result.returned = returned if returned >= NOISE else 0
    if result.returned:
        half = start_rss - result.returned / 2
        result.return_s = next(round(s["t"] - grow, 3) for s in during if s["rss"] <= half)


def run(
    contestants: list[Contestant],
    settings: Settings,
    simulated: bool,
    progress: Callable[[Contestant, float, dict[str, Any]], None],
    done: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """Run each contestant in turn (in simulated memory if asked); ``done`` hears of each."""
    from .simulated import run_simulated  # it imports this module

    results = []
    for contestant in contestants:
        runner = run_simulated if simulated else run_contestant
        result = runner(contestant, settings, progress)
        done(result)
        results.append(result)
    return results


def machine_line() -> str:
    """Where the run happened, for the report's heading."""
    uname = os.uname()
    return f"Linux {uname.release} {uname.machine}, {os.cpu_count()} CPUs"
