"""The entries of one cache: records for all, Python objects for the few in use.

Every entry has a record in the :class:`~volcache.store.Store` (its key and
value in volatile memory). An entry also has a Python :class:`Entry` while it
is *hot* (decoded and pinned, so that a hit is a dict lookup), while a
:meth:`~volcache.VolatileCache.pin` holds it, or for good if its key or decoder
cannot be kept in volatile memory. Idle entries are records only, in the
recency order, least recently used first; hot ones are in the hot set, least
recently used first. With a finite ``maxsize`` the two orders are merged by
stamps of one logical clock, which a hot hit reads without the lock
(:meth:`Entries.oldest`).

Not thread safe: the cache holds its lock around every call.
"""

from __future__ import annotations

import gc
import itertools
import math
import sys
import time
import types
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from .backends import Backend
from .codecs import Decoder
from .expiry import ExpiryHeap
from .hotpath import COLD, MISSING, Clock, EntryBase
from .records import INDEXED, LISTED, NONE, OBJECT
from .store import OTHER_KEY, PURGED, Store

HASH_MASK = 0xFFFFFFFF
#: An Entry's objects besides its key: itself, its slots in three dicts (measured).
OBJECT_BYTES = 360
SEEN_LIMIT = 1024  # idle records remembered as read lately, at most (and a 16th of a budget)
SEEN_BYTES = 100  # a remembered one's dict slot, id and time (measured)
_RETRIES = 8  # reads of the hot set's first entries that lock-free hits may break
_HITS_IN_FLIGHT = 4  # hot entries compared for the least recently used (see least_used_hot)
_SIZE_WALK = 256  # objects a kept value's size estimate visits at most
_UNKNOWN_SIZE = 64
_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


class Entry(EntryBase):
    """The Python side of an entry that is hot, pinned, or keeps its key as an object.

    Its fields are declared by :data:`~volcache.hotpath.EntryBase` (in C where
    the hot hit is), which the hot hit reads."""

    __slots__ = ()

    def __init__(self, rid: int, key: Hashable) -> None:
        self.rid = rid
        self.key = key
        self.value: Any = COLD
        self.pins = 0
        # In the hot set: when it was last known used (set when it is promoted
        # or found used by maintenance); the stamp of its last use (a hit with
        # or without the lock), and that stamp when maintenance last looked.
        self.hot_since = 0.0
        self.used = 0
        self.mark = 0
        self.own = False  # kept as an object for good: its key or decoder has no record form
        self.decode: Decoder | None = None  # its decoder, if the record has no tag for it
        self.detached = False  # removed from the mapping while pinned: freed at the last unpin
        self.kept: Any = MISSING  # a value the codec refused, kept as it is (never purged)
        self.cost = object_cost(key)  # its objects' bytes, as counted in object_nbytes


def object_cost(key: Hashable) -> int:
    """The estimated bytes of an entry's Python objects, its key included."""
    return OBJECT_BYTES + sys.getsizeof(key)


def value_cost(value: Any) -> int:
    """An estimate of the memory a value kept as an object holds.

    ``sys.getsizeof`` of the value and of what it refers to, transitively, up
    to ``_SIZE_WALK`` objects; classes, modules and functions are shared, not
    counted.
    """
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack and len(seen) < _SIZE_WALK:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        try:
            total += sys.getsizeof(obj)
        except TypeError:  # a broken __sizeof__
            total += _UNKNOWN_SIZE
        stack.extend(gc.get_referents(obj))
    return total


