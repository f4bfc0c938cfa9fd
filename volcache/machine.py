"""What this machine offers volcache: for ``volcache info``."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from . import cgroups

_MADV_PAGEOUT = 21


def _probe_advice(advice: int) -> str:
    mapping = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping[0] = 1
        mapping.madvise(advice)
        return "yes"
    except OSError as exc:
        return f"no ({exc.strerror})"
    finally:
        mapping.close()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _psi() -> str:
    path = "/proc/pressure/memory"
    if not os.path.exists(path):
        return "no (/proc/pressure/memory is missing)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        return f"readable only ({exc.strerror})"
    try:
        os.write(fd, b"some 50000 2000000\0")
        return "yes (poll triggers accepted; windows of 2 s multiples without CAP_SYS_RESOURCE)"
    except OSError as exc:
        return f"no triggers ({exc.strerror})"
    finally:
        os.close(fd)


def _userfaultfd() -> str:
    sysctl = _read("/proc/sys/vm/unprivileged_userfaultfd")
    device = "present" if os.path.exists("/dev/userfaultfd") else "absent"
    return f"/dev/userfaultfd {device}, vm.unprivileged_userfaultfd={sysctl}"


def _cgroups() -> str:
    found = cgroups.memory_controller()
    if found is None:
        return "no memory controller mounted"
    version, root = found
    reason = cgroups.unavailable_reason()
    state = "writable" if reason is None else "not writable"
    return f"{version} memory controller at {root}, {state}"


def report() -> list[tuple[str, str]]:
    """(what, how it is here) lines."""
    uname = os.uname()
    swap = _read("/proc/swaps")
    swaps = len(swap.splitlines()) - 1 if swap else 0
    return [
        ("kernel", f"{uname.sysname} {uname.release} {uname.machine}, {os.cpu_count()} CPUs"),
        ("MADV_FREE", _probe_advice(mmap.MADV_FREE)),
        ("MADV_PAGEOUT", _probe_advice(_MADV_PAGEOUT)),
        ("userfaultfd", _userfaultfd()),
        ("memory cgroup", _cgroups()),
        ("PSI", _psi()),
        ("transparent huge pages", _read("/sys/kernel/mm/transparent_hugepage/enabled") or "?"),
        ("swap", f"{swaps} device(s)" if swaps else "none"),
    ]
