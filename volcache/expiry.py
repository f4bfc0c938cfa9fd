"""Expiry times in order: which records' time is up, soonest first.

A binary min-heap of (time, record id) in two arrays (12 bytes an entry, no
Python object). Entries removed before their time stay in it until their time
comes or the heap is rebuilt: a popped (time, id) counts only if the record
still expires at that time (its owner checks). With a TTL of a fixed number of
seconds, times come in order and a push is one comparison.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable


class ExpiryHeap:
    """(time, record id) pairs, the soonest time first. Not thread safe."""

    def __init__(self) -> None:
        self.when = array("d")
        self.rid = array("i")

    def __len__(self) -> int:
        return len(self.when)

    def soonest(self) -> float:
        """The soonest time in the heap (``inf`` if empty)."""
        return self.when[0] if self.when else float("inf")

    def push(self, when: float, rid: int) -> None:
        """Add a record that expires at ``when``."""
        times, ids = self.when, self.rid
        times.append(when)
        ids.append(rid)
        i = len(times) - 1
        while i:  # up while the parent is later
            parent = (i - 1) >> 1
            if times[parent] <= when:
                break
            times[i], ids[i] = times[parent], ids[parent]
            i = parent
        times[i], ids[i] = when, rid

    def pop(self) -> tuple[float, int]:
        """Remove and return the soonest (time, record id)."""
        times, ids = self.when, self.rid
        first = times[0], ids[0]
        last_when, last_rid = times.pop(), ids.pop()
        n = len(times)
        if n:
            i = 0
            while True:  # down while a child is sooner
                child = 2 * i + 1
                if child >= n:
                    break
                if child + 1 < n and times[child + 1] < times[child]:
                    child += 1
                if times[child] >= last_when:
                    break
                times[i], ids[i] = times[child], ids[child]
                i = child
            times[i], ids[i] = last_when, last_rid
        return first

    def rebuild(self, pairs: Iterable[tuple[float, int]]) -> None:
        """Hold exactly ``pairs`` (the live records: what was removed early goes)."""
        self.when, self.rid = array("d"), array("i")
        for when, rid in sorted(pairs):  # sorted: a heap already
            self.when.append(when)
            self.rid.append(rid)

    def clear(self) -> None:
        """Hold nothing (and give the arrays' memory back)."""
        self.when, self.rid = array("d"), array("i")
