"""Memory pressure sources for the uffd backend's purger, and the thread that waits on them.

PSI (``/proc/pressure/memory``, or a cgroup's ``memory.pressure``) with a poll
trigger, and cgroup v1 ``memory.pressure_level`` events through an eventfd.
A source that cannot work here raises :class:`PressureUnavailable` saying why,
instead of waiting forever for events that never come.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from .contract import BackendUnavailable

PSI_SYSTEM = Path("/proc/pressure/memory")
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
LEVELS = ("low", "medium", "critical")


class PressureUnavailable(BackendUnavailable):
    """A pressure source that cannot work here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__("uffd", reason)


class PressureSource(abc.ABC):
    """Something that becomes readable (or has priority data) under memory pressure."""

    name: str
    events: int  # the poll() events that mean "pressure"

    @abc.abstractmethod
    def fileno(self) -> int | None:
        """The descriptor to poll (None: none, the source is only polled)."""

    def poll_ms(self) -> int | None:
        """How long to wait for an event before waking anyway; None: no longer."""
        return None

    def consume(self) -> None:
        """Acknowledge an event (so that the descriptor is quiet until the next)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the descriptors."""


class PsiSource(PressureSource):
    """A PSI poll trigger: an event when tasks stall on memory for ``trigger``.

    Args:
        path: ``/proc/pressure/memory`` or a cgroup v2 ``memory.pressure`` file.
        trigger: ``"some|full <stall us> <window us>"``. Without CAP_SYS_RESOURCE
            the window must be a multiple of 2 s.
    """

    name = "psi"
    events = select.POLLPRI

    def __init__(
        self, path: str | os.PathLike[str] = PSI_SYSTEM, trigger: str = "some 50000 2000000"
    ) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PressureUnavailable(
                f"PSI is not available: {self.path} does not exist (a kernel without "
                "CONFIG_PSI, or booted with psi=0)"
            ) from None
        except PermissionError:
            raise PressureUnavailable(f"PSI: {self.path} is not writable by this process") from None
        try:
            os.write(self._fd, trigger.encode() + b"\0")
        except OSError as exc:
            os.close(self._fd)
            raise PressureUnavailable(
                f"PSI refused the trigger {trigger!r} ({exc.strerror}): it is "
                "'some|full <stall us> <window us>'; without CAP_SYS_RESOURCE the window "
                "must be a multiple of 2 s, such as 'some 50000 2000000'"
            ) from None
        self.trigger = trigger

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


class ManualSource(PressureSource):
    """A source the program fires itself: :meth:`fire` wakes the watcher (an eventfd).

    For a program that knows better than the kernel when to give memory back
    (before a large allocation of its own, on a signal from a supervisor).
    """

    name = "manual"
    events = select.POLLIN

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fire(self) -> None:
        """Wake the watcher once."""
        os.eventfd_write(self._fd, 1)

    def fileno(self) -> int:
        return self._fd

    def consume(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def own_memory_cgroup_v1() -> Path:
    """The cgroup v1 memory group this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return CGROUP_V1_MEMORY / path.lstrip("/")
    raise PressureUnavailable("this process is in no cgroup v1 memory group")


class PressureLevelSource(PressureSource):
    """cgroup v1 ``memory.pressure_level`` events at ``level`` or above.

    Args:
        cgroup: the memory cgroup directory (default: this process's own).
        level: ``"low"`` (any reclaim), ``"medium"`` or ``"critical"``.
    """

    name = "pressure_level"
    events = select.POLLIN

    def __init__(self, cgroup: str | os.PathLike[str] | None = None, level: str = "low") -> None:
        if level not in LEVELS:
            raise ValueError(f"pressure level must be one of {LEVELS}, got {level!r}")
        self.cgroup = Path(cgroup) if cgroup is not None else own_memory_cgroup_v1()
        levels = self.cgroup / "memory.pressure_level"
        if not levels.exists():
            raise PressureUnavailable(
                f"cgroup v1 memory pressure events are not available: {levels} does not exist"
            )
        self._efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._levels = os.open(levels, os.O_RDONLY | os.O_CLOEXEC)
        try:
            control = self.cgroup / "cgroup.event_control"
            control.write_text(f"{self._efd} {self._levels} {level}")
        except OSError as exc:
            self.close()
            raise PressureUnavailable(
                f"cannot listen to {levels} ({exc.strerror}): cgroup.event_control is not "
                "writable by this process"
            ) from None
        self.level = level

    def fileno(self) -> int:
        return self._efd

    def consume(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)

    def close(self) -> None:
        os.close(self._levels)
        os.close(self._efd)


class PressureWatcher:
    """A thread that calls ``on_pressure(woke)`` for each event of a source, and on its polls.

    ``woke`` is the ``time.perf_counter()`` at which the thread woke up. A
    bound method is held weakly: the thread must not keep its backend alive,
    and ends when the backend is gone. An exception from ``on_pressure`` is
    counted (``errors``, ``last_error``) and the thread goes on: a purge that
    failed once must not end every later purge.
    """

    def __init__(self, source: PressureSource, on_pressure: Callable[[float], None]) -> None:
        self.source = source
        self.errors = 0
        self.last_error: str | None = None
        if inspect.ismethod(on_pressure):
            self._on_pressure: Callable[[], Callable[[float], None] | None] = weakref.WeakMethod(
                on_pressure
            )
        else:
            self._on_pressure = lambda: on_pressure
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="volcache-pressure", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        poller = select.poll()
        source_fd = self.source.fileno()
        if source_fd is not None:
            poller.register(source_fd, self.source.events | select.POLLERR)
        poller.register(self._stop, select.POLLIN)
        while True:
            ready = dict(poller.poll(self.source.poll_ms()))
            if self._stop in ready:
                return
            events = ready.get(source_fd, 0) if source_fd is not None else 0
            if events & (select.POLLHUP | select.POLLNVAL) or (
                events & select.POLLERR and not events & select.POLLPRI
            ):
                return  # the source went away (its cgroup was removed): nothing more will come
            woke = time.perf_counter()
            if events:
                self.source.consume()
            elif self.source.poll_ms() is None:
                continue
            on_pressure = self._on_pressure()
            if on_pressure is None:
                return  # its owner is gone
            try:
                on_pressure(woke)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            del on_pressure

    def stop(self) -> None:
        """Stop and join the thread, close the source. Idempotent."""
        if self._closed:
            return
        self._closed = True
        os.eventfd_write(self._stop, 1)
        if self._thread is not threading.current_thread():
            self._thread.join()
        os.close(self._stop)
        self.source.close()

    def forget(self) -> None:
        """In a forked child (the thread did not come along): close the descriptors."""
        if self._closed:
            return
        self._closed = True
        os.close(self._stop)
        self.source.close()
