"""The segment's table of attached processes: who has it open, alive or not.

A row is a pid and that process's start time (clock ticks since boot, from
``/proc/<pid>/stat``): a pid the system reuses later has another start time,
so a dead process's row never passes for a live one. A process's row is how
its pins name it (:mod:`.pins`); rows of dead processes are reused.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from . import layout as L


def start_time(pid: int) -> int:
    """A process's start time (clock ticks since boot); 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


class AttachedTable:
    """The table in one mapping (every call under the segment's lock)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm

    def _row(self, row: int) -> tuple[int, int]:
        pid, _, start = L.ATTACHED_ROW.unpack_from(
            self._mm, L.ATTACHED_AT + row * L.ATTACHED_ROW.size
        )
        return pid, start

    def attach(self) -> int:
        """This process's row, taken if it has none (a dead process's reused); -1
        if the table is full (info() is then short of it, and it cannot pin)."""
        me = (os.getpid(), start_time(os.getpid()))
        free = -1
        for row in range(L.ATTACHED):
            pid, start = self._row(row)
            if (pid, start) == me:
                return row
            if free < 0 and (pid == 0 or start_time(pid) != start):
                free = row
        if free >= 0:
            L.ATTACHED_ROW.pack_into(
                self._mm, L.ATTACHED_AT + free * L.ATTACHED_ROW.size, me[0], 0, me[1]
            )
        return free

    def alive(self, row: int) -> bool:
        """Whether the process of ``row`` still runs."""
        pid, start = self._row(row)
        return pid != 0 and start_time(pid) == start

    def pids(self) -> list[int]:
        """The pids of the live processes in the table."""
        return [
            pid
            for pid, start in map(self._row, range(L.ATTACHED))
            if pid and start_time(pid) == start
        ]
