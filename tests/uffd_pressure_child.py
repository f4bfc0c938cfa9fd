"""Run inside a memory cgroup: uffd regions that a pressure source must purge.

Usage: python uffd_pressure_child.py SOURCE PATH REGION_MIB SECONDS

Fills REGION_MIB of uffd regions, marks them volatile, prints "ready", then
waits (up to SECONDS) until the pressure source has fired and the purger has
dropped pages, while a hog in the same cgroup makes the pressure. Prints one
JSON line with the backend's stats and whether every re-pinned page is right.
"""

from __future__ import annotations

import json
import sys
import time

from volcache.backends import NONVOLATILE, VOLATILE, get_backend


def main() -> None:
    source, path, region_mib, seconds = sys.argv[1:5]
    backend = get_backend(
        "uffd",
        pressure=source,
        pressure_path=None if path == "-" else path,
        pressure_purge=0.5,
    )
    regions = [backend.allocate(4 << 20) for _ in range(int(region_mib) // 4)]
    for index, region in enumerate(regions):
        region.view[:] = bytes([index + 1]) * region.size
        backend.vrange(region, 0, region.size, VOLATILE)
    print("ready", flush=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline and not backend.stats()["pressure_purged_bytes"]:
        time.sleep(0.01)
    wrong = 0
    for index, region in enumerate(regions):
        purged = set(backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages)
        page = backend.page_size
        for p in range(region.pages):
            if p not in purged:
                wrong += region.view[p * page : (p + 1) * page] != bytes([index + 1]) * page
    stats = {k: v for k, v in backend.stats().items() if isinstance(v, int | float | str)}
    print(json.dumps({"stats": stats, "wrong": wrong}), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
