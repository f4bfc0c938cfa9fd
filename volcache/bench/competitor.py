"""The competitor: another process in the cgroup whose memory grows and shrinks.

It stands for the rest of the machine wanting its memory back: nothing at
first, then it grows to ``peak`` bytes, holds, and gives them back. Run by the
scenario as ``python -m volcache.bench.competitor PEAK DURATION START [STEPS]``.

What a neighbour pays for the cache beside it is the time its allocations
take while the kernel finds it memory: each step (a chunk mapped and
written) is timed, and with ``STEPS`` each ``[t, milliseconds]`` is written
there as a JSON line as it happens (the steps before a kill are kept).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
import time

CHUNK = 4 << 20
GROW, HOLD, SHRINK = 0.3, 0.45, 0.7  # fractions of the run: start growing, full, shrinking
DONE = 0.8


def target(peak: int, duration: float, t: float) -> int:
    """The competitor's memory at time ``t`` of a run of ``duration`` seconds."""
    x = t / duration
    if x < GROW or x >= DONE:
        return 0
    if x < HOLD:
        return int(peak * (x - GROW) / (HOLD - GROW))
    if x < SHRINK:
        return peak
    return int(peak * (DONE - x) / (DONE - SHRINK))


def stalls(steps: list[list[float]]) -> dict[str, float]:
    """The median, 99th percentile and longest of the steps' milliseconds."""
    times = sorted(ms for _, ms in steps)
    if not times:
        return {"steps": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

    def rank(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))]

    return {"steps": len(times), "p50_ms": rank(0.5), "p99_ms": rank(0.99), "max_ms": times[-1]}


def main() -> None:
    peak, duration, start = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    log = open(sys.argv[4], "w", buffering=1) if len(sys.argv) > 4 else None  # noqa: SIM115
    chunks: list[mmap.mmap] = []
    while (t := time.time() - start) < duration:
        want = target(peak, duration, t) // CHUNK
        while len(chunks) < want:
            began = time.perf_counter()
            chunk = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            anchor = ctypes.c_char.from_buffer(chunk)
            ctypes.memset(ctypes.addressof(anchor), 0x5A, CHUNK)  # really resident
            del anchor
            chunks.append(chunk)
            if log is not None:
                step = [round(t, 3), round((time.perf_counter() - began) * 1000, 3)]
                log.write(json.dumps(step) + "\n")
        while len(chunks) > want:
            chunks.pop().close()
        time.sleep(0.05)
    if log is not None:
        log.close()


if __name__ == "__main__":
    main()
