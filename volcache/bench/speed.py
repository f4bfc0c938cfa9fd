"""The speed scenario: each operation's cost beside the caches users pick, on this machine.

Every operation is timed for each contestant in alternating rounds (one
round of each, again and again) and each contestant's median round is kept:
these machines drift, and only numbers taken side by side compare. The
ratios are to cachetools (to the floor for the idle hit: C reading pages
given ``MADV_FREE`` just before, what any volatile cache must do at least).
A peer that is not installed is left out of its row, and said so.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import cachetools

from ..backends import NONVOLATILE, VOLATILE, clib, get_backend
from ..backends.kernel import TAG
from ..cache import VolatileCache
from ..decorator import cached

MAXSIZE = 1000
PEERS = ("cachebox", "lru-dict")


def has(module: str) -> bool:
    """Whether ``module`` can be imported here."""
    return importlib.util.find_spec(module) is not None


def alternate(
    contestants: dict[str, Callable[[], object]], calls: int, rounds: int,
    setup: Callable[[], object] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Median seconds a call of each contestant, over alternating rounds of ``calls``
    (with ``setup``, each call timed alone after it)."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, function in contestants.items():
            if setup is None:
                start = time.perf_counter()
                for _ in range(calls):
                    function()
                total = time.perf_counter() - start
            else:
                total = 0.0
                for _ in range(calls):
                    setup()
                    start = time.perf_counter()
                    function()
                    total += time.perf_counter() - start
            times[name].append(total / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def bounded_caches() -> dict[str, Any]:
    """A cache of each kind with room for MAXSIZE entries (evicting past it)."""
    caches: dict[str, Any] = {
        "volcache": VolatileCache(MAXSIZE, backend="kernel"),
        "cachetools": cachetools.LRUCache(MAXSIZE),
    }
    if has("cachebox"):
        import cachebox

        caches["cachebox"] = cachebox.LRUCache(MAXSIZE)
    if has("lru"):
        import lru

        caches["lru-dict"] = lru.LRU(MAXSIZE)
    return caches


def insert(nbytes: int, rounds: int) -> dict[str, float]:
    """A new key into a full bounded cache (each insert evicts)."""
    value = b"v" * nbytes
    caches = bounded_caches()
    for cache in caches.values():
        for i in range(MAXSIZE):
            cache[-1 - i] = value
    counters = {name: itertools.count() for name in caches}

    def inserting(cache: Any, counter: Any) -> Callable[[], object]:
        return lambda: cache.__setitem__(next(counter), value)

    try:
        return alternate({n: inserting(c, counters[n]) for n, c in caches.items()}, 200, rounds)
    finally:
        caches["volcache"].close()


def hot_hit(rounds: int) -> dict[str, float]:
    """A hit on an entry read lately, in a bounded cache (subscripts, as users write)."""
    caches = bounded_caches()
    for cache in caches.values():
        cache["key"] = b"v" * 100
        cache["key"], cache["key"]  # read twice: hot in volcache

    def hitting(cache: Any) -> Callable[[], object]:
        return lambda: (cache["key"], cache["key"], cache["key"], cache["key"], cache["key"])

    try:
        medians = alternate({n: hitting(c) for n, c in caches.items()}, 2000, rounds)
    finally:
        caches["volcache"].close()
    return {n: t / 5 for n, t in medians.items()}


def _square(x: int) -> int:
    return x * x


def decorated(kind: str, rounds: int) -> dict[str, float]:
    """A memoized call (unbounded), a ``hit`` or a ``miss``."""
    functions: dict[str, Callable[[int], int]] = {
        "volcache": cached(maxsize=None, backend="kernel")(_square),
        "cachetools": cachetools.cached(cachetools.Cache(1e18))(_square),
        "functools": functools.lru_cache(maxsize=None)(_square),
    }
    if has("cachebox"):
        import cachebox

        functions["cachebox"] = cachebox.cached(cachebox.Cache(0))(_square)
    if kind == "hit":
        for f in functions.values():
            f(12), f(12)
        return alternate({n: functools.partial(f, 12) for n, f in functions.items()}, 2000, rounds)

    def missing(function: Callable[[int], int]) -> Callable[[], object]:
        counter = itertools.count()
        return lambda: function(next(counter))

    return alternate({n: missing(f) for n, f in functions.items()}, 300, rounds)


class IdleRead(NamedTuple):
    """An idle entry and the floor's region of the same size, and how to read each."""

    cache: VolatileCache
    setup: Callable[[], None]  # before each timed call, the same work for both sides
    floor: Callable[[], None]


@contextlib.contextmanager
def idle_read(nbytes: int) -> Iterator[IdleRead]:
    """A cache holding one ``nbytes`` entry and a region as large, both given
    ``MADV_FREE`` again by ``setup``; the floor is C checking the pages' tags,
    copying into a new ``bytes``, checking again."""
    bytes(8 << 20)  # glibc: large blocks from the heap from now on, for both sides
    cache = VolatileCache(backend="kernel", hot_bytes=16 << 20)
    cache["key"] = b"v" * nbytes
    backend = get_backend("kernel")
    region = backend.allocate(nbytes)
    region.view[:] = b"v" * nbytes

    def setup() -> None:
        backend.vrange(region, 0, nbytes, NONVOLATILE)
        backend.vrange(region, 0, nbytes, VOLATILE)
        with cache.pin("key"):
            pass
        cache.volatilize()

    def floor() -> None:
        clib.floor_read(region.address, nbytes, backend.page_size, TAG, bytes(nbytes))

    try:
        yield IdleRead(cache, setup, floor)
    finally:
        cache.close()
        backend.close()


def idle_hit(nbytes: int, rounds: int) -> dict[str, float]:
    """A hit on an idle entry whose pages were given ``MADV_FREE`` just before, and the floor."""
    with idle_read(nbytes) as idle:
        cache = idle.cache
        return alternate({"volcache": lambda: cache["key"], "floor": idle.floor}, 10, rounds,
                         idle.setup)  # fmt: skip


def measure(rounds: int = 9, progress: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
    """Every operation's medians, by operation then contestant, in seconds."""
    operations: dict[str, Callable[[], dict[str, float]]] = {
        "insert 256 B, evicting": lambda: insert(256, rounds),
        "insert 4 KiB, evicting": lambda: insert(4096, rounds),
        "hot hit": lambda: hot_hit(rounds),
        "decorated hit": lambda: decorated("hit", rounds),
        "decorated miss": lambda: decorated("miss", rounds),
        "idle hit 4 KiB (against the floor)": lambda: idle_hit(4096, rounds),
        "idle hit 64 KiB (against the floor)": lambda: idle_hit(65536, rounds),
    }
    found = {}
    for name, run in operations.items():
        progress(name)
        found[name] = run()
    return found


def table(found: dict[str, dict[str, float]]) -> str:
    """A row per operation: each contestant's time, and volcache's ratio to the base."""
    names = ["volcache", "cachetools", "cachebox", "lru-dict", "functools", "floor"]
    width = max(map(len, found))
    lines = [f"{'operation':{width}}  " + "  ".join(f"{n:>10}" for n in names) + "  ratio"]
    for operation, medians in found.items():
        cells = [f"{medians[n] * 1e9:>8,.0f}ns" if n in medians else f"{'-':>10}" for n in names]
        base = "floor" if "floor" in medians else "cachetools"
        ratio = medians["volcache"] / medians[base]
        lines.append(f"{operation:{width}}  " + "  ".join(cells) + f"  {ratio:.2f}x {base}")
    return "\n".join(lines)
