"""Memoize an expensive function, then watch the kernel take results and volcache recompute them.

Run: python examples/memoize.py
"""

import hashlib
import time

from volcache import cached


@cached  # results live in volatile memory; the kernel may take them when short of memory
def render(page: int) -> bytes:
    """Something slow to compute and easy to compute again: 256 KiB per page."""
    time.sleep(0.02)  # pretend this is real work
    seed = hashlib.sha256(str(page).encode()).digest()
    return seed * (256 * 1024 // len(seed))


def timed(label: str, pages: range) -> None:
    start = time.perf_counter()
    for page in pages:
        render(page)
    info = render.cache_info()
    print(f"{label:28} {time.perf_counter() - start:6.3f} s   {info}")


timed("first time (computed)", range(20))
timed("again (hits)", range(20))

# A program about to sit idle can make its cache volatile at once; then ask
# the backend to act as memory pressure would, right now.
cache = render.cache
cache.volatilize()
purged = cache.backend.reclaim(2 << 20)  # the oldest 2 MiB of volatile memory
print(f"memory pressure took {purged >> 10} KiB on the {cache.backend.name} backend")

# Pages whose bytes were purged are computed again, with the same arguments;
# the others are still there, byte for byte.
timed("after the purge", range(20))
assert render.cache_info().regenerated == 8  # 2 MiB / 256 KiB per page
