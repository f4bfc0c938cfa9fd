"""Run inside a memory cgroup: volatile regions against a memory hog, checked page by page.

Usage: python pressure_child.py BACKEND REGION_MIB HOG_MIB CYCLES CONCURRENT_CYCLES

Each cycle marks every region volatile, makes the kernel reclaim by touching
HOG_MIB of other memory, re-pins everything and checks every page: a page
reported intact must hold its bytes exactly; a page reported purged must have
lost them. Concurrent cycles run the hog in another thread while the main
thread re-pins, checks and marks one region at a time, so that reclaim races
with the exchange. Prints one
JSON line of counts.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import random
import sys
import threading

from volcache.backends import NONVOLATILE, VOLATILE, get_backend

REGION_BYTES = 4 << 20
BLOCK_PAGES = 17


def main() -> None:
    name, region_mib, hog_mib, cycles, concurrent = sys.argv[1:6]
    backend = get_backend(name)
    ps = backend.page_size
    block = random.Random(1).randbytes(ps * BLOCK_PAGES)
    regions = [backend.allocate(REGION_BYTES) for _ in range(int(region_mib) // 4)]
    per_region = REGION_BYTES // ps
    counts = {"cycles": 0, "pages_checked": 0, "purged": 0, "intact": 0}
    counts.update(wrong_intact=0, purged_not_gone=0)

    def expected(region_index: int, page: int) -> bytes:
        n = region_index * per_region + page + 1
        start = (n % BLOCK_PAGES) * ps
        return n.to_bytes(8, "little") + block[start + 8 : start + ps]

    def fill(region_index: int, pages) -> None:
        view = regions[region_index].view
        for page in pages:
            view[page * ps : (page + 1) * ps] = expected(region_index, page)

    def check(index: int) -> None:
        region = regions[index]
        result = backend.vrange(region, 0, region.size, NONVOLATILE)
        assert result.count == region.size
        purged = set(result.purged_pages)
        view = region.view
        for page in range(per_region):
            data = view[page * ps : (page + 1) * ps]
            if page in purged:
                # Gone: zeros, but for the saved word the exchange may have put
                # back if reclaim won the race between the probe and the exchange.
                counts["purged_not_gone"] += data[8:] != bytes(ps - 8)
            else:
                counts["wrong_intact"] += data != expected(index, page)
        counts["pages_checked"] += per_region
        counts["purged"] += len(purged)
        counts["intact"] += per_region - len(purged)
        fill(index, sorted(purged))

    def hog_once(nbytes: int) -> None:
        hog = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(hog)
        ctypes.memset(ctypes.addressof(anchor), 0x5A, nbytes)  # releases the GIL
        del anchor
        hog.close()

    for index in range(len(regions)):
        fill(index, range(per_region))

    for _ in range(int(cycles)):
        for region in regions:
            backend.vrange(region, 0, region.size, VOLATILE)
        hog_once(int(hog_mib) << 20)
        for index in range(len(regions)):
            check(index)
        counts["cycles"] += 1

    stop = threading.Event()

    def hog_loop() -> None:
        while not stop.is_set():
            hog_once(int(hog_mib) << 20)

    hog = threading.Thread(target=hog_loop)
    hog.start()
    try:
        # One region pinned at a time, the rest volatile: the hog fits only
        # because the kernel keeps reclaiming volatile pages while we re-pin.
        for region in regions:
            backend.vrange(region, 0, region.size, VOLATILE)
        for _ in range(int(concurrent)):
            for index, region in enumerate(regions):
                check(index)
                backend.vrange(region, 0, region.size, VOLATILE)
            counts["cycles"] += 1
    finally:
        stop.set()
        hog.join()
    counts["stats"] = {k: v for k, v in backend.stats().items() if isinstance(v, int)}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
