"""The sim backend beyond the contract: simulated memory, poison, policies, faults."""

from __future__ import annotations

import errno

import pytest

from volcache.backends import NONVOLATILE, VOLATILE, get_backend

PS = 4096


def pages(n: int) -> int:
    return n * PS


def test_allocating_past_memory_purges_the_oldest_volatile_pages():
    """Simulated pressure purges oldest-first and poisons what it purged."""
    with get_backend("sim", memory=pages(4), poison=b"\xde\xad") as sim:
        region = sim.allocate(pages(4))
        region.view[:] = b"\x11" * region.size
        sim.vrange(region, pages(2), PS, VOLATILE)
        sim.vrange(region, 0, PS, VOLATILE)
        extra = sim.allocate(PS)
        assert bytes(region.view[pages(2) : pages(3)]) == b"\xde\xad" * (PS // 2)
        assert bytes(region.view[:PS]) == b"\x11" * PS
        assert sim.stats()["resident_bytes"] == pages(4)
        sim.release(extra)
        assert sim.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (2,)
        stats = sim.stats()
        assert stats["pressure_purged_bytes"] == PS
        assert stats["resident_bytes"] == pages(4)  # the re-pinned page is back


def test_allocating_past_memory_with_nothing_volatile_raises_memoryerror():
    """Nothing to purge: MemoryError, no region leaks, the backend still works."""
    with get_backend("sim", memory=pages(4)) as sim:
        sim.allocate(pages(3))
        with pytest.raises(MemoryError, match="simulated memory"):
            sim.allocate(pages(2))
        stats = sim.stats()
        assert stats["regions"] == 1 and stats["allocated_bytes"] == pages(3)
        assert sim.allocate(PS).size == PS


def test_repinning_purged_pages_needs_memory_and_stops_short_without_it():
    """Re-pinned purged pages are resident again; without room the re-pin is short."""
    with get_backend("sim", memory=pages(4)) as sim:
        region = sim.allocate(pages(4))
        sim.vrange(region, 0, region.size, VOLATILE)
        assert sim.reclaim(region.size) == region.size
        other = sim.allocate(pages(3))
        result = sim.vrange(region, 0, region.size, NONVOLATILE)
        assert (result.count, result.purged_pages) == (PS, (0,))
        with pytest.raises(OSError) as raised:
            sim.vrange(region, PS, pages(3), NONVOLATILE)
        assert raised.value.errno == errno.ENOMEM
        sim.release(other)
        result = sim.vrange(region, PS, pages(3), NONVOLATILE)
        assert (result.count, result.purged_pages) == (pages(3), (1, 2, 3))


def test_repinning_makes_room_from_other_volatile_pages_not_its_own():
    """Room for re-pinned pages comes from volatile pages outside the range."""
    with get_backend("sim", memory=pages(4)) as sim:
        region = sim.allocate(pages(4))
        region.view[:] = b"\x22" * region.size
        sim.vrange(region, 0, region.size, VOLATILE)
        sim.reclaim(PS)  # page 0 purged, resident 3
        extra = sim.allocate(PS)  # resident 4: full
        # Re-pinning pages 0-1 needs one page; page 1 is in the range, so page 2 goes.
        assert sim.vrange(region, 0, pages(2), NONVOLATILE).purged_pages == (0,)
        assert bytes(region.view[PS : pages(2)]) == b"\x22" * PS
        # Page 3 is the only volatile page left, and it is in the range: no room.
        with pytest.raises(OSError):
            sim.vrange(region, pages(2), pages(2), NONVOLATILE)
        sim.release(extra)
        assert sim.vrange(region, pages(2), pages(2), NONVOLATILE).purged_pages == (2,)
        assert bytes(region.view[pages(3) :]) == b"\x22" * PS


def test_reading_a_purged_page_before_repinning_shows_the_poison():
    """The poison pattern makes a use-after-purge visible."""
    with get_backend("sim", poison=b"\xab\xcd\xef") as sim:
        region = sim.allocate(PS)
        region.view[:] = bytes(PS)
        sim.vrange(region, 0, PS, VOLATILE)
        sim.reclaim(PS)
        assert bytes(region.view[:6]) == b"\xab\xcd\xef\xab\xcd\xef"


def _random_purges(seed: int) -> tuple[int, ...]:
    with get_backend("sim", memory=pages(64), policy="random", seed=seed) as sim:
        region = sim.allocate(pages(64))
        sim.vrange(region, 0, region.size, VOLATILE)
        sim.release(sim.allocate(pages(8)))
        return sim.vrange(region, 0, region.size, NONVOLATILE).purged_pages


def test_random_policy_is_deterministic_per_seed():
    """Same seed, same purges; the random policy purges exactly what is needed."""
    first = _random_purges(seed=1)
    assert len(first) == 8 and first == _random_purges(seed=1)
    assert first != tuple(range(8))  # not the oldest-first choice
    assert len({_random_purges(seed=s) for s in range(2, 6)}) > 1


def test_random_faults_keep_the_vrange_semantics():
    """With random short counts, pages past each count keep their old mode."""
    with get_backend("sim", fault_rate=0.5, seed=3) as sim:
        region = sim.allocate(pages(16))
        expected = [NONVOLATILE] * 16
        short = 0
        for step in range(300):
            first = step * 7 % 16
            npages = 1 + step * 5 % (16 - first)
            mode = VOLATILE if step % 3 else NONVOLATILE
            try:
                count = sim.vrange(region, pages(first), pages(npages), mode).count
            except OSError as exc:
                assert exc.errno == errno.ENOMEM
                count = 0
            short += count < pages(npages)
            for page in range(first, first + count // PS):
                expected[page] = mode
        assert short > 50 and sim.stats()["faults_injected"] == short
        volatile = [p for p in range(16) if expected[p] == VOLATILE]
        assert sim.stats()["volatile_bytes"] == pages(len(volatile))
        assert sim.reclaim(region.size) == pages(len(volatile))


def test_injected_faults_apply_to_the_next_calls_in_order():
    """inject_fault(calls=2) cuts two calls; the third runs whole."""
    with get_backend("sim") as sim:
        region = sim.allocate(pages(4))
        sim.inject_fault(after=PS, calls=2)
        assert sim.vrange(region, 0, region.size, VOLATILE).count == PS
        assert sim.vrange(region, 0, region.size, VOLATILE).count == PS
        assert sim.vrange(region, 0, region.size, VOLATILE).count == region.size
        with pytest.raises(ValueError):
            sim.inject_fault(after=-1)


def test_larger_simulated_pages():
    """A 16 KiB page size: alignment, rounding and purges follow it."""
    with get_backend("sim", page_size=16384) as sim:
        region = sim.allocate(20000)
        assert region.size == 32768 and region.pages == 2
        with pytest.raises(ValueError, match="16384"):
            sim.vrange(region, 4096, 1, VOLATILE)
        assert sim.vrange(region, 0, 1, VOLATILE).count == 16384
        assert sim.reclaim(1) == 16384


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory": -1}, "memory"),
        ({"policy": "lru"}, "policy"),
        ({"poison": b""}, "poison"),
        ({"fault_rate": 1.5}, "fault_rate"),
        ({"page_size": 6000}, "page_size"),
        ({"page_size": 2048}, "page_size"),
    ],
)
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        get_backend("sim", **options)
