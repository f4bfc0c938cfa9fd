"""VolatileCache: a cachetools-style mapping whose values live in volatile memory."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import pickle
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterator,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import Any

import cachetools

from .backends import Backend, get_backend
from .backends.limits import process_limit
from .codecs import Codec, Decoder, check_codec
from .flight import SingleFlight
from .info import CacheInfo
from .pins import Pin
from .slab import Extent, SlabAllocator

_COLD = object()  # entry.value when the decoded value is not kept (the entry is not hot)
_MISSING = object()
_GETITEM = object()  # "no default": a lookup as cache[key]
_NO_EXTENT = Extent(None, 0, 0, 0, 0, 0, None)  # a purged placeholder's: no memory
_MAINTAIN_EVERY = 1024  # hot hits between maintenance passes (a power of two)


class _Entry:
    __slots__ = (
        "decode",
        "detached",
        "extent",
        "hot_since",
        "key",
        "pins",
        "purged",
        "raw",
        "size",
        "touched",
        "value",
    )

    def __init__(
        self, key: Hashable, extent: Extent, decode: Decoder, raw: bool, size: float
    ) -> None:
        self.key = key
        self.extent = extent
        self.decode = decode
        self.raw = raw
        self.size = size
        self.value: Any = _COLD
        self.pins = 0
        # In the hot set: when it was last known used (set when it is promoted
        # or found touched by maintenance), and whether a hit touched it since.
        self.hot_since = 0.0
        self.touched = False
        self.detached = False  # removed from the mapping while pinned: freed at the last unpin
        self.purged = False  # its bytes are gone: a placeholder until regenerated


_ENTRY_BYTES = 430  # an entry's own objects besides its key (benchmarks/test_footprint.py)
_BUDGET_SHARE = 8  # the default memory_budget: an eighth of the process's memory limit
_SWEEP_SECONDS = 1.0  # the idle work looks for purged pages at most this often
_COMPACT_AFTER = 1024  # stale queue items past the live entries before the queue is rebuilt
_POP_TRIES = 3  # rounds of regenerating a purged entry in pop() before returning the value

# By id: a mapping is unhashable, so it cannot be in a WeakSet.
_ALL: weakref.WeakValueDictionary[int, VolatileCache] = weakref.WeakValueDictionary()


def _new_locks_in_child() -> None:
    # Locks and flights held at fork() by other threads: those threads do not
    # exist in the child, and waiting for them would hang it.
    for cache in list(_ALL.values()):
        cache._lock = threading.RLock()
        cache._flight = SingleFlight()


os.register_at_fork(after_in_child=_new_locks_in_child)


@functools.cache
def default_memory_budget() -> int:
    """An eighth of the memory this process may use (its cgroup's limit, else the
    machine's memory), read once per process."""
    return process_limit() // _BUDGET_SHARE


class VolatileCache(MutableMapping):
    """A mapping whose values live in memory the operating system may purge.

    It behaves like a cachetools cache (``maxsize``, ``getsizeof``,
    ``currsize``, ``__missing__``, LRU eviction past a finite ``maxsize``) and
    is thread safe. Values are stored in volatile memory from ``backend``;
    recently used entries stay *hot* (decoded and pinned, so a hit costs a
    dict lookup), the rest is marked volatile in batches. Under memory pressure
    the backend purges volatile pages; an entry found purged on access is
    regenerated with ``regenerate(key)`` (or a subclass's ``__missing__``),
    else it is a miss.

    Args:
        maxsize: the largest ``currsize``; unbounded by default, since the
            backend's purges are the bound.
        getsizeof: the size of a value in ``maxsize`` units (1 by default).
        backend: a backend name (``"auto"``, ``"kernel"``, ...) or a
            :class:`~volcache.backends.Backend`, which the cache then does not close.
        backend_options: options for a backend given by name.
        regenerate: ``regenerate(key) -> value`` for purged or absent keys.
        codec: how values become bytes (default: buffers raw, the rest pickled).
        hot_bytes: stored bytes kept hot at most.
        hot_seconds: a hot entry idle this long goes volatile (None: never by time).
        idle_interval: if set, a background thread does the idle work every
            this many seconds, so that a program that stops calling the cache
            still gives its memory back.
        slab_bytes: the size of the regions taken from the backend.
        mark_batch: idle pages gathered before they are marked volatile.
        clock: the time source, in seconds (injectable for tests).
        memory_budget: bytes the entries' own objects (keys included, values
            not: those are volatile) may take; past it the oldest entries are
            evicted whole (least recently used with a ``maxsize``, else stored
            first). Default: an eighth of the memory limit the process runs
            under (its cgroup's, else the machine's).

    ``key in cache`` and ``len(cache)`` count the entries stored and not
    deleted or evicted. A purge is found only when an entry's pages are
    re-pinned; a cache that can regenerate (``regenerate``, or a subclass's
    ``__missing__``) then keeps the key and regenerates its value on the next
    access, so purges cost time but change nothing you can see. Without a way
    to regenerate, a purged entry leaves the mapping when its purge is found,
    like an eviction found late: until then it is counted.
    """

    def __init__(
        self,
        maxsize: float = math.inf,
        getsizeof: Callable[[Any], float] | None = None,
        *,
        backend: str | Backend = "auto",
        backend_options: Mapping[str, Any] | None = None,
        regenerate: Callable[[Any], Any] | None = None,
        codec: Codec | None = None,
        hot_bytes: int = 8 << 20,
        hot_seconds: float | None = 5.0,
        idle_interval: float | None = None,
        slab_bytes: int = 4 << 20,
        mark_batch: int = 64,
        clock: Callable[[], float] = time.monotonic,
        memory_budget: int | None = None,
    ) -> None:
        if not isinstance(maxsize, int | float) or math.isnan(maxsize) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative number, got {maxsize!r}")
        if getsizeof is not None:
            if not callable(getsizeof):
                raise TypeError(f"getsizeof must be callable, got {getsizeof!r}")
            self.getsizeof = getsizeof
        if regenerate is not None and not callable(regenerate):
            raise TypeError(f"regenerate must be callable, got {regenerate!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if not isinstance(hot_bytes, int) or hot_bytes < 0:
            raise ValueError(f"hot_bytes must be a non-negative int, got {hot_bytes!r}")
        if hot_seconds is not None and not hot_seconds > 0:
            raise ValueError(f"hot_seconds must be positive or None, got {hot_seconds!r}")
        if idle_interval is not None and not idle_interval > 0:
            raise ValueError(f"idle_interval must be positive or None, got {idle_interval!r}")
        if not isinstance(mark_batch, int) or mark_batch < 1:
            raise ValueError(f"mark_batch must be a positive int, got {mark_batch!r}")
        budget_ok = type(memory_budget) is int and memory_budget >= 1
        if memory_budget is not None and not budget_ok:
            raise ValueError(f"memory_budget must be a positive int or None, got {memory_budget!r}")
        self._codec = check_codec(codec)
        if isinstance(backend, Backend):
            if backend_options:
                raise TypeError("backend_options go with a backend name, not a Backend instance")
            if backend.closed:
                raise ValueError(f"backend {backend!r} is closed")
            self._backend, self._owns_backend = backend, False
        elif isinstance(backend, str):
            self._backend = get_backend(backend, **dict(backend_options or {}))
            self._owns_backend = True
        else:
            raise TypeError(
                f"backend must be a backend name or a volcache.backends.Backend, got {backend!r}"
            )
        if not isinstance(slab_bytes, int) or slab_bytes < self._backend.page_size:
            if self._owns_backend:  # made here, for a cache that will not be
                self._backend.close()
            raise ValueError(f"slab_bytes must be at least a page, got {slab_bytes!r}")
        self._config = {
            "maxsize": maxsize,
            "getsizeof": getsizeof,
            "backend": backend if isinstance(backend, str) else backend.name,
            "backend_options": dict(backend_options or {}),
            "regenerate": regenerate,
            "codec": codec,
            "hot_bytes": hot_bytes,
            "hot_seconds": hot_seconds,
            "idle_interval": idle_interval,
            "slab_bytes": slab_bytes,
            "mark_batch": mark_batch,
            "clock": clock,
            "memory_budget": memory_budget,
        }
        self._maxsize = maxsize
        self._budget = memory_budget if memory_budget is not None else default_memory_budget()
        self._index_nbytes = 0  # estimated: the entries' own objects, keys included
        self._regenerate = regenerate
        self._hot_limit = hot_bytes
        self._hot_seconds = hot_seconds
        self._mark_batch = mark_batch
        self._clock = clock
        self._lock = threading.RLock()
        self._flight = SingleFlight()
        _ALL[id(self)] = self
        self._slabs = SlabAllocator(self._backend, slab_bytes)
        self._entries: dict[Hashable, _Entry] = {}
        # Exact LRU order, needed only to evict past a finite maxsize.
        self._lru: OrderedDict[Hashable, None] | None = (
            None if maxsize == math.inf else OrderedDict()
        )
        self._hot: OrderedDict[Hashable, _Entry] = OrderedDict()  # in order of promotion
        # Without a maxsize there is no LRU order; the budget evicts in order of
        # storing, from a queue of entries with lazy deletion (compacted when
        # more than half of it is stale).
        self._order: deque[_Entry] | None = deque() if self._lru is None else None
        self._stale = 0
        self._last_sweep = clock()
        self._hot_nbytes = 0
        self._active_nbytes = 0
        self._currsize: float = 0
        self._now = clock()
        self._hot_hits = itertools.count(1)  # next() is atomic: counts hits taken without the lock
        self._counts = dict.fromkeys(
            ("hits", "misses", "purged", "purged_bytes", "regenerated", "evictions"), 0
        )
        self._regen_seconds = 0.0
        self._lingering: list[Pin] = []
        self._closed = False
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        if idle_interval is not None:
            self._start_timer(idle_interval)

    # -- cachetools surface --------------------------------------------------------

    @staticmethod
    def getsizeof(value: Any) -> float:
        """The size of a value in ``maxsize`` units: 1, unless ``getsizeof`` was given."""
        return 1

    @property
    def maxsize(self) -> float:
        """The largest ``currsize`` before LRU eviction (``math.inf``: unbounded)."""
        return self._maxsize

    @property
    def currsize(self) -> float:
        """The sum of ``getsizeof`` over the entries."""
        return self._currsize

    @property
    def backend(self) -> Backend:
        """The backend holding the values."""
        return self._backend

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __getitem__(self, key: Hashable) -> Any:
        # The hot hit takes no lock: one dict lookup and attribute stores, all
        # atomic under the GIL. A racing demotion or delete is harmless: the
        # value read is still the value stored. Anything else takes the lock.
        try:
            entry = self._entries[key]
        except KeyError:
            return self._get_slow(key, _GETITEM)
        value = entry.value
        if value is _COLD:
            return self._get_slow(key, _GETITEM)
        entry.touched = True
        if self._lru is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs 100 ns on the hot hit
                self._lru.move_to_end(key)
            except KeyError:
                pass
        if not next(self._hot_hits) & 1023:  # every 1024 hot hits (_MAINTAIN_EVERY)
            with self._lock:
                self._maintain()
        return value

    def __missing__(self, key: Hashable) -> Any:
        """Called for an absent or purged key: ``regenerate(key)``, stored, or ``KeyError``."""
        if self._regenerate is None:
            raise KeyError(key)
        value = self._regenerate(key)
        if hasattr(value, "__await__") or hasattr(value, "cr_frame"):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # no "coroutine was never awaited" warning on top of our error
            raise TypeError(
                f"regenerate({key!r}) returned an awaitable ({type(value).__name__}); "
                "VolatileCache calls regenerate synchronously: pass a plain function"
            )
        try:
            self[key] = value
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"regenerate({key!r}) returned a value the cache cannot store: {exc}"
            ) from exc
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        hash(key)  # an unhashable key fails here, before anything changes
        size = self.getsizeof(value)
        if size > self._maxsize:
            raise ValueError("value too large")
        if size < 0:
            raise ValueError("value size must be non-negative")
        data, decode, raw = self._codec.encode_with_decoder(value)
        with self._lock:
            self._check_open()
            extent, lost = self._slabs.allocate(data.nbytes, None)
            try:
                if data.nbytes:
                    view = extent.view()
                    view[:] = data
                    view.release()
            except BaseException:
                self._slabs.free(extent)
                raise
            finally:
                self._lose(lost)
            entry = _Entry(key, extent, decode, raw, size)
            extent.owner = entry
            self._active_nbytes += data.nbytes
            old = self._entries.get(key)
            if old is not None:
                self._remove(old)
            self._make_room(size)
            self._entries[key] = entry
            self._index_nbytes += _ENTRY_BYTES + sys.getsizeof(key)
            if self._lru is not None:
                self._lru[key] = None
            else:
                self._order.append(entry)
            self._currsize += size
            # A buffer the caller may change or release (bytearray, memoryview,
            # arrays) is not what a hit returns: its stored copy is.
            self._promote(entry, value if not raw or type(value) is bytes else _COLD)
            if self._index_nbytes > self._budget:
                self._fit_budget(entry)
            self._maintain()

    def __delitem__(self, key: Hashable) -> None:
        with self._lock:
            self._check_open()
            self._remove(self._entries[key])

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} entries"
        return (
            f"{type(self).__name__}({state}, currsize={self._currsize}, maxsize={self._maxsize}, "
            f"backend={self._backend.name!r})"
        )

    # Not MutableMapping's: they rely on __getitem__ raising KeyError, which a
    # __missing__ that regenerates does not (cachetools makes the same choice).

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``, or ``default``; never calls ``__missing__`` for an absent key.

        A stored entry found purged is regenerated if the cache can (``regenerate``
        or a subclass's ``__missing__``), else ``default`` is returned.
        """
        return self._get_slow(key, default)

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (regenerated if purged and possible).

        Atomic: the entry removed is the one whose value is returned, whatever
        other threads store meanwhile.
        """
        value = _MISSING
        for _ in range(_POP_TRIES):
            with self._lock:
                entry, value = self._lookup(key)
                if value is not _MISSING:
                    self._remove(entry)
                    return value
                if entry is None or not self._can_regenerate():
                    break
            # Regenerated values are stored; the next round takes what is there then.
            value = self._regenerate_key(key)
        if value is not _MISSING:
            return value  # regenerated each round and purged again: returned, not kept
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``; if absent (or purged beyond regeneration) store ``default``.

        Atomic: ``default`` is stored only where no value is.
        """
        with self._lock:
            entry, value = self._lookup(key)
            if value is not _MISSING:
                return value
            if entry is None or not self._can_regenerate():
                self[key] = default
                return default
        return self._regenerate_key(key)

    def _lookup(self, key: Hashable) -> tuple[_Entry | None, Any]:
        """Under the lock: (the entry or None, its value or ``_MISSING`` if absent or purged)."""
        self._check_open()
        entry = self._entries.get(key)
        value = _MISSING if entry is None else self._hit(entry)
        if value is _MISSING:
            self._counts["misses"] += 1
        return entry, value

    def popitem(self) -> tuple[Hashable, Any]:
        """Remove and return the least recently used ``(key, value)`` pair.

        Entries found purged on the way are dropped (and counted as purged).
        """
        while True:
            with self._lock:
                self._check_open()
                entry = self._oldest()
                if entry is None:
                    raise KeyError(f"{type(self).__name__} is empty")
                key = entry.key
                value = self._read(entry)
                if self._entries.get(key) is entry:
                    self._remove(entry)
                if value is not _MISSING:
                    return key, value

    def clear(self) -> None:
        """Remove every entry (pinned ones are freed when their pins end)."""
        with self._lock:
            self._check_open()
            for entry in list(self._entries.values()):
                self._remove(entry)

    def items(self) -> ItemsView:
        """Items of the entries that are intact (or regenerated) when iterated."""
        return _Items(self)

    def values(self) -> ValuesView:
        """Values of the entries that are intact (or regenerated) when iterated."""
        return _Values(self)

    # -- volcache's own --------------------------------------------------------------------

    def pin(self, key: Hashable) -> Pin:
        """A context manager: a read-only, zero-copy view of a buffer value.

        The entry stays non-volatile inside the block (pins are counted, and
        nest); the view is released at its end. A purged entry is regenerated
        first if the cache can, else it is a ``KeyError``.

        Raises:
            KeyError: no such key (or purged and not regenerable).
            TypeError: the value is not stored as raw bytes (it was pickled).
        """
        return Pin(self, key)

    def volatilize(self) -> int:
        """Make every entry that is not pinned volatile now, hot ones included.

        For a program about to go idle. Returns the bytes marked volatile.
        """
        with self._lock:
            self._check_open()
            while self._hot:
                self._demote(next(iter(self._hot.values())))
            return self._slabs.flush() * self._backend.page_size

    def maintain(self) -> None:
        """Do the idle work now: demote idle hot entries, mark pending pages volatile,
        and drop the entries whose pages were purged."""
        with self._lock:
            self._check_open()
            self._maintain(flush=True)
            self._sweep()

    def _sweep(self) -> None:
        """Entries on pages the backend knows purged go now, not when asked for.

        Their objects are memory no purge takes back: without a way to
        regenerate they leave the mapping (as a purge found on access makes
        them), with one they stay as placeholders, their pages freed.
        """
        self._last_sweep = self._now
        self._lose(self._slabs.purged_owners())

    def info(self) -> CacheInfo:
        """Counters and sizes, as a :class:`CacheInfo`."""
        with self._lock:
            slabs = self._slabs.stats()
            counts = self._counts
            return CacheInfo(
                hits=counts["hits"] + _count_of(self._hot_hits),
                misses=counts["misses"],
                purged=counts["purged"],
                regenerated=counts["regenerated"],
                regeneration_seconds=self._regen_seconds,
                evictions=counts["evictions"],
                entries=len(self._entries),
                currsize=self._currsize,
                maxsize=self._maxsize,
                hot_entries=len(self._hot),
                hot_bytes=self._hot_nbytes,
                pinned_entries=sum(1 for e in self._entries.values() if e.pins),
                pinned_bytes=self._active_nbytes,
                volatile_bytes=slabs["volatile_bytes"],
                pending_bytes=slabs["pending_bytes"],
                purged_bytes=counts["purged_bytes"],
                stored_bytes=slabs["stored_bytes"],
                slab_bytes=slabs["slab_bytes"],
                wasted_bytes=slabs["wasted_bytes"],
                backend=self._backend.name,
                nonvolatile_bytes=self._index_nbytes + self._hot_nbytes,
                memory_budget=self._budget,
            )

    def close(self) -> None:
        """Release all memory (and the backend, if the cache created it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._entries.clear()
            self._hot.clear()
            if self._lru is not None:
                self._lru.clear()
            else:
                self._order.clear()
                self._stale = 0
            self._index_nbytes = 0
            self._currsize = 0
            self._hot_nbytes = self._active_nbytes = 0
            self._slabs.close()
            if self._owns_backend:
                self._backend.close()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join()

    def __enter__(self) -> VolatileCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy holds the live values; purged ones are dropped, not regenerated.
        with self._lock:
            self._check_open()
            order = list(self._lru if self._lru is not None else self._entries)
            items = []
            for key in order:
                value = self._read(self._entries[key]) if key in self._entries else _MISSING
                if value is not _MISSING:
                    items.append((key, value))
        return _rebuild, (type(self), self._config, items)

    # -- internals (the lock is held) -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")

    def _get_slow(self, key: Hashable, default: Any) -> Any:
        """A lookup under the lock; ``default is _GETITEM`` means ``cache[key]``.

        Absent: ``__missing__`` for ``cache[key]``, else ``default``. Purged:
        regenerated if the cache can, else as absent.
        """
        with self._lock:
            entry, value = self._lookup(key)
            if value is not _MISSING:
                return value
        if default is _GETITEM or (entry is not None and self._can_regenerate()):
            return self._regenerate_key(key)
        return default

    def _hit(self, entry: _Entry, count: bool = True) -> Any:
        """The value of a stored entry, promoted to hot; ``_MISSING`` if purged.

        ``count=False``: a look that is not a lookup of its own (counted already).
        """
        if entry.purged:
            return _MISSING
        value = entry.value
        if value is _COLD:
            lost = self._activate(entry)
            if entry in lost:
                return _MISSING
            try:
                value = _decode(entry)
            except BaseException:
                if entry.pins == 0:
                    self._deactivate(entry)
                raise
            self._promote(entry, value)
            self._maintain()
        else:
            entry.touched = True
        if self._lru is not None:
            self._lru.move_to_end(entry.key)
        self._counts["hits"] += count
        return value

    def _hot_value(self, key: Hashable) -> Any:
        """A hot entry's value without the lock, else ``_MISSING``.

        ``__getitem__`` has the same lines inline: a call more would cost its
        hot hit a quarter of its time.
        """
        entry = self._entries.get(key)
        if entry is None:
            return _MISSING
        value = entry.value
        if value is _COLD:
            return _MISSING
        entry.touched = True
        if self._lru is not None:
            try:  # noqa: SIM105 - contextlib.suppress costs 100 ns here
                self._lru.move_to_end(key)
            except KeyError:
                pass
        if not next(self._hot_hits) & 1023:
            with self._lock:
                self._maintain()
        return value

    def _probe(self, key: Hashable, count: bool = True) -> tuple[Any, bool]:
        """(the value or ``_MISSING``, whether a stored entry was found purged).

        For memoizing wrappers, which recompute with the call's own arguments:
        never calls ``__missing__``. ``count=False`` is a wrapper's second look
        inside its single flight: the call was counted as a miss already.
        """
        if count:
            value = self._hot_value(key)
            if value is not _MISSING:
                return value, False
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            value = _MISSING if entry is None else self._hit(entry, count)
            if value is _MISSING:
                self._counts["misses"] += count
            return value, entry is not None and value is _MISSING

    def _can_regenerate(self) -> bool:
        return (
            self._regenerate is not None or type(self).__missing__ is not VolatileCache.__missing__
        )

    def _regenerate_key(self, key: Hashable) -> Any:
        """``__missing__(key)``, once at a time per key across threads."""

        def compute(key: Hashable) -> Any:
            with self._lock:  # a flight that just ended may have stored it
                self._check_open()
                entry = self._entries.get(key)
                value = _MISSING if entry is None else self._hit(entry)
            if value is not _MISSING:
                return value
            start = time.perf_counter()
            value = self.__missing__(key)
            with self._lock:
                self._counts["regenerated"] += 1
                self._regen_seconds += time.perf_counter() - start
            return value

        return self._flight.run(key, compute)

    def _read(self, entry: _Entry) -> Any:
        """The entry's value, re-pinning and decoding it if cold; ``_MISSING`` if purged."""
        if entry.purged:
            return _MISSING
        value = entry.value
        if value is not _COLD:
            return value
        lost = self._activate(entry)
        if entry in lost:
            return _MISSING
        try:
            value = _decode(entry)
        finally:
            if entry.pins == 0:
                self._deactivate(entry)
        return value

    def _activate(self, entry: _Entry) -> list[_Entry]:
        """Pin an entry's pages; returns the entries a purge took (removed already)."""
        if entry.extent.active:
            return []
        lost = self._slabs.activate(entry.extent)
        self._active_nbytes += entry.extent.nbytes
        self._lose(lost)
        return lost

    def _deactivate(self, entry: _Entry) -> None:
        if entry.extent.active:
            self._active_nbytes -= entry.extent.nbytes
            self._slabs.deactivate(entry.extent)

    def _lose(self, lost: list[Any]) -> None:
        """Entries whose bytes a purge took: their memory is freed.

        A cache that can regenerate keeps them in the mapping as placeholders,
        regenerated on their next access; otherwise they leave it, like an
        eviction found late.
        """
        for entry in lost:
            if entry is None or entry.purged:
                continue
            self._counts["purged"] += 1
            self._counts["purged_bytes"] += entry.extent.nbytes
            if self._entries.get(entry.key) is not entry:
                self._release(entry)
            elif self._can_regenerate():
                self._demote(entry)
                self._deactivate(entry)
                self._slabs.free(entry.extent)
                entry.extent = _NO_EXTENT
                entry.purged = True
            else:
                self._remove(entry)

    def _promote(self, entry: _Entry, value: Any) -> None:
        """Keep the decoded value, pages pinned, in the hot set (if it fits at all).

        ``_COLD`` for ``value``: decode it from the stored bytes.
        """
        nbytes = entry.extent.nbytes
        if nbytes > self._hot_limit:
            if entry.pins == 0:
                self._deactivate(entry)
            return
        entry.value = _decode(entry) if value is _COLD else value
        entry.hot_since = self._now
        entry.touched = False
        self._hot[entry.key] = entry
        self._hot_nbytes += nbytes

    def _demote(self, entry: _Entry) -> None:
        if self._hot.get(entry.key) is entry:
            del self._hot[entry.key]
        if entry.value is not _COLD:
            entry.value = _COLD
            self._hot_nbytes -= entry.extent.nbytes
        if entry.pins == 0:
            self._deactivate(entry)

    def _remove(self, entry: _Entry) -> None:
        """Take an entry out of the mapping; its memory goes when no pin holds it."""
        del self._entries[entry.key]
        self._index_nbytes -= _ENTRY_BYTES + sys.getsizeof(entry.key)
        if self._lru is not None:
            self._lru.pop(entry.key, None)
        else:
            self._stale += 1
            if self._stale > len(self._entries) + _COMPACT_AFTER:
                entries = self._entries
                self._order = deque(e for e in self._order if entries.get(e.key) is e)
                self._stale = 0
        self._currsize -= entry.size
        self._demote(entry)
        self._release(entry)

    def _release(self, entry: _Entry) -> None:
        if entry.pins:
            entry.detached = True
            return
        self._deactivate(entry)
        self._slabs.free(entry.extent)

    def _oldest(self) -> _Entry | None:
        """The entry to evict first: least recently used with a maxsize, else stored first."""
        if self._lru is not None:
            return self._entries[next(iter(self._lru))] if self._lru else None
        order, entries = self._order, self._entries
        while order:
            entry = order[0]
            if entries.get(entry.key) is entry:
                return entry
            order.popleft()
            self._stale -= 1
        return None

    def _fit_budget(self, keep: _Entry) -> None:
        """Evict whole entries until their own memory is within ``memory_budget``."""
        custom = type(self).popitem is not VolatileCache.popitem
        while self._index_nbytes > self._budget:
            victim = self._oldest()
            if victim is None or victim is keep:
                return
            if custom:
                self.popitem()  # a subclass watching evictions, as with cachetools
            else:
                self._remove(victim)
            self._counts["evictions"] += 1

    def _make_room(self, size: float) -> None:
        """Evict least recently used entries until ``size`` more fits in ``maxsize``."""
        if self._lru is None:
            return
        custom = type(self).popitem is not VolatileCache.popitem
        while self._currsize + size > self._maxsize and self._entries:
            if custom:
                self.popitem()  # a subclass watching evictions, as with cachetools
            else:
                self._remove(self._entries[next(iter(self._lru))])
            self._counts["evictions"] += 1

    def _maintain(self, flush: bool = False) -> None:
        """Demote hot entries past the byte budget or idle too long; mark idle pages."""
        self._now = now = self._clock()
        if now - self._last_sweep >= _SWEEP_SECONDS:
            self._sweep()
        hot = self._hot
        oldest_use = -math.inf if self._hot_seconds is None else now - self._hot_seconds
        for _ in range(len(hot)):
            entry = next(iter(hot.values()))
            if entry.touched:
                # Used since it was placed here: a second chance at the end (CLOCK).
                entry.touched = False
                entry.hot_since = now
                hot.move_to_end(entry.key)
                continue
            if self._hot_nbytes > self._hot_limit or entry.hot_since <= oldest_use:
                self._demote(entry)
                continue
            break
        self._retry_lingering()
        if flush or self._slabs.npending >= self._mark_batch:
            self._slabs.flush()

    def _pin(self, key: Hashable) -> tuple[_Entry, tuple[Any, ...]] | None:
        """Pin a stored entry and make its views; None if absent or purged."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is not None and not entry.purged:
                if not entry.raw:
                    raise TypeError(
                        f"pin() gives the bytes of buffer values; {key!r} holds a pickled object"
                    )
                if entry not in self._activate(entry):
                    entry.pins += 1
                    self._counts["hits"] += 1
                    # The PickleBuffer between the user's view and ours makes every
                    # buffer derived from the user's view (a slice, a numpy array)
                    # an export of ours: we can tell when one outlives the pin.
                    base = entry.extent.view()
                    inner = base.toreadonly()
                    shield = pickle.PickleBuffer(inner)
                    return entry, (memoryview(shield), shield, inner, base)
            self._counts["misses"] += 1
            return None

    def _unpin(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.pins or self._closed:
                return
            if entry.detached:
                self._deactivate(entry)
                self._slabs.free(entry.extent)
            elif entry.value is _COLD:
                self._deactivate(entry)

    def _linger(self, pin: Pin) -> None:
        with self._lock:
            self._lingering.append(pin)

    def _retry_lingering(self) -> None:
        if self._lingering:
            self._lingering = [pin for pin in self._lingering if not pin._try_finish()]

    def _start_timer(self, interval: float) -> None:
        ref = weakref.ref(self)
        stop = self._stop

        def run() -> None:
            while not stop.wait(interval):
                cache = ref()
                if cache is None or cache._closed:
                    return
                with cache._lock:
                    if not cache._closed:
                        cache._maintain(flush=True)
                del cache

        self._timer = threading.Thread(target=run, name="volcache-idle", daemon=True)
        self._timer.start()
        weakref.finalize(self, stop.set)


def _decode(entry: _Entry) -> Any:
    view = entry.extent.view().toreadonly()
    try:
        return entry.decode(view)
    finally:
        # Harmless after a guarded decoder released it; if a guarded decoder
        # found a leak, its TypeError is what the caller must see.
        with contextlib.suppress(BufferError):
            view.release()


def _count_of(counter: itertools.count) -> int:
    """How many times ``next`` was called on a counter that started at 1."""
    return int(repr(counter)[6:-1]) - 1


def _rebuild(
    cls: type[VolatileCache], config: dict[str, Any], items: list[tuple[Any, Any]]
) -> VolatileCache:
    cache = cls(**config)
    for key, value in items:
        cache[key] = value
    return cache


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        cache = self._mapping
        for key in cache:
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                yield key, value


class _Values(ValuesView):
    def __iter__(self) -> Iterator[Any]:
        cache = self._mapping
        for key in cache:
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                yield value


cachetools.Cache.register(VolatileCache)
