"""The competitor: another process in the cgroup whose memory grows and shrinks.

It stands for the rest of the machine wanting its memory back: nothing at
first, then it grows to ``peak`` bytes, holds, and gives them back. Run by the
scenario as ``python -m volcache.bench.competitor PEAK DURATION START``.
"""

from __future__ import annotations

import ctypes
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


def main() -> None:
    peak, duration, start = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    chunks: list[mmap.mmap] = []
    while (t := time.time() - start) < duration:
        want = target(peak, duration, t) // CHUNK
        while len(chunks) < want:
            chunk = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            anchor = ctypes.c_char.from_buffer(chunk)
            ctypes.memset(ctypes.addressof(anchor), 0x5A, CHUNK)  # really resident
            del anchor
            chunks.append(chunk)
        while len(chunks) > want:
            chunks.pop().close()
        time.sleep(0.05)


if __name__ == "__main__":
    main()
