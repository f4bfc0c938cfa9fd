"""The memory limit this process runs under, and how close its usage is to it.

The uffd purger keeps a group under its limit instead of reacting after it:
it follows the usage of the memory cgroup that bounds this process (or of the
whole machine, where no cgroup does) against a *watermark* ``headroom`` below
the limit, and purges volatile pages as soon as the usage crosses it, so that
the kernel never has to choose a process to kill while volatile memory could
have been given back.

- cgroup v1: ``memory.usage_in_bytes`` thresholds registered through
  ``cgroup.event_control``; the kernel checks them synchronously in the charge
  path (every 128 page events, about 512 KiB) and signals an eventfd on each
  crossing, both ways.
- cgroup v2: ``memory.max`` (or a lower ``memory.high``) against
  ``memory.current``, woken by ``memory.events`` and polled while near.
- no limit: the machine, ``MemTotal`` against ``MemAvailable``, woken by a PSI
  trigger where there is one and polled.

Each source says where it reads, so that :meth:`MemoryLimit.describe` can tell
a user what the purger follows. A source that cannot work here raises
:class:`~volcache.backends.pressure.PressureUnavailable` with the reason.
"""

from __future__ import annotations

import abc
import contextlib
import os
import select
from pathlib import Path

from .pressure import CGROUP_V1_MEMORY, PSI_SYSTEM, PressureSource, PressureUnavailable

MIB = 1 << 20
UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as 0x7FFFFFFFFFFFF000
MEMINFO = Path("/proc/meminfo")
CGROUP_V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
NEAR_POLL_MS = 10  # while usage is within two headrooms of the limit
FAR_POLL_MS = 500  # otherwise, for what no event announces (a lowered limit)


