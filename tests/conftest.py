"""Shared fixtures: a backend of every registered kind, skipped or required.

A backend that does not work here is skipped with its reason, unless its name
is in ``VOLCACHE_REQUIRE`` (comma separated, ``all`` for every registered
backend): on our machines the real paths must really run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import pytest

from volcache.backends import available_backends, backend_class, get_backend

BACKENDS = list(available_backends())
#: The tier's servers, which VOLCACHE_REQUIRE may also name (then a missing one fails).
SERVERS = ["redis", "memcached", "redis-cluster"]
WITH_FAULT_INJECTION = [n for n in BACKENDS if backend_class(n).capabilities.fault_injection]


def required_backends() -> set[str]:
    """The names in ``VOLCACHE_REQUIRE``; ``all`` means every registered backend."""
    names = {n.strip() for n in os.environ.get("VOLCACHE_REQUIRE", "").split(",") if n.strip()}
    if "all" in names:
        names = (names - {"all"}) | set(BACKENDS)
    return names


def pytest_configure(config: pytest.Config) -> None:
    unknown = required_backends() - set(BACKENDS) - set(SERVERS)
    if unknown:
        raise pytest.UsageError(
            f"VOLCACHE_REQUIRE names backends that are not registered: {sorted(unknown)}; "
            f"registered: {BACKENDS}"
        )


def need_backend(name: str) -> None:
    """Skip the test if the backend does not work here, or fail if it is required."""
    reason = available_backends()[name]
    if reason is None:
        return
    if name in required_backends():
        pytest.fail(f"backend {name!r} is required by VOLCACHE_REQUIRE but unavailable: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")


def require(feature: str, reason: str | None) -> None:
    """Skip for a missing machine feature (cgroups, root), or fail if a required backend needs it.

    ``feature`` is the backend whose real path the test exercises.
    """
    if reason is None:
        return
    if feature in required_backends():
        pytest.fail(f"{feature} is required by VOLCACHE_REQUIRE but this test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of each registered backend that works here."""
    need_backend(request.param)
    return request.param


@pytest.fixture
def backend(backend_name: str):
    """A fresh backend of each registered kind, closed after the test."""
    with get_backend(backend_name) as b:
        yield b


@contextlib.contextmanager
def on_one_cpu():
    """Run the block on one CPU: pages it faults in sit in that CPU's LRU batch,
    which MADV_PAGEOUT drains (another CPU's batch it skips, keeping those pages)."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


@pytest.fixture
def make(backend_name: str):
    """Make caches on each backend; all are closed after the test."""
    from volcache import VolatileCache

    made: list[VolatileCache] = []

    def make(*args, **kwargs):
        kwargs.setdefault("backend", backend_name)
        cache = VolatileCache(*args, **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture(params=WITH_FAULT_INJECTION)
def faulty_backend(request: pytest.FixtureRequest):
    """A fresh backend of each kind that can inject faults (``inject_fault``)."""
    need_backend(request.param)
    with get_backend(request.param) as b:
        yield b


def wait_child(pid: int, seconds: float = 20) -> int | None:
    """A forked child's exit code, or None if it had not ended in time (it is killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def crowd(call: Callable[[], object], threads: int, started: threading.Event,
          release: threading.Event) -> None:  # fmt: skip
    """Run ``call`` in several threads that pile up behind the first one.

    ``call`` sets ``started`` once it is inside and waits for ``release``; the
    others arrive meanwhile. Returns when every thread has finished.
    """
    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    started.wait(10)
    time.sleep(0.05)  # let the rest queue behind the first
    release.set()
    for worker in workers:
        worker.join()


@contextlib.contextmanager
def held_by_another_thread(lock):
    """The block runs while another thread holds ``lock``; it lets go after."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()
