"""A memory hog for pressure tests: anonymous memory, then page cache thrashing.

Usage: python thrash_hog.py FILE ANON_MIB SECONDS

Holds ANON_MIB of anonymous memory and reads FILE over and over for SECONDS,
dropping its cache first, so that inside a memory cgroup the kernel keeps
reclaiming and refaulting: tasks stall on memory (PSI) and reclaim runs
(cgroup v1 pressure levels), without an out-of-memory kill.
"""

import ctypes
import mmap
import os
import sys
import time


def main() -> None:
    path, anon_mib, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    anon = mmap.mmap(-1, anon_mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(anon)
    ctypes.memset(ctypes.addressof(anchor), 1, len(anon))
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        os.lseek(fd, 0, os.SEEK_SET)
        while os.read(fd, 1 << 20):
            pass
        rounds += 1
    print(f"rounds {rounds}", flush=True)


if __name__ == "__main__":
    main()
