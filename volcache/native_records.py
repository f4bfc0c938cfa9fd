"""The record table in C (``core/table.c``), behind the interface of the Python one.

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
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .coremodule import WHY, core
from .records import EXACT_RECORD_BYTES, RECORD_BYTES

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
_BITS = _FIELDS.index("bits")
_SIZE, _COUNT, _LISTED = _FIELDS.index("size"), _FIELDS.index("count"), _FIELDS.index("listed")
_HEAD, _TAIL = _FIELDS.index("head"), _FIELDS.index("tail")
_DEMOTED_HEAD, _DEMOTED_TAIL = _FIELDS.index("demoted_head"), _FIELDS.index("demoted_tail")


def unavailable() -> str | None:
    """None if the C table can be used here, else why not."""
    return WHY


def _check(result: int, what: str) -> int:
    if result >= 0:
        return result
    if result == -errno.ENOSPC:
        raise MemoryError(f"the record table is full ({what})")
    if result == -errno.EINVAL:
        raise ValueError(f"record table: {what} refused (no such record, or not in that state)")
    raise RuntimeError(f"record table: {what} found its books broken (errno {-result})")


def _ids(found: list[int] | int) -> list[int]:
    if isinstance(found, int):
        _check(found, "ids")
    return found  # type: ignore[return-value]


class NativeRecordTable:
    """Records by id, a hash index over them, and a recency order, in C.

    The same interface and behaviour as ``volcache.records.RecordTable``
    (see there); ``size`` is the columns' length (the high-water mark of ids).
    Not thread safe: the cache holds its lock around every call.
    """

    def __init__(
        self, exact: bool = False, stamp: Callable[[], int] | None = None,
        max_records: int = MAX_RECORDS, room: int = FIRST_ROOM,
    ) -> None:  # fmt: skip
        if core is None:
            raise RuntimeError(f"the native record table is unavailable: {WHY}")
        self.exact = exact
        self.stamp: Callable[[], int] = stamp or itertools.count(1).__next__
        self.max_records = max_records
        self._map: mmap.mmap | None = None
        self._t: Any = None
        self._first_room = min(room, max_records)
        self._release: weakref.finalize | None = None
        self._settle(min(room, max_records), None)

    def _settle(self, room: int, old: Any) -> None:
        """Map a table with room for ``room`` records: a new one, or holding what the
        table ``old`` holds; its columns become this object's."""
        assert core is not None
        total = _check(core.table_bytes(room), "size")
        mapping = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        t = core.Table(mapping)  # holds the buffer: the mapping cannot close under it
        if old is None:
            _check(t.init(total, room, self.exact), "init")
        else:
            _check(t.grow(total, room, old), "grow")
        if self._release is not None:  # the mapping this one replaces
            self._release.detach()
            self._t.release()
        self._map, self._t, self.room = mapping, t, room
        # Before the mapping goes (the attributes are still there when this runs).
        self._release = weakref.finalize(self, t.release)
        # Not at exit: caches still open then go on working (the process's end frees it).
        self._release.atexit = False
        # The calls a store makes most, found once (not two lookups a call).
        self._new, self._delete = t.new, t.delete
        self._index, self._unindex = t.index, t.unindex
        self._head_of, self._append = t.head_of, t.append
        self._place, self._touch = t.place, t.touch
        self._unlist = t.unlist
        view = memoryview(mapping)
        self._header = header = view[: len(_FIELDS) * 8].cast("q")
        offsets = {name: header[_FIELDS.index(name)] for name in _FIELDS if name.startswith("off_")}
        t = types.SimpleNamespace(**offsets)
        self.hash = view[t.off_hash : t.off_hash + 4 * room].cast("I")
        self.loc = view[t.off_loc : t.off_loc + 8 * room].cast("q")
        self.length = view[t.off_length : t.off_length + 4 * room].cast("I")
        self.flags = view[t.off_flags : t.off_flags + room].cast("B")
        self.chain = view[t.off_chain : t.off_chain + 4 * room].cast("i")
        self.prev = view[t.off_prev : t.off_prev + 4 * room].cast("i")
        self.next = view[t.off_next : t.off_next + 4 * room].cast("i")
        self.used = view[t.off_used : t.off_used + 8 * room].cast("q")

    @property
    def handle(self) -> Any:
        """The table's ``volcache._core.Table`` (the C core's fused calls take it); a new
        one after :meth:`make_room`."""
        return self._t

    def make_room(self) -> None:
        """Full: grow (a fused call of the C core said so)."""
        self._grow()

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
        rid = self._new(h, loc, length, flags)
        if rid == -errno.ENOSPC:
            self._grow()
            rid = self._new(h, loc, length, flags)
        return rid if rid >= 0 else _check(rid, "new")

    def delete(self, rid: int) -> None:
        """Forget a record: out of the index and the order, its id free for reuse."""
        if (done := self._delete(rid)) < 0:
            _check(done, "delete")
        self.deleted()

    def deleted(self) -> None:
        """A record was deleted (here, or by a fused call of the C core)."""
        if self.room > self._first_room and not self._header[_COUNT]:
            self._settle(self._first_room, None)  # emptied: the large mapping goes whole

    def index(self, rid: int) -> None:
        """Put a record in the hash index."""
        if (done := self._index(rid)) < 0:
            _check(done, "index")

    def unindex(self, rid: int) -> None:
        """Take a record out of the hash index."""
        if (done := self._unindex(rid)) < 0:
            _check(done, "unindex")

    def head_of(self, h: int) -> int:
        """The first id in the bucket of hash ``h`` (chained through ``chain``), or NONE."""
        rid = self._head_of(h)
        return NONE if rid < 0 else rid

    def candidates(self, h: int) -> list[int]:
        """The ids of indexed records whose hash is ``h``."""
        return _ids(self._t.candidates(h))

    def append(self, rid: int) -> None:
        """List a record as the most recently used."""
        if (done := self._append(rid, self.stamp() if self.exact else 0)) < 0:
            _check(done, "append")

    def place(self, rid: int, used: int) -> None:
        """List a record last used at stamp ``used``, in its place by it (exact)."""
        if (done := self._place(rid, used)) < 0:
            _check(done, "place")

    def touch(self, rid: int) -> None:
        """A listed record was used: the most recently used (exact), or referenced."""
        if (done := self._touch(rid, self.stamp() if self.exact else 0)) < 0:
            _check(done, "touch")

    def unlist(self, rid: int) -> None:
        """Take a record out of the recency order."""
        if (done := self._unlist(rid)) < 0:
            _check(done, "unlist")

    def oldest_use(self) -> tuple[int, int]:
        """Exact: (the listed record least recently used or NONE, its stamp)."""
        rid, used = self._t.oldest_use()
        if rid == -errno.ENOENT:
            return NONE, 0
        return _check(rid, "oldest use"), used

    def victim(self) -> int:
        """The listed record to evict first (NONE if none)."""
        rid = self._t.victim()
        return NONE if rid == -errno.ENOENT else _check(rid, "victim")

    def listed_ids(self) -> Iterator[int]:
        """Listed ids, least recently used first if exact, else in id order."""
        return iter(_ids(self._t.listed()))

    def nbytes(self) -> int:
        """The memory the live records and the index take, as the Python table
        counts it: what evicting records gives back (a table keeps its pages, up
        to about twice that and a header page, until it empties)."""
        header = self._header
        per_record = EXACT_RECORD_BYTES if self.exact else RECORD_BYTES
        return header[_COUNT] * per_record + (4 << header[_BITS])

    def resident(self) -> int:
        """The bytes of the pages the table's parts in use touch."""
        return self._t.resident()
