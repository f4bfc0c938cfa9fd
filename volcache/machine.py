"""What this machine offers volcache: for ``volcache info``."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from . import cgroups
from .backends import BackendUnavailable
from .backends.kernel import MADV_PAGEOUT, try_advice
from .backends.pressure import PSI_SYSTEM, PsiSource


def _advice(advice: int) -> str:
    refused, _ = try_advice(advice)
    return "yes" if refused is None else f"no ({refused})"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _psi() -> str:
    try:
        PsiSource(PSI_SYSTEM, "some 50000 2000000").close()
    except BackendUnavailable as exc:
        return f"no: {exc.reason}"
    return "yes (poll triggers accepted; windows of 2 s multiples without CAP_SYS_RESOURCE)"


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
        ("MADV_FREE", _advice(mmap.MADV_FREE)),
        ("MADV_PAGEOUT", _advice(MADV_PAGEOUT)),
        ("userfaultfd", _userfaultfd()),
        ("memory cgroup", _cgroups()),
        ("PSI", _psi()),
        ("transparent huge pages", _read("/sys/kernel/mm/transparent_hugepage/enabled") or "?"),
        ("swap", f"{swaps} device(s)" if swaps else "none"),
    ]
