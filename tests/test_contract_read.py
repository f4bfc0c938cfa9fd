"""The backend contract's optimistic read: bytes out of volatile pages without re-pinning.

Every registered backend must pass these. A read never returns a wrong byte
as good: a page is either reported purged or holds what was written before
it was marked, however purges race with the copy.
"""

from __future__ import annotations

import mmap
import random
import threading
import time

import pytest

from volcache.backends import NONVOLATILE, VOLATILE, clib, get_backend

from .test_contract import fill, pattern

PAGES = 16


def expected(region, start: int, length: int) -> bytes:
    data = b"".join(pattern(region.backend, page) for page in range(region.pages))
    return data[start : start + length]


@pytest.fixture
def region(backend):
    region = backend.allocate(PAGES * backend.page_size)
    fill(region)
    return region


@pytest.mark.parametrize(("start", "length"), [(0, 0), (0, 1), (5, 100), (4090, 20), (3, 40000)])
@pytest.mark.parametrize("mode", [NONVOLATILE, VOLATILE])
def test_a_read_returns_the_bytes_written(backend, region, start, length, mode):
    backend.vrange(region, 0, region.size, mode)
    into = bytearray(length + 7)
    assert backend.read(region, start, length, into) == ()
    assert bytes(into[:length]) == expected(region, start, length)
    assert backend.read_bytes(region, start, length) == (expected(region, start, length), ())


def test_a_read_leaves_volatile_pages_volatile(backend, region):
    backend.vrange(region, 0, region.size, VOLATILE)
    volatile = backend.stats()["volatile_bytes"]
    backend.read_bytes(region, 0, region.size)
    assert backend.stats()["volatile_bytes"] == volatile == region.size
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert bytes(region.view) == expected(region, 0, region.size)


def test_a_read_reports_exactly_the_purged_pages(backend, region):
    ps = backend.page_size
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.reclaim(4 * ps) == 4 * ps  # the oldest: pages 0..3
    data, purged = backend.read_bytes(region, ps + 10, 6 * ps)
    assert purged == (1, 2, 3)
    assert (
        data[3 * ps - 10 :]
        == expected(region, 4 * ps, 4 * ps - 10 + 10)[: len(data) - (3 * ps - 10)]
    )
    into = bytearray(2 * ps)
    assert backend.read(region, 4 * ps, 2 * ps, into) == ()
    assert into == expected(region, 4 * ps, 2 * ps)
    # Still volatile and still purged: re-pinning reports them, once.
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("start", "length", "error"),
    [(-1, 1, ValueError), (0, -1, ValueError), (0, PAGES * 4096 + 1, ValueError)],
)
def test_bad_reads_raise(backend, region, start, length, error):
    with pytest.raises(error):
        backend.read(region, start, length, bytearray(PAGES * 4096 + 1))


def test_a_read_needs_a_writable_buffer_long_enough(backend, region):
    with pytest.raises(TypeError, match="writable buffer"):
        backend.read(region, 0, 10, b"x" * 10)
    with pytest.raises(TypeError, match="writable buffer"):
        backend.read(region, 0, 10, bytearray(9))
    backend.release(region)
    with pytest.raises(ValueError, match="released"):
        backend.read_bytes(region, 0, 10)


def test_reads_racing_purges_never_return_a_wrong_byte(backend_name):
    """Readers copy volatile pages while another thread purges them, unlocked on
    ``kernel`` (as the kernel's own reclaim is), through ``reclaim`` elsewhere."""
    with get_backend(backend_name) as backend:
        ps = backend.page_size
        region = backend.allocate(64 * ps)
        fill(region)
        good = expected(region, 0, region.size)
        rng = random.Random(7)
        checked = purged_seen = 0
        for _ in range(8):
            backend.vrange(region, 0, region.size, VOLATILE)
            stop = threading.Event()

            def purge(stop=stop):
                while not stop.is_set():
                    if backend_name == "kernel":
                        page = rng.randrange(64)
                        clib.madvise(region.address + page * ps, ps, mmap.MADV_DONTNEED)
                    else:
                        backend.reclaim(ps)
                    time.sleep(0.0005)

            purger = threading.Thread(target=purge)
            purger.start()
            try:
                deadline = time.monotonic() + 0.2
                while time.monotonic() < deadline:
                    start = rng.randrange(region.size - 1)
                    length = rng.randrange(1, min(region.size - start, 5 * ps) + 1)
                    data, purged = backend.read_bytes(region, start, length)
                    lost = set(purged)
                    purged_seen += len(lost)
                    for page in range(start // ps, (start + length - 1) // ps + 1):
                        if page in lost:
                            continue
                        low, high = max(start, page * ps), min(start + length, (page + 1) * ps)
                        assert data[low - start : high - start] == good[low:high], page
                        checked += 1
            finally:
                stop.set()
                purger.join()
            # Every page a purge took is reported by re-pinning; refill for the next round.
            backend.vrange(region, 0, region.size, NONVOLATILE)
            fill(region)
        assert checked > 100 and purged_seen > 0


def test_a_reader_reads_as_read_bytes_does(backend, region):
    ps = backend.page_size
    read = backend.reader(region)
    assert read(5, 3 * ps) == expected(region, 5, 3 * ps)  # pinned pages
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(2 * ps)  # pages 0 and 1
    assert read(ps + 1, 10) is None and read(0, 2 * ps) is None
    assert read(2 * ps, 2 * ps) == expected(region, 2 * ps, 2 * ps)
