"""A competitor that grows as fast as it can: for the uffd limit tests.

Usage: python grow_hog.py MIB HOLD_SECONDS [MIB_PER_S]

Allocates and writes MIB of anonymous memory in 1 MiB steps (at MIB_PER_S if
given, else as fast as the kernel lets it), holds it for HOLD_SECONDS, prints
"done" and exits.
"""

import ctypes
import mmap
import sys
import time

STEP = 1 << 20


def main() -> None:
    mib, hold = int(sys.argv[1]), float(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else None
    memory = mmap.mmap(-1, mib * STEP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    start = time.monotonic()
    for step in range(mib):
        if rate is not None:
            time.sleep(max(0.0, start + step / rate - time.monotonic()))
        ctypes.memset(base + step * STEP, 0x5A, STEP)
    time.sleep(hold)
    print("done", flush=True)


if __name__ == "__main__":
    main()
