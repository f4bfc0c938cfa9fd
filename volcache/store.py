"""The store: each entry's bytes in volatile slabs, its record in the record table.

An entry's bytes are laid out as::

    value | key | decoder parameters | trailer (key and parameter lengths, decoder tag, flags)

The value comes first, so that it keeps the slot's alignment (a page for a
large value) and :meth:`Store.value_view` is a plain slice. The key is
serialized by :func:`volcache.keys.key_bytes` (``marshal`` version 2, with
codes for the types in typed call keys); keys it refuses (anything but exact
built-in types) are kept as Python objects by the cache. The decoder is a tag:
``bytes``, ``bytearray``, an ``array.array`` or numpy array with its
parameters beside the key, or one of a bounded table of decoders seen before
(a codec's own ``decode``; for a ``functools.partial`` of marshallable
arguments, its function, the arguments stored beside the key).
"""

from __future__ import annotations

import contextlib
import marshal
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from . import native_records
from .backends import Backend
from .codecs import Decoder, decoder_from_spec, decoder_spec
from .keys import key_from_bytes, marshals_exactly
from .records import ACTIVE, KEPT, RecordTable
from .slab import OFFSET_MASK, SlabAllocator
from .slabbooks import NEED_ROOM

TRAILER = struct.Struct("<IIHBx")
RAW = 1  # trailer flag: the value's own bytes (pin() gives them)
_PARTIAL = 2  # trailer flag: the tag's function, applied to the marshalled parameters
SPECIAL_KEY = 4  # trailer flag: the key is in the special form of keys.key_bytes
_KEY_VERSION = 2
_BYTES, _BYTEARRAY = 0, 1
_FIRST_SHARED_TAG = 4
_MAX_DECODERS = 1024  # distinct decoders given tags; past them an entry keeps its own
OWN_DECODER = 0xFFFF  # the tag of a decoder kept by the entry's Python object
_LONG = 0xFFFFFFFF  # a record's length field for entries of 4 GiB and more
_JOIN_BELOW = 4096  # entries up to this long are joined in Python, then copied once
_READ_WHOLE = 16384  # entries up to this long are read in one copy; longer ones in parts
_TAIL = 512  # a long entry's last bytes read first: its key, parameters and trailer, mostly
OTHER_KEY = object()  # Store.peek: the record holds another key
PURGED = object()  # Store.peek: a purge took some of the record's bytes


class Decoders:
    """Tags for decoders: built-in ones, parametrized ones, and up to 1024 others."""

    def __init__(self) -> None:
        self._tags: dict[Any, int] = {}
        self._table: list[Decoder] = []  # by tag - _FIRST_SHARED_TAG

    def tag(self, decode: Decoder, raw: bool) -> tuple[int, bytes, int]:
        """(tag, parameters, flags) for a decoder; the tag is ``OWN_DECODER`` if it gets none."""
        flags = RAW if raw else 0
        if decode is bytes:
            return _BYTES, b"", flags
        if decode is bytearray:
            return _BYTEARRAY, b"", flags
        spec = decoder_spec(decode)
        if spec is not None:
            return spec[0], spec[1], flags
        # A decoder made per value (a shape, a mode): its function gets the tag,
        # its arguments go beside the key, if marshal gives them back as they
        # were (it writes a numpy scalar as bytes).
        if type(decode) is partial and not decode.keywords and marshals_exactly(decode.args):
            params = marshal.dumps(decode.args, _KEY_VERSION)
            tag = self._intern(decode.func)
            if tag != OWN_DECODER:
                return tag, params, flags | _PARTIAL
        return self._intern(decode), b"", flags

    def _intern(self, decode: Decoder) -> int:
        try:
            tag = self._tags.get(decode)
        except TypeError:  # an unhashable decoder
            return OWN_DECODER
        if tag is None:
            if len(self._table) >= _MAX_DECODERS:
                return OWN_DECODER
            tag = self._tags[decode] = _FIRST_SHARED_TAG + len(self._table)
            self._table.append(decode)
        return tag

    def decoder(self, tag: int, spec: memoryview, flags: int) -> Decoder:
        """The decoder of a tag (not ``OWN_DECODER``) and its stored parameters."""
        if tag == _BYTES:
            return bytes
        if tag == _BYTEARRAY:
            return bytearray
        if tag < _FIRST_SHARED_TAG:
            return decoder_from_spec(tag, spec)
        decode = self._table[tag - _FIRST_SHARED_TAG]
        if flags & _PARTIAL:
            return partial(decode, *marshal.loads(spec))
        return decode


