"""VolatileCache: a cachetools-style mapping whose values live in volatile memory."""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import threading
import time
import weakref
from collections import deque
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
from .budget import MemoryBudget, shared_default_budget
from .codecs import Codec, Decoder, check_codec
from .entries import COLD, HASH_MASK, MISSING, SEEN_BYTES, SEEN_LIMIT, Entries, Entry
from .events import deferring, notifying_lock
from .flight import SingleFlight
from .hotpath import GETITEM as _GETITEM
from .hotpath import Expired as _Expired
from .hotpath import HotBase
from .info import CacheInfo
from .keys import key_bytes
from .pins import Pin, pin_views
from .quick import quick_plan
from .records import NONE, REFERENCED
from .store import OWN_DECODER, SPECIAL_KEY
from .tiers.base import Tier
from .tiers.bound import MISSING as TIER_MISSING
from .tiers.bound import BoundTier

_MISSING = MISSING  # the decorator's name for it
_TIER_ONLY = object()  # in a flight's key: a get() asking the tier, which regenerates nothing
_MAINTAIN_EVERY = 1024  # hot hits between maintenance passes (a power of two)
_SWEEP_SECONDS = 1.0  # the idle work looks for purged pages at most this often
_SWEEP_OVER_BUDGET = 0.05  # over the budget, purged records are dropped first, this often
_POP_TRIES = 3  # rounds of regenerating a purged entry in pop() before returning the value
_EXPIRE_STEP = 256  # expired entries the idle work removes at most, each time
_REPORT_EVERY = 15  # stores & this == 0: the budget hears of them
_IDLE_WORK_EVERY = 63  # stores & this == 0: the idle work runs


# By id: a mapping is unhashable, so it cannot be in a WeakSet.
_ALL: weakref.WeakValueDictionary[int, VolatileCache] = weakref.WeakValueDictionary()


def _new_locks_in_child() -> None:
    # Locks and flights held at fork() by other threads: those threads do not
    # exist in the child, and waiting for them would hang it.
    for cache in list(_ALL.values()):
        cache._lock = cache._new_lock()
        cache._flight = SingleFlight()
        cache._plan_quick()  # the plan holds the lock


os.register_at_fork(after_in_child=_new_locks_in_child)


