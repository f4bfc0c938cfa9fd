"""The record table: every stored entry as a few machine words in arrays.

A record is what the cache keeps of an entry that nothing in Python holds:
the low 32 bits of its key's hash, where its bytes are, how many, a few
flags, and its place in the hash index. They live in parallel ``array``
columns indexed by record id, so an idle entry costs no Python object at all.
The hash index chains records of one bucket through a column, with between
one and two records a bucket; the key itself is in volatile memory beside
the value, and whoever looks a key up compares it there.

Idle records are in a recency order. With ``exact=True`` every listed
record has the stamp of its last use (a tick of the cache's one logical
clock, which hot entries' hits read too), and records are in two doubly
linked lists sorted by it: those listed when used (stored or touched: the
stamp is the newest, so they are appended) and those listed by a demotion
(their stamp is their last hit as a hot entry, older than records listed
since: they are inserted in place, which is at the tail when the oldest hot
entry is demoted first). The least recently used record is the older of the
two heads, and the least recently used entry the older of that and the
oldest hot entry, as a cache with a ``maxsize`` promises. Otherwise it is a
CLOCK over the ids: a listed record has a reference bit, cleared as the hand
passes it, and the first listed record found without one is the one to evict.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Callable, Iterator

NONE = -1  # no record: an empty bucket, the end of a chain or list
FREED_LOC = -(1 << 63)  # the loc of a free id (the C table refuses calls on one)

# Flags.
ACTIVE = 1  # its pages are pinned (counted active by the allocator)
OBJECT = 2  # a Python entry holds it (hot, pinned, or a key kept as an object)
INDEXED = 4  # in the hash index (its key is in volatile memory)
LISTED = 8  # in the recency order (idle, or pinned without being hot)
_REFERENCED = REFERENCED = 16  # CLOCK: listed since the hand last passed, or used
KEPT = 32  # no bytes in the slabs: its value is a Python object that its Entry keeps
DEMOTED = 64  # exact: in the list of records listed by a demotion, not the one of uses

_MULTIPLIER = 0x9E3779B1  # Fibonacci hashing: a bucket is the product's high bits
_MIN_BITS = 3

#: Bytes per record in the columns, without and with the exact recency list
#: (the buckets, one or two records each, are counted apart).
RECORD_BYTES = 4 + 8 + 4 + 1 + 4
EXACT_RECORD_BYTES = RECORD_BYTES + 4 + 4 + 8


class RecordTable:
    """Records by id, a hash index over them, and a recency order.

    Not thread safe: the cache holds its lock around every call. Ids of
    removed records are reused; the columns keep their high-water mark until
    the table is empty.
    """

    def __init__(self, exact: bool = False, stamp: Callable[[], int] | None = None) -> None:
        self.exact = exact
        # Exact: the clock of last uses, a new stamp at each call (greater than any before).
        self.stamp: Callable[[], int] = stamp or itertools.count(1).__next__
        self.hash = array("I")  # low 32 bits of hash(key)
        self.loc = array("q")  # where the bytes are (the allocator's address)
        self.length = array("I")  # how many bytes (the store keeps longer ones apart)
        self.flags = array("B")
        self.chain = array("i")  # the next id in its bucket; free ids are chained here too
        self.prev = array("i")  # the exact recency lists (empty if not exact)
        self.next = array("i")
        self.used = array("q")  # exact: the stamp of a listed record's last use
        self.count = 0  # records in use
        self.listed = 0
        # Exact: the list of records listed when used (least and most recent),
        # and the list of those listed by a demotion; each sorted by ``used``.
        self.head = self.tail = NONE
        self.demoted_head = self.demoted_tail = NONE
        self._hand = 0  # the CLOCK's hand (not exact)
        self._free = NONE
        self._bits = _MIN_BITS
        self._heads = array("i", [NONE]) * (1 << _MIN_BITS)
        self._indexed = 0

    @property
    def size(self) -> int:
        """The columns' length: ids below it have been used."""
        return len(self.flags)

    # -- ids ----------------------------------------------------------------------

    def new(self, h: int, loc: int, length: int, flags: int) -> int:
        """A record id for a new record (not indexed, not listed)."""
        rid = self._free
        if rid == NONE:
            rid = len(self.hash)
            self.hash.append(h)
            self.loc.append(loc)
            self.length.append(length)
            self.flags.append(flags)
            self.chain.append(NONE)
            if self.exact:
                self.prev.append(NONE)
                self.next.append(NONE)
                self.used.append(0)
        else:
            self._free = self.chain[rid]
            self.hash[rid] = h
            self.loc[rid] = loc
            self.length[rid] = length
            self.flags[rid] = flags
            self.chain[rid] = NONE
        self.count += 1
        return rid

    def delete(self, rid: int) -> None:
        """Forget a record: out of the index and the order, its id free for reuse."""
        flags = self.flags[rid]
        if flags & INDEXED:
            self.unindex(rid)
        if flags & LISTED:
            self.unlist(rid)
        self.flags[rid] = 0
        self.loc[rid] = FREED_LOC
        self.chain[rid] = self._free
        self._free = rid
        self.count -= 1
        if self.count == 0:
            self._reset()

    def _reset(self) -> None:
        # Empty: the columns go back to nothing (a cleared cache gives its memory back).
        columns = [self.hash, self.loc, self.length, self.flags, self.chain]
        if self.exact:
            columns += [self.prev, self.next, self.used]
        for column in columns:
            del column[:]
        self._free = self.head = self.tail = self.demoted_head = self.demoted_tail = NONE
        self.listed = self._hand = 0

    # -- the hash index ----------------------------------------------------------------

    def _bucket(self, h: int) -> int:
        return ((h * _MULTIPLIER) & 0xFFFFFFFF) >> (32 - self._bits)

    def index(self, rid: int) -> None:
        """Put a record in the hash index."""
        if self._indexed >= 2 << self._bits:
            self._resize(self._bits + 1)
        bucket = self._bucket(self.hash[rid])
        self.chain[rid] = self._heads[bucket]
        self._heads[bucket] = rid
        self._indexed += 1
        self.flags[rid] |= INDEXED

    def unindex(self, rid: int) -> None:
        """Take a record out of the hash index."""
        heads, chain = self._heads, self.chain
        bucket = self._bucket(self.hash[rid])
        current = heads[bucket]
        if current == rid:
            heads[bucket] = chain[rid]
        else:
            while chain[current] != rid:
                current = chain[current]
            chain[current] = chain[rid]
        chain[rid] = NONE
        self._indexed -= 1
        self.flags[rid] &= ~INDEXED
        if self._bits > _MIN_BITS and self._indexed * 2 < len(heads):
            self._resize(self._bits - 1)

    def head_of(self, h: int) -> int:
        """The first id in the bucket of hash ``h`` (chained through ``chain``), or NONE."""
        return self._heads[((h * _MULTIPLIER) & 0xFFFFFFFF) >> (32 - self._bits)]

    def candidates(self, h: int) -> list[int]:
        """The ids of indexed records whose hash is ``h``."""
        hashes, chain = self.hash, self.chain
        rid = self._heads[self._bucket(h)]
        found = []
        while rid != NONE:
            if hashes[rid] == h:
                found.append(rid)
            rid = chain[rid]
        return found

    def _resize(self, bits: int) -> None:
        self._bits = bits
        self._heads = heads = array("i", [NONE]) * (1 << bits)
        chain, flags, hashes = self.chain, self.flags, self.hash
        shift = 32 - bits
        for rid in range(len(flags)):
            if flags[rid] & INDEXED:
                bucket = ((hashes[rid] * _MULTIPLIER) & 0xFFFFFFFF) >> shift
                chain[rid] = heads[bucket]
                heads[bucket] = rid

    # -- the recency order ----------------------------------------------------------------

    def append(self, rid: int) -> None:
        """List a record as the most recently used (exact: stamped now)."""
        if self.exact:
            self.used[rid] = self.stamp()
            self.prev[rid] = self.tail
            self.next[rid] = NONE
            if self.tail == NONE:
                self.head = rid
            else:
                self.next[self.tail] = rid
            self.tail = rid
        self.flags[rid] |= LISTED | _REFERENCED
        self.listed += 1

    def place(self, rid: int, used: int) -> None:
        """List a record last used at stamp ``used`` (a demoted hot entry), in its
        place by that stamp (exact); as :meth:`append` otherwise."""
        if not self.exact:
            self.append(rid)
            return
        prev, next_, stamps = self.prev, self.next, self.used
        stamps[rid] = used
        # From the tail: the oldest hot entry is demoted first, so it goes last.
        before = self.demoted_tail
        while before != NONE and stamps[before] > used:
            before = prev[before]
        after = self.demoted_head if before == NONE else next_[before]
        prev[rid], next_[rid] = before, after
        if before == NONE:
            self.demoted_head = rid
        else:
            next_[before] = rid
        if after == NONE:
            self.demoted_tail = rid
        else:
            prev[after] = rid
        self.flags[rid] |= LISTED | _REFERENCED | DEMOTED
        self.listed += 1

    def touch(self, rid: int) -> None:
        """A listed record was used: the most recently used (exact), or referenced."""
        if self.exact:
            if self.tail == rid and not self.flags[rid] & DEMOTED:
                self.used[rid] = self.stamp()  # last already, but used after hot hits since
            else:
                self.unlist(rid)
                self.append(rid)
        else:
            self.flags[rid] |= _REFERENCED

    def unlist(self, rid: int) -> None:
        """Take a record out of the recency order."""
        if self.exact:
            before, after = self.prev[rid], self.next[rid]
            if self.flags[rid] & DEMOTED:
                if before == NONE:
                    self.demoted_head = after
                else:
                    self.next[before] = after
                if after == NONE:
                    self.demoted_tail = before
                else:
                    self.prev[after] = before
            else:
                if before == NONE:
                    self.head = after
                else:
                    self.next[before] = after
                if after == NONE:
                    self.tail = before
                else:
                    self.prev[after] = before
            self.prev[rid] = self.next[rid] = NONE
        self.flags[rid] &= ~(LISTED | _REFERENCED | DEMOTED)
        self.listed -= 1

    def oldest_use(self) -> tuple[int, int]:
        """Exact: (the listed record least recently used or NONE, its stamp)."""
        first, demoted = self.head, self.demoted_head
        if demoted == NONE or (first != NONE and self.used[first] < self.used[demoted]):
            return (first, self.used[first]) if first != NONE else (NONE, 0)
        return demoted, self.used[demoted]

    def victim(self) -> int:
        """The listed record to evict first (NONE if none): the least recently used
        (exact), or the CLOCK's choice, whose hand moves past the records it spares."""
        if self.exact:
            return self.oldest_use()[0]
        if self.listed == 0:
            return NONE
        flags = self.flags
        n = len(flags)
        hand = self._hand
        for _ in range(2 * n + 1):  # a whole turn clears every reference bit
            if hand >= n:
                hand = 0
            state = flags[hand]
            if state & LISTED:
                if not state & _REFERENCED:
                    self._hand = hand
                    return hand
                flags[hand] = state & ~_REFERENCED
            hand += 1
        raise AssertionError("listed records but no victim")  # pragma: no cover

    def listed_ids(self) -> Iterator[int]:
        """Listed ids, least recently used first if exact, else in id order
        (do not change the order meanwhile)."""
        if self.exact:
            used = self.used
            yield from heapq.merge(self._chain(self.head), self._chain(self.demoted_head),
                                   key=used.__getitem__)  # fmt: skip
        else:
            flags = self.flags
            for rid in range(len(flags)):
                if flags[rid] & LISTED:
                    yield rid

    def _chain(self, rid: int) -> Iterator[int]:
        next_ = self.next
        while rid != NONE:
            yield rid
            rid = next_[rid]

    # -- accounting ---------------------------------------------------------------------

    def nbytes(self) -> int:
        """The memory the live records and the index take."""
        per_record = EXACT_RECORD_BYTES if self.exact else RECORD_BYTES
        return self.count * per_record + len(self._heads) * 4