def new_table(exact: bool = False, stamp: Callable[[], int] | None = None) -> Any:
    """A new record table: the C one where volcache._core is in use (see
    :mod:`volcache.coremodule`), else :class:`~volcache.records.RecordTable` (the
    same interface and behaviour).

    Through cffi, whose calls release the GIL and take it again, the C table
    made the uffd purger under a real cgroup limit give memory back 80-420 ms
    late and the group was OOM-killed in 5 of 12 runs of
    benchmarks/test_uffd_limit.py; through the C API, holding the GIL, in 0 of 12.
    """
    if native_records.unavailable() is None:
        try:
            return native_records.NativeRecordTable(exact, stamp)
        except OSError:  # no address space for a mapping (RLIMIT_AS): the reference then
            pass
    return RecordTable(exact, stamp)


class Store:
    """Entries as records plus bytes in slabs. Not thread safe: the cache holds its lock.

    Record ids are the handles. A record's pages are pinned while it is
    ACTIVE; reading its key or value needs that. Calls that re-pin return
    the ids a purge took (see :meth:`SlabAllocator.activate`).
    """

    def __init__(
        self, backend: Backend, slab_bytes: int, exact: bool = False,
        stamp: Callable[[], int] | None = None,
    ) -> None:  # fmt: skip
        self.records = new_table(exact, stamp)
        self.slabs = SlabAllocator(backend, slab_bytes)
        # Both in C: a store is one call of the C core (see _put_fused).
        self._fused = hasattr(self.records, "handle") and hasattr(self.slabs.books, "put")
        self.decoders = Decoders()
        self.active_nbytes = 0
        self._long: dict[int, int] = {}  # the lengths of entries of 4 GiB and more

    def put(
        self, h: int, data: memoryview, key: bytes, tag: int, spec: bytes, flags: int
    ) -> tuple[int, list[int]]:
        """A new active record holding the bytes: (id, ids a purge took meanwhile).

        Raises:
            MemoryError, OSError: from the backend; nothing is changed then.
        """
        nvalue, nkey, nspec = data.nbytes, len(key), len(spec)
        length = nvalue + nkey + nspec + TRAILER.size
        if self._fused and length < _LONG:
            return self._put_fused(h, data, key, tag, spec, flags, length)
        trailer = TRAILER.pack(nkey, nspec, tag, flags)  # a bad tag fails before anything
        records = self.records
        rid = records.new(h, 0, min(length, _LONG), ACTIVE)
        try:
            loc, lost = self.slabs.allocate(length, rid)
        except BaseException:
            records.flags[rid] = 0
            records.delete(rid)
            raise
        records.loc[rid] = loc
        if length >= _LONG:
            self._long[rid] = length
        view = self.slabs.view(loc, length)
        try:
            if length <= _JOIN_BELOW:  # one copy into volatile memory, not four
                view[:] = b"".join((data, key, spec, trailer))
            else:
                view[:nvalue] = data
                view[nvalue : nvalue + nkey] = key
                view[nvalue + nkey : length - TRAILER.size] = spec
                view[length - TRAILER.size :] = trailer
        finally:
            view.release()
        self.active_nbytes += length
        return rid, lost

    def _put_fused(
        self, h: int, data: memoryview, key: bytes, tag: int, spec: bytes, flags: int, length: int
    ) -> tuple[int, list[int]]:
        """``put`` in one call of the C core (what the lines above do, step by step)."""
        slabs = self.slabs
        if slabs.backend.closed:  # its regions are unmapped: C must not write there
            raise ValueError(f"the backend {slabs.backend!r} was closed")
        books: Any = slabs.books  # the C books: put() is theirs
        records = self.records
        while True:
            rid, more = books.put(records.handle, h, data, key, spec, tag, flags)
            if rid >= 0:
                self.active_nbytes += length
                return rid, more  # type: ignore[return-value]
            if rid == NEED_ROOM:
                records.make_room()
            else:
                slabs.serve(rid, more)

    def settle_new(self, rid: int) -> None:
        """A new record (no Python object, not kept) joins the index and the order, the
        most recently used, and goes idle."""
        records = self.records
        if self._fused and rid not in self._long:
            books: Any = self.slabs.books  # the C books: settle() is theirs
            stamp = records.stamp() if records.exact else 0
            self.active_nbytes -= books.settle(records.handle, rid, stamp)
            return
        records.index(rid)
        records.append(rid)
        self.deactivate(rid)

    def put_kept(self, h: int) -> int:
        """A new record without bytes, for a value kept as a Python object."""
        return self.records.new(h, 0, 0, KEPT)

    def length(self, rid: int) -> int:
        """The bytes an entry takes: value, key, decoder parameters and trailer."""
        length = self.records.length[rid]
        return length if length != _LONG else self._long[rid]

    def activate(self, rid: int) -> list[int]:
        """Pin a record's pages; the ids a purge took (``rid`` among them if its own bytes).

        Raises:
            OSError: the pages could not be re-pinned; nothing changed.
        """
        flags = self.records.flags
        if flags[rid] & (ACTIVE | KEPT):
            return []
        length = self.length(rid)
        lost = self.slabs.activate(self.records.loc[rid], length)
        flags[rid] |= ACTIVE
        self.active_nbytes += length
        return lost

    def deactivate(self, rid: int) -> None:
        """The record went idle: its pages may become volatile."""
        flags = self.records.flags
        if flags[rid] & ACTIVE:
            flags[rid] &= ~ACTIVE
            length = self.length(rid)
            self.active_nbytes -= length
            self.slabs.deactivate(self.records.loc[rid], length)

    def free(self, rid: int) -> None:
        """Forget a record and give its bytes back."""
        records = self.records
        if self._fused:
            books: Any = self.slabs.books  # the C books: free_record() is theirs
            done = books.free_record(records.handle, rid)
            if done is not None:  # else a record of 4 GiB or more: the way below
                empty, length, active = done
                if active:
                    self.active_nbytes -= length
                records.deleted()
                if empty >= 0:  # a backend refusing it: the slab stays, the record went
                    self.slabs.release_slab(empty)
                return
        if records.flags[rid] & KEPT:
            records.delete(rid)
            return
        length = self.length(rid)
        active = bool(records.flags[rid] & ACTIVE)
        # The books first: if they refuse (no memory), nothing changed and the record stays.
        empty = self.slabs.books.free(records.loc[rid], length, rid, active)
        if active:
            self.active_nbytes -= length
        self._long.pop(rid, None)
        records.delete(rid)
        if empty >= 0:  # a backend refusing it: the slab stays, the record went
            self.slabs.release_slab(empty)

    def _open(self, rid: int) -> tuple[memoryview, int, int, int, int, int]:
        """(a view of an active record's bytes, value, key and parameter lengths, tag,
        flags); release the view when done."""
        length = self.length(rid)
        view = self.slabs.view(self.records.loc[rid], length)
        nkey, nspec, tag, flags = TRAILER.unpack_from(view, length - TRAILER.size)
        return view, length - TRAILER.size - nspec - nkey, nkey, nspec, tag, flags

    def peek(self, rid: int, key: Any) -> tuple[Any, Any]:
        """(stored key, value) of an indexed record if its key equals ``key``, read
        without re-pinning; else (``OTHER_KEY``, None), or (``PURGED``, None) if a
        purge took any of its bytes (nothing changed then: re-pin it to learn what
        it took)."""
        records = self.records
        loc, length = records.loc[rid], records.length[rid]
        slabs = self.slabs
        if length <= _READ_WHOLE:
            reader = slabs.fast_reader(loc)
            found = None if reader is None else reader(loc & OFFSET_MASK, length)
            if found is None:
                found = slabs.read(loc, length)  # the careful way
                if found is None:
                    return PURGED, None
            blob = found
            nkey, nspec, tag, flags = TRAILER.unpack_from(blob, length - TRAILER.size)
            nvalue = length - TRAILER.size - nspec - nkey
            view = memoryview(blob)
            start = nvalue
            whole = True
        else:  # the tail (key, parameters, trailer), then the value straight into its bytes
            tail = self._tail(rid)
            if tail is None:
                return PURGED, None
            view, start, nkey, nspec, tag, flags = tail
            nvalue = self.length(rid) - TRAILER.size - nspec - nkey
            whole, blob = False, b""  # the value is read below, apart
        if flags & SPECIAL_KEY:
            stored = key_from_bytes(view[start : start + nkey], True)
        else:
            stored = marshal.loads(view[start : start + nkey])
        if stored != key:
            return OTHER_KEY, None
        if whole:
            if tag == _BYTES:
                return stored, blob[:nvalue]
            value = view[:nvalue]
        else:
            data = slabs.read(loc, nvalue)
            if data is None:
                return PURGED, None
            if tag == _BYTES:
                return stored, data  # a bytes value's stored bytes are the value: no copy more
            value = memoryview(data)
        decode = self.decoders.decoder(tag, view[start + nkey : start + nkey + nspec], flags)
        return stored, decode(value.toreadonly())

    def peek_key(self, rid: int) -> Any:
        """The stored key of a record, read without re-pinning; ``PURGED`` if a purge
        took any of the bytes read (nothing changed then)."""
        tail = self._tail(rid)
        if tail is None:
            return PURGED
        view, start, nkey, _, _, flags = tail
        return key_from_bytes(view[start : start + nkey], bool(flags & SPECIAL_KEY))

    def _tail(self, rid: int) -> tuple[memoryview, int, int, int, int, int] | None:
        """(a view of the record's last bytes read without re-pinning, where its key
        starts in them, key and parameter lengths, tag, flags); None if purged."""
        length = self.length(rid)
        loc = self.records.loc[rid]
        tail = min(length, _TAIL)
        blob = self.slabs.read(loc + length - tail, tail)
        if blob is None:
            return None
        nkey, nspec, tag, flags = TRAILER.unpack_from(blob, tail - TRAILER.size)
        if nkey + nspec + TRAILER.size > tail:  # a long key: read all of it
            tail = nkey + nspec + TRAILER.size
            blob = self.slabs.read(loc + length - tail, tail)
            if blob is None:
                return None
        return memoryview(blob), tail - TRAILER.size - nspec - nkey, nkey, nspec, tag, flags

    def key_matches(self, rid: int, key: Any) -> tuple[bool, Any]:
        """(whether an active record's key equals ``key``, the stored key).

        The stored key is read back and compared with ``==`` (``1 == 1.0``,
        as in a dict).
        """
        other = self.key(rid)
        return other == key, other

    def key(self, rid: int) -> Any:
        """The stored key of an active record."""
        view, nvalue, nkey, _, _, flags = self._open(rid)
        try:
            return key_from_bytes(view[nvalue : nvalue + nkey], bool(flags & SPECIAL_KEY))
        finally:
            view.release()

    def raw(self, rid: int) -> bool:
        """Whether an active record's value is stored as its raw bytes."""
        if self.records.flags[rid] & KEPT:
            return False
        view, *_, flags = self._open(rid)
        view.release()
        return bool(flags & RAW)

    def value_view(self, rid: int) -> memoryview:
        """A writable view of an active record's value bytes (release it when done)."""
        view, nvalue, *_ = self._open(rid)
        try:
            return view[:nvalue]
        finally:
            view.release()

    def own_decoder(self, rid: int) -> bool:
        """Whether an active record's entry must keep its decoder (it has no tag)."""
        view, _, _, _, tag, _ = self._open(rid)
        view.release()
        return tag == OWN_DECODER

    def decode(self, rid: int, own: Decoder | None = None) -> Any:
        """Decode an active record's value (``own``: the entry's decoder, if it keeps one)."""
        view, nvalue, nkey, nspec, tag, flags = self._open(rid)
        try:
            if tag == OWN_DECODER:
                if own is None:
                    raise TypeError("the entry keeps its own decoder, and none was given")
                decode = own
            else:
                start = nvalue + nkey
                decode = self.decoders.decoder(tag, view[start : start + nspec], flags)
            value = view[:nvalue].toreadonly()
        finally:
            view.release()
        try:
            return decode(value)
        finally:
            # Harmless after a guarded decoder released it; if a guarded decoder
            # found a leak, its TypeError is what the caller must see.
            with contextlib.suppress(BufferError):
                value.release()

    def purged_ids(self) -> list[int]:
        """Ids of idle records the backend knows purged (they are still allocated)."""
        return self.slabs.purged_ids()

    def nbytes(self) -> int:
        """The memory the records and the allocator's books take."""
        return self.records.nbytes() + self.slabs.nbytes() + len(self._long) * 100

    def close(self) -> None:
        """Give every slab back and forget every record."""
        self.slabs.close()
        # Closed: an empty table of the reference, which maps nothing.
        self.records = RecordTable(self.records.exact, self.records.stamp)
        self._fused = False
        self._long.clear()
        self.active_nbytes = 0