def default_headroom(limit: int) -> int:
    """The headroom kept below a limit: an eighth of it, within [8 MiB, 1 GiB].

    It must cover what the rest of the group allocates between a watermark
    crossing and the purge (the purger's thread waking and taking the GIL):
    measured here, a competitor writing 1 GiB/s overshoots by at most a few MiB.
    """
    return max(8 * MIB, min(limit // 8, 1 << 30))


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


class MemoryLimit(PressureSource):
    """A memory limit and the usage that counts against it.

    Attributes:
        limit: the bytes usage may not exceed.
        headroom: the bytes kept free below it: ``high = limit - headroom``.
        where: the path it follows, for messages and stats.
    """

    name = "limit"
    events = select.POLLIN
    kind: str

    def __init__(self, limit: int, headroom: int | None, where: Path) -> None:
        if headroom is None:
            headroom = default_headroom(limit)
        if not isinstance(headroom, int) or not 0 < headroom < limit:
            raise ValueError(
                f"uffd: headroom must be a positive int below the limit ({limit} bytes), "
                f"got {headroom!r}"
            )
        self.limit = limit
        self.headroom = headroom
        self.where = where
        self._last = 0

    @property
    def high(self) -> int:
        """The watermark: usage above it makes the purger act."""
        return self.limit - self.headroom

    @property
    def slack(self) -> int:
        """How far below the watermark a purge goes, so that it does not purge a page at a time."""
        return self.headroom // 4

    @abc.abstractmethod
    def usage(self) -> int:
        """The bytes charged against the limit now."""

    def poll_ms(self) -> int | None:
        """How long to wait for an event before looking again; None: no longer."""
        near = self._last > self.limit - 2 * self.headroom
        return NEAR_POLL_MS if near else FAR_POLL_MS

    def excess(self, extra: int = 0) -> int:
        """Bytes over the watermark now, if ``extra`` more were charged (negative: room left)."""
        self._last = self.usage()
        return self._last + extra - self.high

    def describe(self) -> str:
        """What it follows, in one line."""
        return (
            f"{self.kind} at {self.where}: limit {self.limit / MIB:.0f} MiB, "
            f"headroom {self.headroom / MIB:.0f} MiB"
        )


class CgroupV1Limit(MemoryLimit):
    """``memory.limit_in_bytes`` of a cgroup v1 memory group, with usage thresholds."""

    kind = "cgroup v1 memory limit"

    def __init__(self, cgroup: Path, limit: int, headroom: int | None = None) -> None:
        super().__init__(limit, headroom, cgroup)
        self._usage = os.open(cgroup / "memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = cgroup / "cgroup.event_control"
            for threshold in self.thresholds():
                control.write_text(f"{self._efd} {self._usage} {threshold}")
        except OSError as exc:
            self.close()
            raise PressureUnavailable(
                f"cannot set usage thresholds on {cgroup} ({exc.strerror}): "
                "cgroup.event_control is not writable by this process"
            ) from None

    def thresholds(self) -> list[int]:
        """Two headrooms below the limit (start watching closely), the watermark, and above."""
        quarter = self.headroom // 4
        return [self.limit - 2 * self.headroom, *(self.high + k * quarter for k in range(4))]

    def fileno(self) -> int:
        return self._efd

    def consume(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)

    def usage(self) -> int:
        return int(os.pread(self._usage, 32, 0))

    def close(self) -> None:
        # Closing the eventfd is what unregisters the thresholds.
        os.close(self._efd)
        os.close(self._usage)


class CgroupV2Limit(MemoryLimit):
    """``memory.max`` (or a lower ``memory.high``) of a cgroup v2 group against ``memory.current``.

    v2 has no usage thresholds: ``memory.events`` wakes the purger when the
    kernel throttles or reclaims, and ``memory.current`` is polled every
    10 ms while the usage is within two headrooms of the limit.
    """

    kind = "cgroup v2 memory limit"
    events = select.POLLPRI

    def __init__(self, cgroup: Path, limit: int, headroom: int | None = None) -> None:
        super().__init__(limit, headroom, cgroup)
        self._current = os.open(cgroup / "memory.current", os.O_RDONLY | os.O_CLOEXEC)
        self._events = os.open(cgroup / "memory.events", os.O_RDONLY | os.O_CLOEXEC)
        self.consume()

    def fileno(self) -> int:
        return self._events

    def consume(self) -> None:
        os.pread(self._events, 4096, 0)  # kernfs wakes a poller once per read

    def usage(self) -> int:
        return int(os.pread(self._current, 32, 0))

    def close(self) -> None:
        os.close(self._events)
        os.close(self._current)


class MachineLimit(MemoryLimit):
    """The whole machine, where no cgroup limits this process: ``MemTotal - MemAvailable``.

    A PSI trigger on ``/proc/pressure/memory`` wakes the purger where PSI
    exists; the usage is polled besides (``/proc/meminfo``).
    """

    kind = "the machine's memory"
    events = select.POLLPRI

    def __init__(self, headroom: int | None = None, trigger: str = "some 100000 2000000") -> None:
        total = _meminfo()["MemTotal"]
        super().__init__(total, headroom, MEMINFO)
        self._psi: int | None = None
        with contextlib.suppress(OSError):
            fd = os.open(PSI_SYSTEM, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(fd, trigger.encode() + b"\0")
            except OSError:
                os.close(fd)
            else:
                self._psi = fd

    def fileno(self) -> int | None:
        return self._psi

    def usage(self) -> int:
        info = _meminfo()
        return info["MemTotal"] - info["MemAvailable"]

    def close(self) -> None:
        if self._psi is not None:
            os.close(self._psi)


def _meminfo() -> dict[str, int]:
    found: dict[str, int] = {}
    with open(MEMINFO, "rb") as file:
        for line in file:
            key, _, rest = line.partition(b":")
            if key in (b"MemTotal", b"MemAvailable"):
                found[key.decode()] = int(rest.split()[0]) * 1024
                if len(found) == 2:
                    return found
    raise PressureUnavailable(f"{MEMINFO} has no MemTotal and MemAvailable")


def _own_cgroup_paths() -> tuple[str | None, str | None]:
    """This process's (cgroup v1 memory path, cgroup v2 path), from /proc/self/cgroup."""
    v1 = v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif hierarchy == "0":
            v2 = path
    return v1, v2


def _tightest(leaf: Path, root: Path, files: tuple[str, ...]) -> tuple[Path, int] | None:
    """The group from ``leaf`` up to ``root`` with the smallest finite limit in ``files``."""
    best: tuple[Path, int] | None = None
    group = leaf
    while True:
        for name in files:
            value = _read_int(group / name)
            if value is not None and value < UNLIMITED and (best is None or value < best[1]):
                best = (group, value)
        if group == root or root not in group.parents:
            return best
        group = group.parent


def cgroup_limit(cgroup: str | os.PathLike[str], headroom: int | None = None) -> MemoryLimit:
    """The limit of one memory cgroup directory (v1 or v2)."""
    path = Path(cgroup)
    if (path / "memory.limit_in_bytes").exists():
        limit = _read_int(path / "memory.limit_in_bytes")
        if limit is None or limit >= UNLIMITED:
            raise PressureUnavailable(f"the memory cgroup {path} has no limit")
        return CgroupV1Limit(path, limit, headroom)
    if (path / "memory.current").exists():
        found = _tightest(path, path, ("memory.max", "memory.high"))
        if found is None:
            raise PressureUnavailable(f"the memory cgroup {path} has no memory.max or memory.high")
        return CgroupV2Limit(path, found[1], headroom)
    raise PressureUnavailable(
        f"{path} is not a memory cgroup (no memory.limit_in_bytes, no memory.current)"
    )


def _where_bounded() -> tuple[str, Path, int]:
    """("v1" | "v2" | "machine", the group or /proc/meminfo, the limit in bytes)."""
    v1, v2 = _own_cgroup_paths()
    total = _meminfo()["MemTotal"]
    if v1 is not None and (CGROUP_V1_MEMORY / "memory.limit_in_bytes").exists():
        found = _tightest(
            CGROUP_V1_MEMORY / v1.lstrip("/"), CGROUP_V1_MEMORY, ("memory.limit_in_bytes",)
        )
        if found is not None and found[1] < total:
            return "v1", *found
    if v2 is not None:
        for root in CGROUP_V2_ROOTS:
            leaf = root / v2.lstrip("/")
            if (leaf / "memory.current").exists():
                found = _tightest(leaf, root, ("memory.max", "memory.high"))
                if found is not None and found[1] < total:
                    return "v2", *found
                break
    return "machine", MEMINFO, total


def process_limit() -> int:
    """The bytes this process may use: its memory cgroup's limit (the tightest up the
    tree), else the machine's memory. Reads a few files; opens nothing that stays open."""
    return _where_bounded()[2]


def find_limit(headroom: int | None = None) -> MemoryLimit:
    """The limit this process runs under, to follow: its memory cgroup's (the tightest up
    the tree), else the machine's."""
    kind, where, limit = _where_bounded()
    if kind == "v1":
        return CgroupV1Limit(where, limit, headroom)
    if kind == "v2":
        return CgroupV2Limit(where, limit, headroom)
    return MachineLimit(headroom)
