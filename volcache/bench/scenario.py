"""The pressure scenario under a real memory cgroup: one contestant at a time.

Each contestant serves the workload in a worker process inside a fresh memory
cgroup with the limit, beside the competitor in the same cgroup. Before the
clock starts the worker fills its cache with values worth the limit (most
popular first), so that a cache bounded near the limit reaches it for certain,
however fast this machine makes values. The parent samples both processes'
resident memory and notes who the OOM killer took.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from .. import cgroups
from .contestants import Contestant
from .results import SAMPLE, Result, Settings, returned_memory
from .simulated import run_simulated

GRACE = 30.0  # seconds a worker may take past its duration (startup, a slow last value)
FILL_TIMEOUT = 300.0  # seconds a worker may take to fill its cache


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
    with (
        cgroups.MemoryCgroup(settings.limit, name="volcache-bench") as group,
        _steps_file() as steps_path,
    ):
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
            stdin = worker.stdin
            if stdin is not None:  # always: made with PIPE
                stdin.write(f"{start}\n")
                stdin.flush()
            peak, duration = str(settings.competitor_peak), str(settings.duration)
            rival = subprocess.Popen(
                group.command(
                    [*python, "volcache.bench.competitor", peak, duration, str(start), steps_path]
                )
            )
            last = _serve_and_sample(worker, rival, lines, result, settings, start, progress)
        if worker.poll() is None:
            worker.kill()
            result.status, result.note = "failed", "did not finish in time"
        worker.wait()
        reader.join(timeout=5)
        last = _drain(lines, last, result)
        if rival is not None:
            if worker.returncode == 0:  # it ends with its duration: every step it made
                try:
                    rival.wait(timeout=GRACE)
                except subprocess.TimeoutExpired:
                    rival.kill()
            else:
                rival.kill()
            rival.wait()
            result.competitor_steps = _read_steps(steps_path)
        oom_kills = group.oom_kills()
        errors = worker.stderr.read() if worker.stderr is not None else ""
    rival_code = None if rival is None else rival.returncode
    _finish(result, worker.returncode, rival_code, oom_kills, errors, settings, last)
    return result


@contextlib.contextmanager
def _steps_file() -> Iterator[str]:
    """A path for the competitor's timed steps, removed after."""
    fd, path = tempfile.mkstemp(prefix="volcache-competitor-", suffix=".json")
    os.close(fd)
    os.unlink(path)  # the competitor makes it at its first step
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _read_steps(path: str) -> list[list[float]]:
    try:
        with open(path) as steps:
            lines = steps.read().splitlines()
    except FileNotFoundError:  # killed before its first step
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):  # the last, cut short by a kill
            found.append(json.loads(line))
    return found


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
    result.peak_rss = int(max((s["rss"] for s in result.samples), default=0))
    returned_memory(result, settings)


def run(
    contestants: list[Contestant],
    settings: Settings,
    simulated: bool,
    progress: Callable[[Contestant, float, dict[str, Any]], None],
    done: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """Run each contestant in turn (in simulated memory if asked); ``done`` hears of each."""
    results = []
    for contestant in contestants:
        if contestant.missing:
            result = Result(contestant, status="skipped", note=contestant.missing)
            done(result)
            results.append(result)
            continue
        runner = run_simulated if simulated else run_contestant
        result = runner(contestant, settings, progress)
        done(result)
        results.append(result)
    return results


def machine_line() -> str:
    """Where the run happened, for the report's heading."""
    uname = os.uname()
    return f"Linux {uname.release} {uname.machine}, {os.cpu_count()} CPUs"