class VolatileCache(HotBase, MutableMapping):  # type: ignore[misc]
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
        hot_bytes: stored bytes kept hot at most (and at most half the
            ``memory_budget``; the hot entries' objects at most a quarter).
        hot_seconds: a hot entry idle this long goes volatile (None: never by time).
        idle_interval: if set, a background thread does the idle work every
            this many seconds, so that a program that stops calling the cache
            still gives its memory back.
        slab_bytes: the size of the regions taken from the backend.
        mark_batch: idle pages gathered before they are marked volatile.
        clock: the time source, in seconds (injectable for tests).
        tier: a :class:`~volcache.tiers.Tier` shared with other processes:
            a local miss or purge asks it before regenerating, a value found
            there is stored here, and stores, ``del``, ``pop`` and ``clear``
            go through to it.
        namespace: the tier namespace of this cache's keys (default: the
            tier's own; one of them is needed with a tier).
        ttl: seconds an entry lives after it was stored, or ``ttl(key, value)``
            giving them per entry (None: for ever). An expired entry is
            absent (``in`` is false, a lookup misses or regenerates); the idle
            work frees it, :meth:`expire` at once.
        timer: the clock of ``ttl``, in seconds (injectable for tests).
        on_evict: ``on_evict(key, reason)`` when an entry leaves other than by
            ``del``, ``pop`` or ``clear``: ``"evicted"`` (past ``maxsize`` or
            the memory budget), ``"expired"``, or ``"purged"`` (a lookup found
            its bytes purged and the cache cannot regenerate it). Called with
            the cache's lock released; an exception in it goes to
            ``sys.unraisablehook``.
        memory_budget: bytes of the cache's own memory that no purge takes
            back (records, books, Python objects, hot values; see
            ``info().nonvolatile_bytes``); past it the least recently used
            entries are evicted whole. A :class:`~volcache.MemoryBudget` is a
            limit shared with the other caches given it. Default: one budget
            shared by all caches made without one, an eighth of the memory
            limit the process runs under (its cgroup's, else the machine's).

    An idle entry is a record of a few machine words; its key is stored
    beside its value in volatile memory (keys of exact built-in types:
    ``int``, ``str``, ``bytes``, ``tuple``, ...; other keys stay Python objects).
    A purge takes key and value together: ``key in cache`` and ``len(cache)``
    count the entries stored and not deleted, evicted or found purged. Purges
    are found when an entry's pages are re-pinned (a lookup, ``in``,
    iteration) and by the idle work, which asks the backend which volatile
    pages are gone. A purged key is then absent: ``cache[key]`` regenerates it
    through ``__missing__`` if the cache can (``regenerate``, or a subclass's
    ``__missing__``), and ``get`` or ``pin`` regenerate a key whose purge they
    find themselves.

    Its hot hit is a C base class (:mod:`volcache.hotpath`): a subclass may mix
    in classes without instance fields of their own (no ``__slots__`` names,
    not ``dict``), as with any class with a C layout.
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
        memory_budget: int | MemoryBudget | None = None,
        tier: Tier | None = None,
        namespace: str | None = None,
        ttl: float | Callable[[Any, Any], float | None] | None = None,
        timer: Callable[[], float] = time.monotonic,
        on_evict: Callable[[Any, str], Any] | None = None,
    ) -> None:
        if not isinstance(maxsize, int | float) or math.isnan(maxsize) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative number, got {maxsize!r}")
        if getsizeof is not None:
            if not callable(getsizeof):
                raise TypeError(f"getsizeof must be callable, got {getsizeof!r}")
            # An instance's own, as cachetools lets it be:
            self.getsizeof = getsizeof  # type: ignore[method-assign, assignment]
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
        if not (memory_budget is None or budget_ok or isinstance(memory_budget, MemoryBudget)):
            raise ValueError(
                "memory_budget must be a positive int, a MemoryBudget or None, "
                f"got {memory_budget!r}"
            )
        seconds_ok = isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > 0
        if not (ttl is None or callable(ttl) or seconds_ok):
            raise ValueError(f"ttl must be positive seconds, a callable or None, got {ttl!r}")
        if not callable(timer):
            raise TypeError(f"timer must be callable, got {timer!r}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, got {on_evict!r}")
        self._codec = check_codec(codec)
        self._tier: BoundTier | None = None
        if tier is not None:
            namespace = namespace or getattr(tier, "namespace", None)
            if not namespace:
                raise ValueError(
                    "a VolatileCache with a tier needs a namespace for its keys: "
                    "VolatileCache(tier=..., namespace='...') or the tier's namespace="
                )
            self._tier = BoundTier(tier, namespace, self._codec)
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
            "tier": tier,
            "namespace": namespace if tier is not None else None,
            "ttl": ttl,
            "timer": timer,
            "on_evict": on_evict,
        }
        self._ttl = ttl
        self._ttl_timer = timer
        self._on_evict = on_evict
        self._maxsize = maxsize
        if memory_budget is None:
            self._pool = shared_default_budget()
        elif isinstance(memory_budget, MemoryBudget):
            self._pool = memory_budget
        else:
            self._pool = MemoryBudget(memory_budget)
        self._budget = self._pool.limit
        self._reported = 0  # the bytes last reported to the budget
        self._stores = 0
        self._report_step = max(1, self._budget >> 10)
        self._regenerate = regenerate
        self._hot_limit = min(hot_bytes, self._budget // 2)
        self._hot_seconds = hot_seconds
        self._mark_batch = mark_batch
        self._clock = clock
        self._flight = SingleFlight()
        _ALL[id(self)] = self
        self._pool.join(self)
        sized = getsizeof is not None or type(self).getsizeof is not VolatileCache.getsizeof
        self._sized = sized  # else every value's size is 1: no call for it
        self._entries = Entries(
            self._backend, slab_bytes, sized, exact=maxsize != math.inf,
            timer=timer if ttl is not None else None, events=on_evict is not None,
        )  # fmt: skip
        self._lock = self._new_lock()
        self._entries.seen_limit = max(16, min(SEEN_LIMIT, self._budget // (SEEN_BYTES * 16)))
        # The lock-free hot hit reads these two directly.
        self._objects = self._entries.objects
        self._hot = self._entries.hot
        # With a maxsize, the order is exact: hot hits keep the hot set in LRU
        # order, idle records are in lists by the stamp of their last use, and
        # eviction takes the least recently used of both. Without one, a hot
        # hit only stamps the entry and idle records are ordered by a CLOCK:
        # no memory spent on an exact order that only the budget would use.
        self._exact_lru = maxsize != math.inf
        # What a hot hit calls with (key, entry) to keep the order (and, with a
        # TTL, to check the time): None without either (one test of it costs
        # the hit less than testing _exact_lru and then calling). move_to_end
        # takes the entry as its ``last``, which an object is (true).
        self._uses = self._entries.clock
        self._tick = self._entries.tick
        self._touch: Callable[[Hashable, Any], Any] | None = (
            self._check_ttl
            if ttl is not None
            else self._hot.move_to_end
            if self._exact_lru
            else None
        )
        # The tick from which a lock-free hit does the maintenance (a threshold, not a
        # multiple: locked uses take ticks too, and could take every multiple).
        self._maintain_at = _MAINTAIN_EVERY
        self._clears = 0  # clear() calls: a tier's value read before one is not stored after
        self._ticks_at: deque[tuple[int, float]] = deque()  # (tick, time), see _idle_before
        self._last_sweep = clock()
        self._entries.now = clock()
        self._counts = dict.fromkeys(("hits", "misses", "regenerated", "evictions"), 0)
        self._regen_seconds = 0.0
        self._lingering: list[Pin] = []
        self._closed = False
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        if idle_interval is not None:
            self._start_timer(idle_interval)
        self._plan_quick()

    def _plan_quick(self) -> None:
        """Let ``self[key] = value`` store a new key in one call of the C core, where
        this cache's stores need nothing of Python's (see :mod:`volcache.quick`)."""
        self._quick = None
        custom_popitem = type(self).popitem is not VolatileCache.popitem
        if self._closed or self._tier is not None or custom_popitem:
            return
        self._quick = quick_plan(
            self._lock, self._entries, self._backend, self._hot, self._counts, self._pool,
            self._codec, self._maxsize, self._mark_batch, self._report_step,
            self._clock, self._hot_seconds,
        )  # fmt: skip

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
        return self._entries.currsize

    @property
    def backend(self) -> Backend:
        """The backend holding the values."""
        return self._backend

    @property
    def across_processes(self) -> bool:
        """Whether other processes read its values (through its tier): ``@cached``
        refuses methods then, whose keys name this process's instances."""
        return self._tier is not None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    # __getitem__ and _hot_value, the lock-free hot hit, are HotBase's (in C where
    # it was built): anything but a hot hit comes back here, to _get_slow.

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

    # cache[key] = value and del cache[key] are HotBase's (a new key is stored in
    # one call of the C core where _quick allows): the rest comes here.

    def _setitem(self, key: Hashable, value: Any) -> None:
        """``self[key] = value`` the Python way (and through the tier, if any)."""
        tier = self._tier
        if tier is None:
            self._set(key, value)
            return
        named = tier.key_of(key)  # a key the tier cannot name fails here, before anything
        encoded = self._set(key, value)
        if encoded is not None:  # not a value kept as an object: it can travel
            tier.store(named, encoded)  # after the lock: the server's time is not the cache's

    def _set_pickled(self, key: Hashable, value: Any, pickled: bytes | None) -> None:
        """``self[key] = value`` the Python way, for the C store that pickled ``value``
        as the default codec does (None: pickle refused it) and then handed the
        store on: its ``__reduce__`` runs once."""
        self._set(key, value, pickled=pickled)

    def _set(
        self, key: Hashable, value: Any, lifetime: float | None = None,
        clears: int | None = None, pickled: Any = MISSING,
    ) -> tuple[memoryview, Decoder] | None:  # fmt: skip
        """Store locally only (a value that came from the tier is not written back);
        the codec's (bytes, decoder) for it, None for a value kept as an object.

        ``lifetime``: with a TTL, the seconds it has left (a copy's entry), not
        the TTL's. ``clears``: :attr:`_clears` when the value was read from the
        tier; after a clear() since, it is not stored (it may be what the clear
        removed)."""
        h = hash(key) & HASH_MASK  # an unhashable key fails here, before anything changes
        size = self.getsizeof(value) if self._sized else 1
        if size > self._maxsize:
            raise ValueError("value too large")
        if size < 0:
            raise ValueError("value size must be non-negative")
        if pickled is None:  # see _set_pickled: kept as it is, an object no purge takes
            data, decode, raw = None, None, False
        elif pickled is not MISSING:
            data, decode, raw = memoryview(pickled), self._codec._pickle.decode, False  # type: ignore[attr-defined]
        else:
            try:
                data, decode, raw = self._codec.encode_with_decoder(value)
            except TypeError:  # the codec refuses it: kept as it is, an object no purge takes
                data, decode, raw = None, None, False
        serialized, special = key_bytes(key)
        expires = None
        if self._ttl is not None:  # the user's callable, before anything changes
            seconds: float | None
            if lifetime is not None:
                seconds = lifetime
            elif callable(self._ttl):
                seconds = self._ttl(key, value)
            else:
                seconds = self._ttl
            expires = math.inf if seconds is None else self._ttl_timer() + seconds
        with self._lock:
            if self._closed:
                self._check_open()
            if clears is not None and clears != self._clears:
                return None
            store = self._entries.store
            if data is None or decode is None:
                rid, lost = store.put_kept(h), list[int]()
                tag = OWN_DECODER
            else:
                tag, spec, flags = store.decoders.tag(decode, raw)
                if special:
                    flags |= SPECIAL_KEY
                rid, lost = store.put(h, data, serialized or b"", tag, spec, flags)
            own = serialized is None or tag == OWN_DECODER or data is None
            kept = value if data is None else MISSING
            self._settle_put(key, rid, lost, size, own, decode, kept, expires)
        return None if data is None or decode is None else (data, decode)

    def _settle_put(
        self, key: Hashable, rid: int, lost: list[int], size: float, own: bool,
        decode: Decoder | None, kept: Any, expires: float | None,
    ) -> None:  # fmt: skip
        """A record just put (``rid``, still active) joins the mapping: the records a
        purge took (``lost``) leave, an entry of the same key goes, room is made;
        then the idle work, if due. ``own``: it keeps a Python entry (its key or
        decoder has no record form, or ``kept`` is a value kept as an object).
        With the lock held; the C store (``core/quick.c``) calls it for what it
        leaves to Python."""
        entries = self._entries
        try:
            if lost:
                entries.lose(lost)
            old, old_rid = entries.locate(key)
            if old_rid != NONE:
                entries.remove(old, old_rid)
            if self._exact_lru:
                self._make_room(size)
        except BaseException:
            entries.store.free(rid)
            raise
        # Idle from the start: an entry becomes hot when it is read. A store
        # makes no Python object to keep, so that many stores of entries
        # never read again leave no garbage behind them.
        if own:
            entries.insert(rid, key, size, True, decode, kept)
            entries.idle(rid)
        else:
            entries.insert_idle(rid, size)
        if expires is not None:
            entries.set_expiry(rid, expires)
        self._after_store(rid, kept is not MISSING)

    def _after_idle_read(self) -> None:
        """Every 16th idle record remembered as read: the budget hears of them. With
        the lock held (the C core's idle hit calls it too)."""
        if self._report():
            self._fit_budget(NONE)

    def _after_store(self, rid: int, kept: bool = False) -> None:
        """A store was made (``rid``; ``kept``: a value kept as an object): counted;
        the budget and the idle work hear of it when due. With the lock held."""
        # What a store adds is a record's few bytes: the budget hears of it
        # every 16 stores while far from its limit (its margin covers what
        # 16 stores of each cache sharing it add), at once near it (or for a
        # value kept as an object, which may be large). The idle work runs
        # every 64 stores (a store adds nothing hot to demote); a batch of
        # pages waiting to be marked in between is marked alone, first (as
        # the C store marks it).
        stores = self._stores = self._stores + 1
        idle_work = not stores & _IDLE_WORK_EVERY
        if not idle_work:
            slabs = self._entries.store.slabs
            if slabs.npending >= self._mark_batch:
                slabs.flush()
        near = self._pool.used + (self._report_step << 4) >= self._pool.limit
        if (not stores & _REPORT_EVERY or kept or near) and self._report():
            self._fit_budget(rid)
        if idle_work:
            self._maintain()

    def _delitem(self, key: Hashable) -> None:
        """``del self[key]``."""
        with self._lock:
            self._check_open()
            entry, rid = self._entries.locate(key)
            if rid != NONE:
                self._entries.remove(entry, rid)
        if self._tier is not None:
            self._tier.remove(self._tier.key_of(key))
        if rid == NONE:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if self._ttl is None and key in self._objects:
            return True
        with self._lock:
            if self._closed:
                return False
            return self._entries.locate(key)[1] != NONE

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            if self._closed:
                return iter(())
            return iter(self._keys())

    def __len__(self) -> int:
        return self._entries.count

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} entries"
        return (
            f"{type(self).__name__}({state}, currsize={self.currsize}, maxsize={self._maxsize}, "
            f"backend={self._backend.name!r})"
        )

    # Not MutableMapping's: they rely on __getitem__ raising KeyError, which a
    # __missing__ that regenerates does not (cachetools makes the same choice).

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for ``key``, or ``default``; never calls ``__missing__`` for an absent key.

        A stored entry this lookup finds purged is regenerated if the cache can
        (``regenerate`` or a subclass's ``__missing__``), else ``default`` is returned.
        """
        return self._get_slow(key, default)

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (regenerated if found purged and possible).

        Atomic: the entry removed is the one whose value is returned, whatever
        other threads store meanwhile. With a tier, the key is deleted there
        too, and a key absent here is the tier's value, if it has one.
        """
        tier = self._tier
        if tier is None:
            return self._pop(key, default)
        named = tier.key_of(key)
        value = self._pop(key, _TIER_ONLY)
        if value is _TIER_ONLY:  # not here: the tier's, if it has it
            value = tier.fetch(named)
        tier.remove(named)
        if value is not _MISSING and value is not TIER_MISSING:
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def _pop(self, key: Hashable, default: Any) -> Any:
        value = _MISSING
        for _ in range(_POP_TRIES):
            with self._lock:
                self._check_open()
                entries = self._entries
                entry, rid, _, purged = entries.find(key)
                if rid != NONE:
                    found = entries.value(entry, rid)
                    if found is not _MISSING:
                        entries.remove(entry, rid)
                        self._counts["hits"] += 1
                        return found
                    purged = True
                self._counts["misses"] += 1
                if not purged or not self._can_regenerate():
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
            self._check_open()
            value, purged = self._hit(key)
            if value is not _MISSING:
                return value
            if not purged or not self._can_regenerate():
                self[key] = default
                return default
        return self._regenerate_key(key)

    def popitem(self) -> tuple[Hashable, Any]:
        """Remove and return the least recently used ``(key, value)`` pair.

        Exactly so with a finite ``maxsize``; without one, the order is a
        CLOCK's approximation. Entries found purged on the way are dropped
        (and counted as purged).
        """
        while True:
            with self._lock:
                self._check_open()
                entries = self._entries
                if entries.timed:
                    entries.expire_all_due()
                _, rid = entries.oldest()
                if rid == NONE:
                    raise KeyError(f"{type(self).__name__} is empty") from None
                item = entries.item(rid)
                if item is not _MISSING:
                    entries.remove(None, rid)
                    return item

    def clear(self) -> None:
        """Remove every entry (pinned ones are freed when their pins end); with a
        tier, its namespace is cleared too, for every process."""
        with self._lock:
            self._check_open()
            self._entries.clear()
            self._clears += 1
            self._report(force=True)
        if self._tier is not None:
            self._tier.clear()

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
        nest); the view is released at its end. An absent key, or one found
        purged, is regenerated first if the cache can, else it is a ``KeyError``.

        Raises:
            KeyError: no such key (or purged and not regenerable).
            TypeError: the value is not stored as raw bytes (it was pickled).
        """
        return Pin(key, self._acquire_pin, self._release_pin, self._linger)

    def volatilize(self) -> int:
        """Make every entry that is not pinned volatile now, hot ones included.

        For a program about to go idle. Returns the bytes marked volatile.
        """
        with self._lock:
            self._check_open()
            entries = self._entries
            while (entry := entries.oldest_hot()) is not None:
                entries.demote(entry)
            entries.seen.clear()  # idle from now: reads start over before anything is hot
            marked = entries.store.slabs.flush() * self._backend.page_size
            self._backend.settle()
            return marked

    def expire(self) -> list[Hashable]:
        """Remove the expired entries now; their keys (those still readable: one whose
        bytes were purged meanwhile is dropped as purged)."""
        with self._lock:
            self._check_open()
            if not self._entries.timed:
                return []
            return self._entries.expire_all_due()

    def _uncount_hit(self) -> None:
        """A lock-free hit took a tick of the clock (which counts it) and then found
        its entry expired: a miss, not a hit."""
        with self._lock:
            self._entries.clock.locked += 1

    def _check_ttl(self, key: Hashable, entry: Entry) -> None:
        """A hot hit's touch with a TTL, given the entry whose value it read:
        ``_Expired`` sends it the locked way, which removes the entry if its time
        is up; else its place in the order, with a maxsize."""
        # The expiry first, then whether the entry read is still the key's (else
        # its record id, and so the expiry read, may be another's now).
        try:
            expired = self._entries.expires[entry.rid] <= self._ttl_timer()
        except IndexError:  # removed meanwhile: the locked way will know
            raise _Expired from None
        if expired or self._objects.get(key) is not entry:
            raise _Expired
        if self._exact_lru:
            self._hot.move_to_end(key)

    def _new_lock(self) -> Any:
        return notifying_lock(self._entries.events, self._on_evict)

    def maintain(self) -> None:
        """Do the idle work now: demote idle hot entries, mark pending pages volatile,
        drop the entries whose pages were purged, and evict past the memory budget."""
        with self._lock:
            self._check_open()
            self._maintain(flush=True)
            self._backend.settle()
            self._sweep()
            if self._report(force=True):
                self._fit_budget(NONE)

    def info(self) -> CacheInfo:
        """Counters and sizes, as a :class:`CacheInfo`."""
        with self._lock:
            entries = self._entries
            store = entries.store
            slabs = store.slabs.stats()
            counts = self._counts
            return CacheInfo(
                hits=counts["hits"] + entries.lock_free_hits(),
                misses=counts["misses"],
                purged=entries.purged,
                regenerated=counts["regenerated"],
                regeneration_seconds=self._regen_seconds,
                evictions=counts["evictions"],
                entries=entries.count,
                currsize=entries.currsize,
                maxsize=self._maxsize,
                hot_entries=len(self._hot),
                hot_bytes=entries.hot_nbytes,
                pinned_entries=sum(1 for e in entries.objects.values() if e.pins),
                pinned_bytes=store.active_nbytes,
                volatile_bytes=slabs["volatile_bytes"],
                pending_bytes=slabs["pending_bytes"],
                purged_bytes=entries.purged_bytes,
                stored_bytes=slabs["stored_bytes"],
                slab_bytes=slabs["slab_bytes"],
                wasted_bytes=slabs["wasted_bytes"],
                backend=self._backend.name,
                nonvolatile_bytes=entries.nonvolatile_bytes(),
                memory_budget=self._budget,
                idle_entries=entries.count - len(entries.objects),
                index_bytes=store.nbytes(),
                kept_entries=entries.kept,
                **(self._tier.stats() if self._tier is not None else {}),
            )

    def close(self) -> None:
        """Release all memory (and the backend, if the cache created it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._quick = None
            self._stop.set()
            self._entries.close()
            self._pool.leave(self)
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
        # A copy holds the live values, least recently used first, each with the
        # rest of its lifetime; purged and expired ones are dropped.
        with self._lock:
            self._check_open()
            entries = self._entries
            items = []
            flags = entries.records.flags
            now = self._ttl_timer()
            for rid in self._ordered_ids():
                if rid < len(flags) and flags[rid]:  # not dropped by a purge found meanwhile
                    left = entries.expires[rid] - now if entries.timed else None
                    if left is not None and left <= 0:
                        continue  # expired: absent, though not freed yet
                    item = entries.item(rid)
                    if item is not _MISSING:
                        items.append((*item, left))
        return _rebuild, (type(self), self._config, items)

    # -- internals (the lock is held) -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")

    def _keys(self) -> list[Hashable]:
        """The keys, least recently used first (reading idle ones back from their pages)."""
        entries = self._entries
        flags = entries.records.flags
        expires = entries.expires if entries.timed else None
        now = self._ttl_timer()
        keys = []
        for rid in self._ordered_ids():
            if rid < len(flags) and flags[rid]:  # not dropped by a purge found meanwhile
                if expires is not None and expires[rid] <= now:
                    continue  # expired: absent, though not freed yet
                key = entries.key(rid)
                if key is not _MISSING:
                    keys.append(key)
        return keys

    def _ordered_ids(self) -> list[int]:
        """The record ids of the entries, least recently used first (exactly so with
        a maxsize; else the idle ones in id order, then the hot ones)."""
        entries = self._entries
        records = entries.records
        hot = entries.hot_entries()
        if not records.exact:
            return [*records.listed_ids(), *(e.rid for e in hot)]
        used = records.used
        merged = heapq.merge(
            ((used[rid], rid) for rid in records.listed_ids()), ((e.used, e.rid) for e in hot)
        )
        return [rid for _, rid in merged]

    def _get_slow(self, key: Hashable, default: Any) -> Any:
        """A lookup under the lock; ``default is _GETITEM`` means ``cache[key]``.

        Absent: ``__missing__`` for ``cache[key]``, else ``default``. Found
        purged: regenerated if the cache can, else as absent.
        """
        with self._lock:
            if self._closed:
                self._check_open()
            value, purged = self._hit(key)
            if value is not _MISSING:
                return value
        if default is _GETITEM or (purged and self._can_regenerate()):
            return self._regenerate_key(key)
        if self._tier is not None:  # get() of an absent key: the tier may have it
            value = self._flight.run((_TIER_ONLY, key), self._from_tier_only)
            if value is not _MISSING:
                return value
        return default

    def _hit(self, key: Hashable, count: bool = True) -> tuple[Any, bool]:
        """(the value, promoted to hot, or ``_MISSING``; whether a purge of it was found).

        ``count=False``: a look that is not a lookup of its own (counted already).
        """
        entries = self._entries
        rid, stored, value = entries.peek(key)
        if stored is _MISSING:
            self._counts["misses"] += count
            return _MISSING, False
        if rid != NONE:  # an idle entry read intact without re-pinning it
            self._counts["hits"] += count
            if not entries.seen_lately(rid, self._clock(), self._hot_seconds):
                if self._exact_lru:
                    entries.records.touch(rid)
                else:
                    entries.records.flags[rid] |= REFERENCED  # RecordTable.touch, inline
                if not len(entries.seen) & 15:  # what it remembers counts
                    self._after_idle_read()
            else:  # read twice lately: hot, unless its pages cannot be re-pinned now
                try:
                    pinned = entries.repin(rid)
                except OSError:
                    pinned = False  # it stays idle; the value read is good
                if pinned:
                    entries.promote(None, rid, stored, value, self._hot_limit)
                    if self._report():
                        self._fit_budget(NONE)
                    self._maintain()
            return value, False  # intact when read, whatever a purge took since
        entry, rid, stored, purged = entries.find(key)
        if rid != NONE:
            hot = entry is not None and entry.value is not COLD
            value = entries.value(entry, rid)
            if value is not _MISSING:
                if hot and entry is not None:
                    entry.used = entries.stamp()  # maintenance gives it a second chance
                    if self._exact_lru:
                        self._hot.move_to_end(entry.key)
                else:
                    entries.promote(entry, rid, stored, value, self._hot_limit)
                    if self._report():  # a hot entry's objects count too
                        self._fit_budget(NONE)
                    self._maintain()
                self._counts["hits"] += count
                return value, False
            purged = True
        self._counts["misses"] += count
        if purged and entries.events is not None and not self._can_regenerate():
            entries.note(key, "purged")
        return _MISSING, purged

    def _maintain_now(self) -> None:
        """A lock-free hit reached ``_maintain_at``: the maintenance, under the lock."""
        with self._lock:
            self._maintain()

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
            return self._hit(key, count)

    def _can_regenerate(self) -> bool:
        return (
            self._regenerate is not None or type(self).__missing__ is not VolatileCache.__missing__
        )

    def _regenerate_key(self, key: Hashable) -> Any:
        """``__missing__(key)``, once at a time per key across threads."""

        def compute(key: Hashable) -> Any:
            with self._lock:  # a flight that just ended may have stored it
                self._check_open()
                value, _ = self._hit(key, count=False)
                if value is not _MISSING:
                    self._counts["hits"] += 1
                    return value
            if self._tier is not None:
                return self._through_tier(key, lambda: self._produce(key), self._can_regenerate())
            return self._produce(key)

        return self._flight.run(key, compute)

    def _produce(self, key: Hashable) -> Any:
        start = time.perf_counter()
        value = self.__missing__(key)
        with self._lock:
            self._counts["regenerated"] += 1
            self._regen_seconds += time.perf_counter() - start
        return value

    def _through_tier(self, key: Hashable, produce: Callable[[], Any], lock: bool = True) -> Any:
        """After a local miss, in the key's flight: the tier's value (stored here, not
        written back), else ``produce()``'s, which stores it and so writes it through.

        ``lock``: with a tier of ``lock=True``, one process at a time produces
        the key and the others wait for the tier to have it (see
        :meth:`~volcache.tiers.bound.BoundTier.computing`).
        """
        tier = self._tier
        if tier is None:
            return produce()
        named = tier.key_of(key)
        clears = self._clears
        value, generation = tier.lookup(named)
        if value is TIER_MISSING:
            # What produce() stores is written under the generation of this miss:
            # after a clear() elsewhere meanwhile it is absent, not current.
            with tier.computing(named, generation, lock) as value:
                if value is TIER_MISSING:
                    return produce()
        with contextlib.suppress(TypeError, ValueError):  # too large for maxsize: not kept
            self._set(key, value, clears=clears)
        return value

    def _from_tier_only(self, key_in_flight: Any) -> Any:
        key = key_in_flight[1]
        with self._lock:  # a flight that just ended may have stored it
            self._check_open()
            value, _ = self._hit(key, count=False)
        if value is not _MISSING:
            return value
        return self._through_tier(key, lambda: _MISSING, lock=False)

    def _sweep(self) -> None:
        """Entries on pages the backend knows purged leave now, not when asked for:
        their records are memory no purge takes back."""
        self._last_sweep = self._clock()
        self._entries.sweep()

    def _fit_budget(self, keep: int) -> None:
        """Evict least recently used entries until the budget's members are within it.

        Records already purged go first (a sweep, at most every 50 ms); hot
        entries are demoted before they are evicted; ``keep`` (just stored)
        stays. A cache holding less than an even split of a shared budget
        takes from the largest member instead, if that one's lock is free.
        """
        pool = self._pool
        if self._clock() - self._last_sweep >= _SWEEP_OVER_BUDGET:
            self._sweep()
            self._report(force=True)
        while pool.over:
            donor = pool.donor(self)
            if donor is not self and donor._lock.acquire(blocking=False):
                # Not blocking: a donor waiting for this cache's lock meanwhile
                # would deadlock; it fits the budget itself on its next store.
                # Its callback runs when this thread releases this cache's lock.
                with deferring():
                    try:
                        freed = not donor._closed and donor._evict_one(NONE)
                    finally:
                        donor._lock.release()
                if freed:
                    continue
            if not self._evict_some(keep):
                return

    def _evict_some(self, keep: int) -> bool:
        """Evict (or demote) at once enough least recently used entries to be a
        report step under the budget for each member and one more (by the bytes
        an entry holds on average), reported once; False if none could go. Left
        one at a time, a cache at its budget would evict and report on every
        store. The slack is what members may hold unreported (less than a step
        each: see _report), so that what they hold stays within the budget."""
        entries = self._entries
        pool = self._pool
        per_entry = max(1, self._reported // max(1, entries.count))
        over = pool.used - pool.limit + (pool.members + 1) * self._report_step
        batch = max(1, min(entries.count, -(-over // per_entry)))
        quick = self._quick
        done, finished = quick.evict(self, batch, keep) if quick is not None else (0, False)
        while not finished and done < batch:
            if not self._evict_one(keep, report=False):
                break
            done += 1
        if done:
            self._report(force=True)
        return done > 0

    def _evict_one(self, keep: int, report: bool = True) -> bool:
        """Demote the oldest hot entry if none is idle, else evict the least recently
        used one (not ``keep``); False if there was none. ``report``: the budget
        hears of it at once."""
        entries = self._entries
        if entries.timed and entries.expire_all_due():
            self._report(force=True)
            return True  # memory freed, and no entry evicted for it
        entry, rid = entries.oldest()
        if rid in (NONE, keep):
            return False
        self._evict_chosen(entry, rid)
        if report:
            self._report(force=True)
        return True

    def _evict_rid(self, rid: int) -> None:
        """The C core's eviction chose this record, which has a Python entry."""
        self._evict_chosen(self._entries.by_rid.get(rid), rid)

    def _evict_chosen(self, entry: Entry | None, rid: int) -> None:
        """The entry chosen to go: demoted if hot, else evicted."""
        entries = self._entries
        if entry is not None and entry.value is not COLD:
            entries.demote(entry)  # the hot set is younger than every idle entry
        else:
            if type(self).popitem is not VolatileCache.popitem:
                # A subclass watching evictions, as with cachetools: a cache it
                # writes to tells its callback when this cache's lock is released.
                with deferring():
                    self.popitem()
            else:
                entries.note_eviction(entry, rid)
                entries.remove(entry, rid)
            self._counts["evictions"] += 1

    def _report(self, force: bool = False) -> bool:
        """Tell the budget what this cache holds now; whether its members are over it.

        In steps of a 1024th of the limit (the budget's lock is not taken for
        every store), unless ``force``d or near the limit.
        """
        nbytes = self._entries.nonvolatile_bytes()
        pool = self._pool
        if (
            not force
            and abs(nbytes - self._reported) < self._report_step
            and pool.used + self._report_step < pool.limit
        ):
            return False
        self._reported = nbytes
        return pool.report(self, nbytes)

    def _make_room(self, size: float) -> None:
        """Evict least recently used entries until ``size`` more fits in ``maxsize``."""
        if not self._exact_lru:
            return
        entries = self._entries
        custom = type(self).popitem is not VolatileCache.popitem
        if entries.timed and entries.currsize + size > self._maxsize:
            entries.expire_all_due()  # expired entries go first, as cachetools' TTLCache
        while entries.currsize + size > self._maxsize and entries.count:
            if custom:
                with deferring():  # see _evict_one
                    self.popitem()
            else:
                entry, rid = entries.oldest()
                entries.note_eviction(entry, rid)
                entries.remove(entry, rid)
            self._counts["evictions"] += 1

    def _maintain(self, flush: bool = False) -> None:
        """Demote hot entries past their bounds or idle too long; mark idle pages."""
        entries = self._entries
        tick = entries.stamp()
        self._maintain_at = tick + _MAINTAIN_EVERY
        entries.now = now = self._clock()
        if now - self._last_sweep >= _SWEEP_SECONDS:
            self._sweep()
        if entries.timed:
            entries.expire_all_due(_EXPIRE_STEP)
        hot = self._hot
        oldest_use = -math.inf if self._hot_seconds is None else now - self._hot_seconds
        objects_limit = self._budget // 4
        # Exact order: the hot entries last used before this tick are idle long enough.
        idle_before = self._idle_before(tick, now) if self._exact_lru else 0
        for _ in range(len(hot)):
            entry = entries.oldest_hot()
            if entry is None:
                break
            if entries.hot_nbytes > self._hot_limit or entries.object_nbytes > objects_limit:
                entries.demote(entry)  # the least recently used goes first
                continue
            if self._exact_lru:
                if entry.used < idle_before:
                    entries.demote(entry)
                    continue
                break  # and so is every entry after it, in the exact order
            if entry.used != entry.mark:
                # Used since maintenance last looked: idle from now on.
                entry.mark = entry.used
                entry.hot_since = now
                hot.move_to_end(entry.key)  # a second chance at the end (CLOCK)
                continue
            if entry.hot_since <= oldest_use:
                entries.demote(entry)
                continue
            break
        self._retry_lingering()
        slabs = entries.store.slabs
        if flush or slabs.npending >= self._mark_batch:
            slabs.flush()
            self._report()  # stores report themselves; promotions and demotions, here

    def _idle_before(self, tick: int, now: float) -> int:
        """The tick of the clock of uses taken ``hot_seconds`` ago or earlier (0: none,
        or no idle time): a use stamped before it is that old. Ticks are noted with
        their time every eighth of ``hot_seconds``."""
        if self._hot_seconds is None:
            return 0
        notes = self._ticks_at
        if not notes or now - notes[-1][1] >= self._hot_seconds / 8:
            notes.append((tick, now))
        limit = now - self._hot_seconds
        while len(notes) > 1 and notes[1][1] <= limit:
            notes.popleft()
        return notes[0][0] if notes[0][1] <= limit else 0

    def _acquire_pin(self, key: Hashable) -> tuple[Entry, tuple[Any, ...]]:
        """Pin the entry of ``key`` (regenerated first if absent or purged, and possible)."""
        while True:
            pinned = self._pin(key)
            if pinned is not None:
                return pinned
            if not self._can_regenerate():
                raise KeyError(key)
            self._regenerate_key(key)  # stores the value; then pin what was stored

    def _pin(self, key: Hashable) -> tuple[Entry, tuple[Any, ...]] | None:
        """Pin a stored entry and make its views; None if absent or purged."""
        with self._lock:
            self._check_open()
            entries = self._entries
            store = entries.store
            entry, rid, stored, _ = entries.find(key)
            if rid != NONE and entry is not None and not entries.repin(rid):
                rid = NONE  # an Entry's record may be idle, and was found purged
            if rid != NONE:
                if not store.raw(rid):
                    entries.settle(entry, rid)
                    kept = entry is not None and entry.kept is not MISSING
                    how = "kept as an object" if kept else "pickled"
                    raise TypeError(
                        f"pin() gives the bytes of buffer values; the value of {key!r} is {how}"
                    )
                if entry is None:
                    entry = entries.adopt(rid, stored)
                entry.pins += 1
                self._counts["hits"] += 1
                return entry, pin_views(store.value_view(rid))
            self._counts["misses"] += 1
            return None

    def _release_pin(self, entry: Entry) -> None:
        with self._lock:
            if self._closed:
                entry.pins -= 1
                return
            self._entries.unpin(entry)

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
                        cache._backend.settle()
                del cache

        self._timer = threading.Thread(target=run, name="volcache-idle", daemon=True)
        self._timer.start()
        weakref.finalize(self, stop.set)


def _rebuild(
    cls: type[VolatileCache], config: dict[str, Any], items: list[tuple[Any, Any, float | None]]
) -> VolatileCache:
    cache = cls(**config)
    for key, value, lifetime in items:
        # Here only: a tier has the values already (or a clear removed them since).
        cache._set(key, value, lifetime)
    return cache


class _Items(ItemsView):
    def __init__(self, cache: VolatileCache) -> None:
        super().__init__(cache)
        self._cache = cache

    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        cache = self._cache
        for key in cache:
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                yield key, value


class _Values(ValuesView):
    def __init__(self, cache: VolatileCache) -> None:
        super().__init__(cache)
        self._cache = cache

    def __iter__(self) -> Iterator[Any]:
        cache = self._cache
        for key in cache:
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                yield value


cachetools.Cache.register(VolatileCache)
