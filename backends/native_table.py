"""The record table in C (``native/table.c``), behind the interface of the Python one.

``volcache.records.RecordTable`` is the reference: what it does, this does,
and the differential tests drive both side by side. The table is one private
anonymous mapping that this object owns (a header, then a column per field,
then the bucket heads); its columns are exposed as memoryviews over the
mapping, so that reading ``flags[rid]`` costs what reading an ``array`` does,
and they move only when the table grows: a full table is copied into a
mapping twice as large (``MAP_NORESERVE``: only the pages written take
memory), and its pages are given back to the kernel when it empties.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .clib import ffi, lib, unavailable_reason

NONE = -1
MAP_NORESERVE = 0x4000  # Linux; the mmap module does not name it before 3.13
#: Records a table holds at most (a record id is an int32).
MAX_RECORDS = (1 << 31) - 1
#: Records a new table has room for: one page; a full table moves to one twice
#: as large (so that many small caches take little, and fit under an
#: address-space limit).
FIRST_ROOM = 64
# The header's int64 fields, in the order of struct vc_table (table.h).
_FIELDS = (
    "magic", "max_records", "exact", "size", "count", "listed", "indexed", "free_id", "head",
    "tail", "demoted_head", "demoted_tail", "hand", "bits", "off_hash", "off_loc", "off_length",
    "off_flags", "off_chain", "off_prev", "off_next", "off_used", "off_heads", "max_bits", "total",
)  # fmt: skip
_RECORD_BYTES = 4 + 8 + 4 + 1 + 4  # as records.RECORD_BYTES
_EXACT_RECORD_BYTES = _RECORD_BYTES + 4 + 4 + 8
_BITS = _FIELDS.index("bits")
_SIZE, _COUNT, _LISTED = _FIELDS.index("size"), _FIELDS.index("count"), _FIELDS.index("listed")
_HEAD, _TAIL = _FIELDS.index("head"), _FIELDS.index("tail")
_DEMOTED_HEAD, _DEMOTED_TAIL = _FIELDS.index("demoted_head"), _FIELDS.index("demoted_tail")


def unavailable() -> str | None:
    """None if the C table can be used here, else why not."""
    return unavailable_reason()


def _check(result: int, what: str) -> int:
    if result >= 0:
        return result
    if result == -errno.ENOSPC:
        raise MemoryError(f"the record table is full ({what})")
    if result == -errno.EINVAL:
        raise ValueError(f"record table: {what} refused (no such record, or not in that state)")
    raise RuntimeError(f"record table: {what} found its books broken (errno {-result})")


class NativeRecordTable:
    """Records by id, a hash index over them, and a recency order, in C.

    The same interface and behaviour as ``volcache.records.RecordTable``
    (see there); ``size`` is the columns' length (the high-water mark of ids).
    Not thread safe: the cache holds its lock around every call.
    """

    def __init__(
        self, exact: bool = False, stamp: Callable[[], int] | None = None,
        max_records: int = MAX_RECORDS, native: Any = None, room: int = FIRST_ROOM,
    ) -> None:  # fmt: skip
        # ``native``: another build of table.c (the sanitizers' one, in CI's run).
        self._ffi, self._lib = (ffi, lib) if native is None else (native.ffi, native.lib)
        if self._lib is None:
            raise RuntimeError(f"the native record table is unavailable: {unavailable_reason()}")
        self.exact = exact
        self.stamp: Callable[[], int] = stamp or itertools.count(1).__next__
        self.max_records = max_records
        self._ids = self._ffi.new("int32_t[]", 64)  # room for candidates and listed ids
        # The calls a store makes most, found once (not two lookups a call).
        native = self._lib
        self._new, self._delete = native.vc_rec_new, native.vc_rec_delete
        self._index, self._unindex = native.vc_rec_index, native.vc_rec_unindex
        self._head_of, self._append = native.vc_rec_head_of, native.vc_rec_append
        self._place, self._touch = native.vc_rec_place, native.vc_rec_touch
        self._unlist = native.vc_rec_unlist
        self._resident = native.vc_table_resident
        self._map: mmap.mmap | None = None
        self._t: Any = None
        self._first_room = min(room, max_records)
        self._release: weakref.finalize | None = None
        self._settle(min(room, max_records), None)

    def _settle(self, room: int, old: Any) -> None:
        """Map a table with room for ``room`` records: a new one, or holding what the
        table ``old`` holds; its columns become this object's."""
        total = _check(self._lib.vc_table_bytes(room), "size")
        mapping = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        base = self._ffi.from_buffer(mapping)  # exported: the mapping cannot close under us
        t = self._ffi.cast("struct vc_table *", base)
        if old is None:
            _check(self._lib.vc_table_init(t, total, room, self.exact), "init")
        else:
            _check(self._lib.vc_table_grow(t, total, room, old), "grow")
        if self._release is not None:  # the mapping this one replaces
            self._release.detach()
            self._lib.vc_table_release(self._t)
        self._map, self._base, self._t, self.room = mapping, base, t, room
        # Before the mapping goes (the attributes are still there when this runs).
        self._release = weakref.finalize(self, self._lib.vc_table_release, t)
        view = memoryview(mapping)
        self._header = view[: len(_FIELDS) * 8].cast("q")
        self.hash = view[t.off_hash : t.off_hash + 4 * room].cast("I")
        self.loc = view[t.off_loc : t.off_loc + 8 * room].cast("q")
        self.length = view[t.off_length : t.off_length + 4 * room].cast("I")
        self.flags = view[t.off_flags : t.off_flags + room].cast("B")
        self.chain = view[t.off_chain : t.off_chain + 4 * room].cast("i")
        self.prev = view[t.off_prev : t.off_prev + 4 * room].cast("i")
        self.next = view[t.off_next : t.off_next + 4 * room].cast("i")
        self.used = view[t.off_used : t.off_used + 8 * room].cast("q")

    def _grow(self) -> None:
        """Full: a mapping twice as large, holding the same records (each column
        is then at least half used: a mapping's pages are little more than its
        records' bytes). Callers read
        the columns anew after a new record (none keeps a column across one)."""
        if self.room >= self.max_records:
            raise MemoryError(f"the record table is full ({self.room} records)")
        self._settle(min(self.room * 2, self.max_records), self._t)

    # -- the header --------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The columns' length: ids below it have been used."""
        return self._header[_SIZE]

    @property
    def count(self) -> int:
        """Records in use."""
        return self._header[_COUNT]

    @property
    def listed(self) -> int:
        """Records in the recency order."""
        return self._header[_LISTED]

    @property
    def head(self) -> int:
        """Exact: the least recently used record listed when used (NONE if none)."""
        return self._header[_HEAD]

    @property
    def tail(self) -> int:
        """Exact: the most recently used record listed when used (NONE if none)."""
        return self._header[_TAIL]

    @property
    def demoted_head(self) -> int:
        """Exact: the least recently used record listed by a demotion (NONE if none)."""
        return self._header[_DEMOTED_HEAD]

    @property
    def demoted_tail(self) -> int:
        """Exact: the most recently used record listed by a demotion (NONE if none)."""
        return self._header[_DEMOTED_TAIL]

    # -- ids, the index, the order --------------------------------------------------------

    def new(self, h: int, loc: int, length: int, flags: int) -> int:
        """A record id for a new record (not indexed, not listed)."""
        rid = self._new(self._t, h, loc, length, flags)
        if rid == -errno.ENOSPC:
            self._grow()
            rid = self._new(self._t, h, loc, length, flags)
        return rid if rid >= 0 else _check(rid, "new")

    def delete(self, rid: int) -> None:
        """Forget a record: out of the index and the order, its id free for reuse."""
        if (done := self._delete(self._t, rid)) < 0:
            _check(done, "delete")
        if self.room > self._first_room and not self._header[_COUNT]:
            self._settle(self._first_room, None)  # emptied: the large mapping goes whole

    def index(self, rid: int) -> None:
        """Put a record in the hash index."""
        if (done := self._index(self._t, rid)) < 0:
            _check(done, "index")

    def unindex(self, rid: int) -> None:
        """Take a record out of the hash index."""
        if (done := self._unindex(self._t, rid)) < 0:
            _check(done, "unindex")

    def head_of(self, h: int) -> int:
        """The first id in the bucket of hash ``h`` (chained through ``chain``), or NONE."""
        rid = self._head_of(self._t, h)
        return NONE if rid < 0 else rid

    def candidates(self, h: int) -> list[int]:
        """The ids of indexed records whose hash is ``h``."""
        return self._ids_of(lambda out, cap: self._lib.vc_rec_candidates(self._t, h, out, cap))

    def append(self, rid: int) -> None:
        """List a record as the most recently used."""
        if (done := self._append(self._t, rid, self.stamp() if self.exact else 0)) < 0:
            _check(done, "append")

    def place(self, rid: int, used: int) -> None:
        """List a record last used at stamp ``used``, in its place by it (exact)."""
        if (done := self._place(self._t, rid, used)) < 0:
            _check(done, "place")

    def touch(self, rid: int) -> None:
        """A listed record was used: the most recently used (exact), or referenced."""
        if (done := self._touch(self._t, rid, self.stamp() if self.exact else 0)) < 0:
            _check(done, "touch")

    def unlist(self, rid: int) -> None:
        """Take a record out of the recency order."""
        if (done := self._unlist(self._t, rid)) < 0:
            _check(done, "unlist")

    def oldest_use(self) -> tuple[int, int]:
        """Exact: (the listed record least recently used or NONE, its stamp)."""
        used = self._ffi.new("int64_t *")
        rid = self._lib.vc_rec_oldest_use(self._t, used)
        if rid == -errno.ENOENT:
            return NONE, 0
        return _check(rid, "oldest use"), used[0]

    def victim(self) -> int:
        """The listed record to evict first (NONE if none)."""
        rid = self._lib.vc_rec_victim(self._t)
        return NONE if rid == -errno.ENOENT else _check(rid, "victim")

    def listed_ids(self) -> Iterator[int]:
        """Listed ids, least recently used first if exact, else in id order."""
        return iter(self._ids_of(lambda out, cap: self._lib.vc_rec_listed(self._t, out, cap)))

    def _ids_of(self, fill: Callable[[Any, int], int]) -> list[int]:
        ids = self._ids
        found = _check(fill(ids, len(ids)), "ids")
        if found > len(ids):  # a room of their own, not kept
            ids = self._ffi.new("int32_t[]", found)
            found = _check(fill(ids, found), "ids")
        return list(self._ffi.unpack(ids, found))

    def nbytes(self) -> int:
        """The memory the live records and the index take, as the Python table
        counts it: what evicting records gives back (a table keeps its pages, up
        to about twice that and a header page, until it empties)."""
        header = self._header
        per_record = _EXACT_RECORD_BYTES if self.exact else _RECORD_BYTES
        return header[_COUNT] * per_record + (4 << header[_BITS])

    def resident(self) -> int:
        """The bytes of the pages the table's parts in use touch."""
        return self._resident(self._t)
