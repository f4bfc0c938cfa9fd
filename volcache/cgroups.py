"""Memory cgroups of our own: child processes under a real memory limit.

The pressure tests and ``volcache bench`` run workloads in a cgroup with a
memory limit, so that the kernel must reclaim. cgroup v2's ``memory.max`` is
used where the v2 hierarchy has the memory controller, else cgroup v1's
``memory.limit_in_bytes``. A group is always removed afterwards: its
processes are killed first, also when the caller failed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        try:
            if "memory" in (root / "cgroup.subtree_control").read_text().split():
                return root
        except OSError:
            continue
    return None


def _v1_root() -> Path | None:
    return V1_ROOT if (V1_ROOT / "memory.limit_in_bytes").exists() else None


def memory_controller() -> tuple[str, Path] | None:
    """("v2" or "v1", the hierarchy's root) for the memory controller, or None."""
    root = _v2_root()
    if root is not None:
        return "v2", root
    root = _v1_root()
    if root is not None:
        return "v1", root
    return None


def unavailable_reason() -> str | None:
    """None if we can make memory cgroups here, else one sentence why not."""
    found = memory_controller()
    if found is None:
        return (
            "no cgroup memory controller is mounted (cgroup v2 with +memory, or v1 at "
            f"{V1_ROOT}); real memory pressure cannot be made here"
        )
    if not os.access(found[1], os.W_OK):
        return f"the cgroup hierarchy at {found[1]} is not writable: run as root"
    return None


class MemoryCgroup:
    """A child memory cgroup with a limit; a context manager that removes it.

    Args:
        limit: the memory limit in bytes.
        name: a prefix for the group's directory name.
        pressure_group: also join a cgroup v2 group, for its ``memory.pressure``
            (PSI of the group's tasks), where the memory group is cgroup v1.
    """

    def __init__(self, limit: int, *, name: str = "volcache", pressure_group: bool = False) -> None:
        found = memory_controller()
        if found is None:
            raise RuntimeError(unavailable_reason())
        self.version, root = found
        self.limit = int(limit)
        leaf = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = root / leaf
        self.pressure_path: Path | None = None  # a v2 group besides a v1 memory group
        if pressure_group and self.version == "v1":
            v2 = next((r for r in V2_ROOTS if (r / "cgroup.procs").exists()), None)
            if v2 is None:
                raise RuntimeError("no cgroup v2 hierarchy is mounted: no memory.pressure here")
            self.pressure_path = v2 / leaf

    @property
    def pressure_file(self) -> Path:
        """The PSI file of the group's tasks (``memory.pressure``)."""
        return (self.pressure_path or self.path) / "memory.pressure"

    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == "v1" else v2)

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir()
        try:
            if self.pressure_path is not None:
                self.pressure_path.mkdir()
            self._file("memory.limit_in_bytes", "memory.max").write_text(str(self.limit))
            if self.version == "v2":
                with contextlib.suppress(OSError):  # no swap controller: nothing to forbid
                    (self.path / "memory.swap.max").write_text("0")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    @property
    def procs_file(self) -> Path:
        """The file a process writes its pid to, to join the group."""
        return self.path / "cgroup.procs"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that the process joins the group before it starts."""
        if self.pressure_path is None:
            join = 'echo $$ > "$0" && exec "$@"'
            return ["/bin/sh", "-c", join, str(self.procs_file), *argv]
        join = 'echo $$ > "$0" && echo $$ > "$1" && shift && exec "$@"'
        return [
            "/bin/sh",
            "-c",
            join,
            str(self.procs_file),
            str(self.pressure_path / "cgroup.procs"),
            *argv,
        ]

    def pids(self) -> list[int]:
        """The processes in the group."""
        return _pids(self.path)

    def usage(self) -> int:
        """Bytes charged to the group now."""
        return int(self._file("memory.usage_in_bytes", "memory.current").read_text())

    def peak(self) -> int | None:
        """The most bytes ever charged to the group, where the kernel keeps it."""
        try:
            return int(self._file("memory.max_usage_in_bytes", "memory.peak").read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in the group."""
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what runs in the group (and its pressure group) and remove them."""
        for path in (self.path, self.pressure_path):
            if path is not None:
                _remove_group(path, timeout)


def _pids(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _remove_group(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        for pid in _pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
