"""Cost of VOLATILE and NONVOLATILE by size and backend, beside madvise and memcpy.

Each group is one size; within it compare mark and re-pin per backend with a
plain ``madvise(MADV_FREE)`` of the same pages (the floor for marking) and a
``memcpy`` of the same bytes (what a cache that copies values pays instead).
"""

from __future__ import annotations

import mmap

import pytest

from volcache.backends import NONVOLATILE, VOLATILE

SIZES = {"1 page": 1, "16 pages": 16, "256 pages": 256, "64 MiB": 16384}


def _rounds(npages: int) -> int:
    return 20 if npages >= 16384 else 2000


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def size(request):
    return request.param


def _region(backend, npages):
    region = backend.allocate(npages * backend.page_size)
    region.view[:] = b"\x5a" * region.size
    return region


def test_mark_volatile(benchmark, backend, size):
    npages = SIZES[size]
    region = _region(backend, npages)
    benchmark.group = f"vrange {size}"
    benchmark.extra_info["pages"] = npages

    def setup():
        backend.vrange(region, 0, region.size, NONVOLATILE)

    def mark():
        return backend.vrange(region, 0, region.size, VOLATILE)

    benchmark.pedantic(mark, setup=setup, rounds=_rounds(npages))
    assert mark().count == region.size


def test_repin_nonvolatile(benchmark, backend, size):
    npages = SIZES[size]
    region = _region(backend, npages)
    benchmark.group = f"vrange {size}"
    benchmark.extra_info["pages"] = npages

    def setup():
        backend.vrange(region, 0, region.size, VOLATILE)

    def repin():
        return backend.vrange(region, 0, region.size, NONVOLATILE)

    benchmark.pedantic(repin, setup=setup, rounds=_rounds(npages))
    setup()
    before = backend.stats()
    assert repin().purged_pages == ()
    assert backend.stats().get("syscalls", 0) == before.get("syscalls", 0)  # none to re-pin


def test_plain_madvise_free(benchmark, size):
    npages = SIZES[size]
    mapping = mmap.mmap(-1, npages * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_NOHUGEPAGE)
    benchmark.group = f"vrange {size}"
    benchmark.extra_info["pages"] = npages

    def setup():
        for page in range(npages):  # dirty again, so that MADV_FREE has work to do
            mapping[page * mmap.PAGESIZE] = 1

    benchmark.pedantic(mapping.madvise, args=(mmap.MADV_FREE,), setup=setup, rounds=_rounds(npages))


def test_plain_memcpy(benchmark, size):
    npages = SIZES[size]
    source = memoryview(bytearray(b"\x5a" * npages * mmap.PAGESIZE))
    target = memoryview(bytearray(len(source)))
    benchmark.group = f"vrange {size}"
    benchmark.extra_info["pages"] = npages

    def copy():
        target[:] = source

    benchmark.pedantic(copy, rounds=_rounds(npages))
    assert target == source
