"""The shared segment's layout: a header, an index of records, a page map, pages.

Every reference in the segment is an offset or an index, never a pointer:
each process maps the segment at its own address.

::

    page 0          header (magic, version, geometry, the operation under way,
                    counters) and the table of attached processes
    index           ``slots`` records of RECORD.size bytes, open addressing
    page map        one byte per data page: 0 free, 1 taken
    data            pages; an entry owns a run of them: its key, then its value

Invariants (each holds whenever the segment's lock is free and ``dirty`` is 0):

- A record's ``state`` is written last when it becomes LIVE and first when it
  stops being LIVE: a record read as LIVE has all its other fields written.
- A LIVE record owns pages ``[first, first + npages)``, which hold its head
  and key (``key length`` bytes) then its value (``crc`` is the CRC-32 of both); no two LIVE records
  share a page, and the page map marks exactly the pages of LIVE records.
- A PURGED record owns no pages: only its hash says which key it was.
- A LIVE record read since it was stored or the purge's hand last passed it
  has ``last use > seq``: the hand gives it a second chance (CLOCK, an
  approximation of least recently used that costs the work it does, not a
  scan of the whole index; an entry never read again goes first).
- A key has at most one LIVE or PURGED record, found by probing from its hash
  before the first EMPTY slot (TOMBSTONE and BUSY slots are probed past).
- ``dirty`` is 1 (2 for a clear) from the start of a change to the end: a
  process that takes the lock and finds it set knows the holder died
  mid-change, and recovers.
"""

from __future__ import annotations

import struct

MAGIC = b"VOLCSHM\x00"
#: Bumped with every change of the layout: a segment of another is refused.
VERSION = 3
PAGE = 4096

# magic, version, page size, size, slots, index offset, map offset, data
# offset, data pages, dirty, clock, live records, purged records, pages taken,
# purges, recoveries, the purge's clock hand
HEADER = struct.Struct("<8sIIQQQQQQQQQQQQQQ")
#: Where the table of attached processes starts in page 0, and its rows.
ATTACHED_AT, ATTACHED = 1024, 128
ATTACHED_ROW = struct.Struct("<IIQ")  # pid, 0, start time (clock ticks since boot)

# state, key length, hash, first page, pages, value length, seq, last use, crc, tag
RECORD = struct.Struct("<IIQQQQQQII")
STATE = struct.Struct("<I")
LAST_USE = struct.Struct("<Q")
LAST_USE_AT = 48  # the offset of ``last use`` in a record
SEEN_AT = 40  # of ``seq``: the clock when the purge's hand last passed the record

# Each entry's pages begin with its head: the stable key's length and the
# entry's expiry (``time.monotonic()``, one clock for every process of the
# machine; 0: never), then the stable key, then the key's pickle, then the value.
HEAD = struct.Struct("<Id")

EMPTY, LIVE, PURGED, TOMBSTONE, BUSY = 0, 1, 2, 3, 4
#: ``dirty`` while a clear wipes the index: recovery finishes the clear.
CLEARING = 2

# Offsets of the header's mutable fields.
DIRTY_AT = HEADER.size - 8 * 8
CLOCK_AT = DIRTY_AT + 8
LIVE_AT = DIRTY_AT + 16
PURGED_AT = DIRTY_AT + 24
TAKEN_AT = DIRTY_AT + 32
PURGES_AT = DIRTY_AT + 40
RECOVERIES_AT = DIRTY_AT + 48
HAND_AT = DIRTY_AT + 56
Q = struct.Struct("<Q")


def geometry(size: int) -> tuple[int, int, int, int, int]:
    """(slots, index offset, map offset, data offset, data pages) of a segment of
    ``size`` bytes: the index has two slots per data page (a power of two, so
    that probing is a mask), and the rest is data."""
    if size < 16 * PAGE:
        raise ValueError(f"size must be at least {16 * PAGE} bytes, got {size}")
    pages = size // PAGE - 1
    while True:
        slots = 1 << max(4, (2 * pages - 1).bit_length())
        index_pages = -(-slots * RECORD.size // PAGE)
        map_pages = -(-pages // PAGE)
        data_pages = size // PAGE - 1 - index_pages - map_pages
        if data_pages > 0 and 2 * data_pages <= slots:
            break
        pages = data_pages if data_pages > 0 else pages // 2
    index_at = PAGE
    map_at = index_at + index_pages * PAGE
    data_at = map_at + map_pages * PAGE
    return slots, index_at, map_at, data_at, data_pages