class Entries:
    """Records, objects and the hot set of one cache, and the sizes that go with them."""

    def __init__(
        self, backend: Backend, slab_bytes: int, sized: bool, exact: bool,
        timer: Callable[[], float] | None = None, events: bool = False,
    ) -> None:  # fmt: skip
        # One logical clock orders uses: a hot hit takes a tick without the
        # lock (so the ticks count those hits), everything else through stamp().
        self.clock = Clock()
        self.tick = self.clock.tick
        # A tick of the clock of uses, for a use made with the lock held.
        self.stamp: Callable[[], int] = self.clock.stamp
        self.store = Store(backend, slab_bytes, exact, self.stamp)
        # With a TTL: each record's expiry time by id (the timer's clock), and
        # where the idle work's sweep for expired records goes on next.
        self.timed = timer is not None
        self.timer: Callable[[], float] = timer or time.monotonic
        self.expires = array("d")  # empty unless timed
        self.expiry = ExpiryHeap()  # the same times, soonest first
        # With an on_evict callback: (key, reason) of entries that left for
        # it, handed to the callback once the cache's lock is released.
        self.events: deque[tuple[Hashable, str]] | None = deque() if events else None
        self.records = self.store.records
        self.objects: dict[Hashable, Entry] = {}  # by key: hot, pinned or own entries
        self.by_rid: dict[int, Entry] = {}
        self.hot: OrderedDict[Hashable, Entry] = OrderedDict()  # least recently used first
        self.sizes: array | None = array("d") if sized else None  # by record id
        self.count = 0  # entries in the mapping
        self.currsize: float = 0
        self.hot_nbytes = 0  # stored bytes of the hot entries
        self.object_nbytes = 0  # estimated bytes of the entries' Python objects
        self.purged = 0
        self.purged_bytes = 0
        self.kept = 0  # entries whose values are kept as objects
        self.now = 0.0  # the cache's clock at its last maintenance: a promotion's time
        # Idle records read without re-pinning, and when: read again soon, one is made hot.
        self.seen: dict[int, float] = {}
        self.seen_limit = SEEN_LIMIT

    def lock_free_hits(self) -> int:
        """The hits taken without the lock so far (the clock's other ticks)."""
        return self.clock.taken - self.clock.locked

    def oldest_hot(self) -> Entry | None:
        """The least recently used hot entry, or None."""
        for _ in range(_RETRIES):
            try:
                return next(iter(self.hot.values()))
            except StopIteration:
                return None
            except RuntimeError as exc:
                _reordered(exc)
        entries = self.hot_entries()  # hits kept reordering it: the snapshot's order
        return entries[0] if entries else None

    def least_used_hot(self) -> Entry | None:
        """The hot entry used least recently, by the stamps of their uses.

        A lock-free hit stamps its entry before it moves it to the end of the
        hot set: an entry with a newer stamp may still be first. The first
        few (one per thread in such a hit, at most) are compared.
        """
        for _ in range(_RETRIES):
            try:
                first = list(itertools.islice(self.hot.values(), _HITS_IN_FLIGHT))
            except RuntimeError as exc:
                _reordered(exc)
                continue
            return min(first, key=_last_use) if first else None
        entries = self.hot_entries()
        return entries[0] if entries else None

    def hot_entries(self) -> list[Entry]:
        """The hot entries, least recently used first (a snapshot that lock-free hits,
        which reorder the hot set, cannot break)."""
        # dict's own view: read in C without hashing a key, so no other thread runs.
        entries = list(dict.values(self.hot))
        entries.sort(key=_last_use)
        return entries

    # -- finding ---------------------------------------------------------------------

    def find(self, key: Hashable) -> tuple[Entry | None, int, Any, bool]:
        """(its Entry or None, its record id or NONE, the stored key, whether a purge was met).

        A record found without an Entry is left active: the caller promotes
        it or calls :meth:`settle`. A candidate record found purged is
        dropped, and reported: it may have been this key's.

        Raises:
            OSError: a candidate could not be re-pinned.
        """
        entry = self.objects.get(key)
        if entry is not None:
            if self.timed and self.expire_if_due(entry, entry.rid, entry.key):
                return None, NONE, None, False
            return entry, entry.rid, entry.key, False
        flags = self.records.flags
        store = self.store
        purged = False
        for rid in self.records.candidates(hash(key) & HASH_MASK):
            # A record dropped by an earlier candidate's purge, or one with an
            # Entry (whose key objects.get compared already) is not this key's.
            if rid >= len(flags) or flags[rid] & (INDEXED | OBJECT) != INDEXED:
                continue
            if not self.repin(rid):
                purged = True
                continue
            try:
                match, stored = store.key_matches(rid, key)
            except BaseException:
                store.deactivate(rid)
                raise
            if match:
                if self.timed and self.expire_if_due(None, rid, stored):
                    return None, NONE, None, purged
                return None, rid, stored, purged
            store.deactivate(rid)
        return None, NONE, None, purged

    def peek(self, key: Hashable) -> tuple[int, Any, Any]:
        """(record id, stored key, value) of an idle record of ``key``, read without
        re-pinning it.

        ``(NONE, MISSING, None)``: no record has the key. ``(NONE, PURGED,
        None)``: a candidate's bytes were purged, or the key has a Python
        entry: the caller takes the re-pinning path (:meth:`find`), which
        knows what to drop.
        """
        if key in self.objects:
            return NONE, PURGED, None
        records = self.records
        flags, hashes, chain = records.flags, records.hash, records.chain
        h = hash(key) & HASH_MASK
        rid = records.head_of(h)
        while rid != NONE:  # the bucket's chain, as RecordTable.candidates walks it
            if hashes[rid] == h and flags[rid] & (INDEXED | OBJECT) == INDEXED:
                stored, value = self.store.peek(rid, key)
                if stored is PURGED:
                    return NONE, PURGED, None
                if stored is not OTHER_KEY:
                    if self.timed and self.expire_if_due(None, rid, stored):
                        return NONE, MISSING, None
                    return rid, stored, value
            rid = chain[rid]
        return NONE, MISSING, None

    def locate(self, key: Hashable) -> tuple[Entry | None, int]:
        """(its Entry or None, its record id or NONE), reading keys without re-pinning.

        For a store, a delete or ``in``, which need not the value. A
        candidate found purged sends the search the re-pinning way
        (:meth:`find`), which drops what the purge took; a record it finds is
        left idle (settled).
        """
        entry = self.objects.get(key)
        if entry is not None:
            if self.timed and self.expire_if_due(entry, entry.rid, entry.key):
                return None, NONE
            return entry, entry.rid
        records = self.records
        flags, hashes, chain = records.flags, records.hash, records.chain
        h = hash(key) & HASH_MASK
        rid = records.head_of(h)
        while rid != NONE:
            if hashes[rid] == h and flags[rid] & (INDEXED | OBJECT) == INDEXED:
                stored = self.store.peek_key(rid)
                if stored is PURGED:
                    entry, rid, _, _ = self.find(key)
                    if rid != NONE:
                        self.settle(entry, rid)
                    return entry, rid
                if stored == key:
                    if self.timed and self.expire_if_due(None, rid, stored):
                        return None, NONE
                    return None, rid
            rid = chain[rid]
        return None, NONE

    # -- expiry and the reasons entries leave ---------------------------------------------

    def set_expiry(self, rid: int, when: float) -> None:
        """When a record expires, on the timer's clock (``math.inf``: never)."""
        expires = self.expires
        if len(expires) <= rid:
            grow = max(64, len(expires) // 8, rid + 1 - len(expires))
            expires.extend(array("d", [math.inf]) * grow)
        expires[rid] = when
        if when != math.inf:
            heap = self.expiry
            heap.push(when, rid)
            if len(heap) > 2 * self.count + 64:  # mostly entries gone before their time
                heap.rebuild(
                    (expires[r], r) for r in range(min(len(expires), self.records.size))
                    if expires[r] != math.inf and self._in_mapping(r)
                )  # fmt: skip

    def _in_mapping(self, rid: int) -> bool:
        if rid >= self.records.size:  # a heap entry older than the table (emptied since)
            return False
        flags = self.records.flags[rid]
        return bool(flags) and bool(flags & (INDEXED | LISTED) or rid in self.by_rid)

    def expire_all_due(self, limit: int | None = None) -> list[Hashable]:
        """Remove the entries whose time is up, soonest first (as cachetools' TTLCache
        does before it evicts or pops), at most ``limit`` (None: all); the keys
        removed (of those still readable: one a purge took is dropped as purged)."""
        heap, expires = self.expiry, self.expires
        now = self.timer()
        removed: list[Hashable] = []
        taken = 0
        while heap and heap.soonest() <= now and (limit is None or taken < limit):
            when, rid = heap.pop()
            # Counts only if the record still expires then (else it went before its time).
            if rid < len(expires) and expires[rid] == when and self._in_mapping(rid):
                taken += 1
                key = self._expire(self.by_rid.get(rid), rid)
                if key is not PURGED:
                    removed.append(key)
        return removed

    def expire_if_due(self, entry: Entry | None, rid: int, key: Hashable) -> bool:
        """Remove the entry of ``key`` if its time has come; whether it had."""
        if self.expires[rid] > self.timer():
            return False
        self.note(key, "expired")
        self.remove(entry, rid)
        return True

    def note(self, key: Hashable, reason: str) -> None:
        """An entry of ``key`` leaves for ``reason`` (kept for the callback, if any)."""
        if self.events is not None:
            self.events.append((key, reason))

    def note_eviction(self, entry: Entry | None, rid: int) -> None:
        """Before an eviction: its key, read back without re-pinning (none if purged)."""
        if self.events is None:
            return
        key = entry.key if entry is not None else self.store.peek_key(rid)
        if key is not PURGED:
            self.events.append((key, "evicted"))

    def _expire(self, entry: Entry | None, rid: int) -> Any:
        """Remove an expired entry; its key, or ``PURGED`` if a purge took it first
        (then it was dropped as purged)."""
        key = entry.key if entry is not None else self.store.peek_key(rid)
        if key is PURGED:
            self.lose([rid])  # gone already: a purge, not an expiry
        else:
            self.note(key, "expired")
            self.remove(entry, rid)
        return key

    def seen_lately(self, rid: int, now: float, window: float | None) -> bool:
        """Whether an idle record was read within ``window`` seconds (None: ever)
        before ``now``; it is remembered as read now if not."""
        seen = self.seen
        last = seen.pop(rid, None)
        if last is not None and (window is None or now - last <= window):
            return True
        if len(seen) >= self.seen_limit:
            seen.clear()  # a bound, not an order: those forgotten are read twice more
        seen[rid] = now
        return False

    def repin(self, rid: int) -> bool:
        """Pin a record's pages; False if a purge took its bytes (then it was dropped).

        Raises:
            OSError: the pages could not be re-pinned; nothing changed.
        """
        lost = self.store.activate(rid)
        if not lost:
            return True
        self.lose(lost)
        return rid not in lost

    def value(self, entry: Entry | None, rid: int) -> Any:
        """The entry's value, its record left active; ``MISSING`` if purged (then dropped).

        Raises:
            OSError: the record could not be re-pinned; nothing changed.
        """
        if entry is not None and entry.value is not COLD:
            return entry.value
        if not self.repin(rid):
            return MISSING
        try:
            return self.decode(entry, rid)
        except BaseException:
            self.settle(entry, rid)
            raise

    def decode(self, entry: Entry | None, rid: int) -> Any:
        """Decode an active record's value."""
        if entry is None:
            return self.store.decode(rid)
        if entry.kept is not MISSING:
            return entry.kept
        return self.store.decode(rid, entry.decode)

    def settle(self, entry: Entry | None, rid: int) -> None:
        """An active record that is neither hot nor pinned goes idle."""
        if entry is None:
            self.store.deactivate(rid)
        elif entry.pins == 0 and entry.value is COLD:
            self.store.deactivate(rid)
            self.disown(entry)

    def item(self, rid: int) -> Any:
        """(key, value) of a listed or hot record, left as it was; ``MISSING`` if purged."""
        entry = self.by_rid.get(rid)
        if entry is not None and entry.value is not COLD:
            return entry.key, entry.value
        if not self.repin(rid):
            return MISSING
        try:
            key = entry.key if entry is not None else self.store.key(rid)
            return key, self.decode(entry, rid)
        finally:
            self.settle(entry, rid)

    def key(self, rid: int) -> Any:
        """The key of a listed record, ``MISSING`` if purged (then dropped)."""
        entry = self.by_rid.get(rid)
        if entry is not None:
            return entry.key
        if not self.repin(rid):
            return MISSING
        try:
            return self.store.key(rid)
        finally:
            self.store.deactivate(rid)

    def oldest(self) -> tuple[Entry | None, int]:
        """The entry to evict first: exactly the least recently used one if the
        order is exact; else the CLOCK's idle choice, or the oldest hot one."""
        records = self.records
        if records.exact:
            rid, used = records.oldest_use()
            hot = self.least_used_hot()
            if hot is not None and (rid == NONE or hot.used < used):
                return hot, hot.rid
        else:
            rid = records.victim()
            if rid == NONE:
                hot = self.oldest_hot()
                return (hot, hot.rid) if hot is not None else (None, NONE)
        return self.by_rid.get(rid), rid

    # -- changing ----------------------------------------------------------------------

    def insert(
        self, rid: int, key: Hashable, size: float, own: bool, decode: Decoder | None,
        kept: Any = MISSING,
    ) -> None:  # fmt: skip
        """A new active record (or a kept value's record) joins the mapping (not yet
        hot, not listed)."""
        if kept is not MISSING:
            entry = self.adopt(rid, key)
            entry.own = True
            entry.kept = kept
            extra = value_cost(kept)
            entry.cost += extra
            self.object_nbytes += extra
            self.kept += 1
        elif own:
            entry = self.adopt(rid, key)
            entry.own = True
            if self.store.own_decoder(rid):
                entry.decode = decode
        else:
            self.records.index(rid)
        self._count_in(rid, size)

    def insert_idle(self, rid: int, size: float) -> None:
        """A new active record without a Python entry joins the mapping, idle and the
        most recently used (:meth:`insert` and :meth:`idle`, in one call of the store)."""
        self.store.settle_new(rid)
        self._count_in(rid, size)

    def _count_in(self, rid: int, size: float) -> None:
        self.count += 1
        self.currsize += size
        sizes = self.sizes
        if sizes is not None:
            if len(sizes) <= rid:
                grow = max(64, len(sizes) // 8, rid + 1 - len(sizes))
                sizes.extend(array("d", bytes(8 * grow)))
            sizes[rid] = size

    def idle(self, rid: int) -> None:
        """A record just inserted goes idle, the most recently used (if nothing holds it)."""
        self.records.append(rid)
        if self.records.flags[rid] & OBJECT:
            self.settle(self.by_rid[rid], rid)
        else:
            self.store.deactivate(rid)

    def adopt(self, rid: int, key: Hashable) -> Entry:
        """An Entry for a record in the mapping that has none."""
        entry = Entry(rid, key)
        self.objects[key] = entry
        self.by_rid[rid] = entry
        self.records.flags[rid] |= OBJECT
        self.object_nbytes += entry.cost
        return entry

    def disown(self, entry: Entry) -> None:
        """Drop an idle entry's Python objects: it is a record only."""
        if entry.own or entry.pins or entry.detached or entry.value is not COLD:
            return
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """The entry's Python objects go; its record stays."""
        del self.objects[entry.key]
        del self.by_rid[entry.rid]
        self.records.flags[entry.rid] &= ~OBJECT
        self.object_nbytes -= entry.cost
        if entry.kept is not MISSING:
            self.kept -= 1

    def _cool(self, entry: Entry) -> bool:
        """Out of the hot set, its decoded value dropped; whether it was hot."""
        if self.hot.get(entry.key) is entry:
            del self.hot[entry.key]
        if entry.value is COLD:
            return False
        entry.value = COLD
        self.hot_nbytes -= self.store.length(entry.rid)
        return True

    def promote(self, entry: Entry | None, rid: int, key: Hashable, value: Any, limit: int) -> None:
        """An active record was just used: hot with ``value``, or the most recently
        used idle entry if it is larger than ``limit``."""
        length = self.store.length(rid)
        records = self.records
        if length > limit:
            if records.flags[rid] & LISTED:
                records.unlist(rid)
            records.append(rid)  # the most recently used idle entry
            self.settle(entry, rid)
            return
        if entry is None:
            entry = self.adopt(rid, key)
        if entry.value is COLD:
            self.hot_nbytes += length
            self.hot[entry.key] = entry
            if records.flags[rid] & LISTED:
                records.unlist(rid)
        entry.value = value
        entry.hot_since = self.now
        entry.used = entry.mark = self.stamp()

    def demote(self, entry: Entry) -> None:
        """A hot entry goes idle: its pages may become volatile, its objects go."""
        if self._cool(entry) and not entry.detached:
            self.records.place(entry.rid, entry.used)  # as old as its last hit
        if entry.pins == 0 and not entry.detached:
            self.store.deactivate(entry.rid)
            self.disown(entry)

    def remove(self, entry: Entry | None, rid: int) -> None:
        """Take an entry out of the mapping; its memory goes when no pin holds it."""
        records = self.records
        # Its id may be reused: a new entry is not read twice lately by inheritance.
        self.seen.pop(rid, None)
        self.count -= 1
        self.currsize -= self.sizes[rid] if self.sizes is not None else 1
        flags = records.flags[rid]
        if flags & INDEXED:
            records.unindex(rid)
        if flags & LISTED:
            records.unlist(rid)
        if entry is None:
            entry = self.by_rid.get(rid)
        if entry is not None:
            self._cool(entry)
            self._forget(entry)
            if entry.pins:
                entry.detached = True
                return
        self.store.free(rid)
        if self.count == 0 and self.timed:
            del self.expires[:]  # the records' columns went back to nothing too
            self.expiry.clear()

    def unpin(self, entry: Entry) -> None:
        """A pin ended; the last one frees a detached entry or lets an idle one go."""
        entry.pins -= 1
        if entry.pins:
            return
        if entry.detached:
            self.store.free(entry.rid)
        elif entry.value is COLD:
            self.store.deactivate(entry.rid)
            self.disown(entry)

    def lose(self, lost: list[int]) -> None:
        """Records whose bytes a purge took leave the mapping; their memory is freed."""
        flags = self.records.flags
        for rid in lost:
            if rid >= len(flags) or not flags[rid]:
                continue  # freed already
            self.purged += 1
            self.purged_bytes += self.store.length(rid)
            if flags[rid] & INDEXED or rid in self.by_rid:
                self.remove(None, rid)
            else:
                self.store.free(rid)
                self.seen.pop(rid, None)

    def sweep(self) -> None:
        """Drop the records whose pages the backend knows purged, without re-pinning."""
        self.lose(self.store.purged_ids())

    def clear(self) -> None:
        """Every entry leaves the mapping (pinned ones are freed when their pins end)."""
        for entry in list(self.objects.values()):
            self.remove(entry, entry.rid)
        for rid in list(self.records.listed_ids()):
            self.remove(None, rid)
        self.seen.clear()

    def nonvolatile_bytes(self) -> int:
        """Memory no purge takes back: records, books, objects and hot values."""
        sized = 8 * self.count * ((self.sizes is not None) + self.timed) + 12 * len(self.expiry)
        seen = SEEN_BYTES * len(self.seen)
        return self.store.nbytes() + self.object_nbytes + self.hot_nbytes + sized + seen

    def close(self) -> None:
        """Give all memory back."""
        self.objects.clear()
        self.by_rid.clear()
        self.hot.clear()
        self.seen.clear()
        self.expiry.clear()
        self.store.close()
        self.records = self.store.records
        self.count = 0
        self.currsize = 0
        self.hot_nbytes = self.object_nbytes = self.kept = 0


def _last_use(entry: Entry) -> int:
    return entry.used


def _reordered(exc: RuntimeError) -> None:
    """Return if ``exc`` is the hot set's "mutated during iteration" (a lock-free hit
    reordered it: read it again), else raise it (a RecursionError, say, would come
    again on every retry)."""
    if type(exc) is not RuntimeError:
        raise exc
