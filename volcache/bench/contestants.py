"""The contestants: volcache on each backend, and the caches people use today."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cachetools

from ..backends import get_backend
from ..cache import VolatileCache
from .workload import Workload, make_value

LRU_FRACTIONS = (0.25, 0.5, 1.0)  # of the memory limit
PEER_FRACTIONS = (0.25, 0.5)  # cachebox's and lru-dict's bounds, as a fraction of the limit
#: The other caches users pick, and what to install for each (``volcache[bench]`` has them all).
PEERS = {"cachebox": "cachebox", "lru-dict": "lru", "diskcache": "diskcache"}
LRU_CACHE_MAXSIZE = 128  # functools.lru_cache's default, what most code uses


@dataclass(frozen=True)
class Contestant:
    """One cache under test.

    Attributes:
        name: for the table and the plot.
        kind: ``"volcache"``, ``"lru"`` (cachetools), ``"cachebox"``,
            ``"lru-dict"``, ``"diskcache"``, ``"lru_cache"`` or ``"none"``.
        backend: the volcache backend.
        fraction: for ``"lru"``, ``"cachebox"`` and ``"lru-dict"``, its bound as a
            fraction of the limit (in bytes; in entries of the mean value size for
            the two that count entries).
        missing: why it cannot run here (its library is not installed), or "".
    """

    name: str
    kind: str
    backend: str | None = None
    fraction: float | None = None
    missing: str = ""

    def describe(self) -> str:
        """A sentence for the table's legend."""
        if self.kind == "volcache" and self.backend == "uffd":
            return (
                "VolatileCache on the uffd backend with its defaults: the purger follows the "
                "cgroup's limit and purges when usage comes within an eighth of it"
            )
        if self.kind == "volcache":
            return f"VolatileCache on the {self.backend} backend, unbounded"
        if self.kind == "lru":
            return f"cachetools LRUCache bounded to {self.fraction:.0%} of the limit in bytes"
        if self.kind == "lru_cache":
            return f"functools.lru_cache(maxsize={LRU_CACHE_MAXSIZE})"
        if self.kind in ("cachebox", "lru-dict"):
            what = "cachebox.LRUCache (Rust)" if self.kind == "cachebox" else "lru-dict's LRU (C)"
            return (
                f"{what} bounded to {self.fraction:.0%} of the limit, as a number of "
                "entries of the workload's mean value size (it counts entries, not bytes)"
            )
        if self.kind == "diskcache":
            return (
                "diskcache.Cache in a temporary directory (default 1 GiB size limit): values "
                "in files and SQLite, read back through the page cache, which the kernel "
                "charges to the worker's cgroup and reclaims under pressure"
            )
        return "no cache: every value made on each use"


def lineup(backends: list[str]) -> list[Contestant]:
    """volcache on ``backends``, then the peers, in the table's order."""
    volcache = [Contestant(f"volcache-{name}", "volcache", backend=name) for name in backends]
    lru = [Contestant(f"LRUCache-{f:.0%}", "lru", fraction=f) for f in LRU_FRACTIONS]
    peers = [
        Contestant(f"{kind}-{f:.0%}", kind, fraction=f, missing=_missing(kind))
        for kind in ("cachebox", "lru-dict")
        for f in PEER_FRACTIONS
    ]
    disk = Contestant("diskcache", "diskcache", missing=_missing("diskcache"))
    return [*volcache, *lru, *peers, disk, Contestant("lru_cache", "lru_cache"),
            Contestant("no cache", "none")]  # fmt: skip


def _missing(kind: str) -> str:
    """Why a peer cannot run here: "" if its library imports."""
    if importlib.util.find_spec(PEERS[kind]) is None:
        return f"not installed: pip install {kind} (or 'volcache[bench]')"
    return ""


class Getter:
    """``get(key) -> (value, hit)`` over a contestant's cache, and ``close()``."""

    def __init__(
        self,
        contestant: Contestant,
        workload: Workload,
        limit: int,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.contestant = contestant
        self._make = functools.partial(make_value, workload)
        self.cache: Any = None
        self.get: Callable[[int], tuple[bytes, bool]]
        kind = contestant.kind
        if kind == "volcache":
            backend = get_backend(contestant.backend or "auto", **dict(backend_options or {}))
            self.cache = VolatileCache(backend=backend)
            self._owned_backend = backend
            self.get = self._mapping_get
        elif kind == "lru":
            fraction = contestant.fraction or 1.0
            self.cache = cachetools.LRUCache(int(limit * fraction), getsizeof=len)
            self.get = self._mapping_get
        elif kind in ("cachebox", "lru-dict"):
            mean = workload.working_set() / workload.keys
            entries = max(1, int(limit * (contestant.fraction or 1.0) / mean))
            if kind == "cachebox":
                import cachebox

                self.cache = cachebox.LRUCache(entries)
            else:
                import lru

                self.cache = lru.LRU(entries)
            self.get = self._mapping_get
        elif kind == "diskcache":
            import diskcache

            self._directory = tempfile.mkdtemp(prefix="volcache-bench-diskcache-")
            self.cache = diskcache.Cache(self._directory)
            self.get = self._mapping_get
        elif kind == "lru_cache":
            self._memo = functools.lru_cache(maxsize=LRU_CACHE_MAXSIZE)(self._make)
            self._shadow: OrderedDict[int, int] = OrderedDict()  # what lru_cache holds: sizes
            self.get = self._lru_cache_get
        else:
            self.get = self._no_cache_get

    def _mapping_get(self, key: int) -> tuple[bytes, bool]:
        value = self.cache.get(key)
        if value is not None:
            return value, True
        value = self._make(key)
        with contextlib.suppress(ValueError):  # larger than the whole LRU bound: not cached
            self.cache[key] = value
        return value, False

    def _lru_cache_get(self, key: int) -> tuple[bytes, bool]:
        misses = self._memo.cache_info().misses
        value = self._memo(key)
        self._shadow[key] = len(value)
        self._shadow.move_to_end(key)
        if len(self._shadow) > LRU_CACHE_MAXSIZE:
            self._shadow.popitem(last=False)
        return value, self._memo.cache_info().misses == misses

    def held_bytes(self) -> int:
        """Bytes of values the cache holds (what the simulated run counts)."""
        kind = self.contestant.kind
        if kind == "lru":
            return int(self.cache.currsize)
        if kind == "lru_cache":
            return sum(self._shadow.values())
        if kind == "volcache":
            return self.cache.info().stored_bytes
        if kind in ("cachebox", "lru-dict"):
            return sum(len(value) for value in self.cache.values())
        return 0  # diskcache: on disk, its page cache reclaimable; the others hold nothing

    def _no_cache_get(self, key: int) -> tuple[bytes, bool]:
        return self._make(key), False

    def close(self) -> None:
        """Release the cache's memory."""
        if self.contestant.kind == "volcache":
            self.cache.close()
            self._owned_backend.close()
        elif self.contestant.kind == "diskcache":
            self.cache.close()
            shutil.rmtree(self._directory, ignore_errors=True)
