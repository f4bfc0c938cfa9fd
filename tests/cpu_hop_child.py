"""Run inside a memory cgroup: volatile pages written on one CPU and marked from another,
then real memory pressure. Prints one JSON line of counts.

Usage: python cpu_hop_child.py VOLATILE_MIB HOG_MIB

Each run of 16 pages is written on the first CPU and marked volatile from the
second, so that every marking meets pages still waiting in the first CPU's
LRU batch. A hog then takes HOG_MIB, which fits under the cgroup's limit only
if the kernel can drop many of the volatile pages; once it is gone, every page
is re-pinned and checked.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys

from volcache.backends import NONVOLATILE, VOLATILE, get_backend

RUN_PAGES = 16


def main() -> None:
    volatile_mib, hog_mib = (int(arg) for arg in sys.argv[1:3])
    cpus = sorted(os.sched_getaffinity(0))
    backend = get_backend("kernel")
    ps = backend.page_size
    region = backend.allocate(volatile_mib << 20)
    runs = region.size // (RUN_PAGES * ps)
    for run in range(runs):
        start, stop = run * RUN_PAGES * ps, (run + 1) * RUN_PAGES * ps
        os.sched_setaffinity(0, {cpus[0]})
        region.view[start:stop] = run.to_bytes(8, "little") * (RUN_PAGES * ps // 8)
        os.sched_setaffinity(0, {cpus[1]})
        backend.vrange(region, start, stop - start, VOLATILE)
    os.sched_setaffinity(0, set(cpus))
    backend.settle()  # as a program about to go idle: the last markings without a drain
    hog = mmap.mmap(-1, hog_mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anchor = ctypes.c_char.from_buffer(hog)
    ctypes.memset(ctypes.addressof(anchor), 0x5A, len(hog))
    del anchor
    hog.close()  # before re-pinning: pinned pages and the hog would not fit together
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    purged = set(result.purged_pages)
    wrong = 0
    for run in range(runs):
        word = run.to_bytes(8, "little")
        for page in range(run * RUN_PAGES, (run + 1) * RUN_PAGES):
            data = region.view[page * ps : (page + 1) * ps]
            wrong += data != (bytes(ps) if page in purged else word * (ps // 8))
    print(json.dumps({"pages": runs * RUN_PAGES, "purged": len(purged), "wrong": wrong}))


if __name__ == "__main__":
    main()
