"""Values the codec refuses (they cannot be pickled) are kept as the objects themselves."""

from __future__ import annotations

import copy
import threading

import pytest

from volcache import MemoryBudget, VolatileCache


def purge_everything(cache: VolatileCache) -> None:
    cache.volatilize()
    cache.backend.reclaim(1 << 40)


def unpicklable_values():
    class Local:  # a class defined in a function cannot be pickled
        pass

    def generator():
        yield 1

    return {
        "lock": threading.Lock(),
        "local": Local(),
        "lambda": lambda: None,
        "generator": generator(),
        ("list", 1): [threading.Lock(), b"x" * 100],
    }


def filled(make, nbytes: int) -> tuple[VolatileCache, dict]:
    """A cache holding unpicklable values and one entry of ``nbytes`` stored bytes."""
    cache = make()
    values = unpicklable_values()
    for key, value in values.items():
        cache[key] = value
    cache["bytes"] = b"b" * nbytes
    return cache, values


def test_unpicklable_values_are_kept_as_themselves(make):
    cache, values = filled(make, 5000)
    assert cache.info().kept_entries == len(values)
    for key, value in values.items():
        assert cache[key] is value
    cache.volatilize()
    assert all(cache.get(key) is value for key, value in values.items())
    assert cache.info().kept_entries == len(values) and len(cache) == len(values) + 1


def test_kept_values_are_never_purged_while_stored_bytes_are(make):
    cache, values = filled(make, 50_000)
    purge_everything(cache)
    cache.maintain()  # finds the purge of the bytes entry
    assert "bytes" not in cache and cache.info().purged == 1
    assert {key: cache[key] for key in values} == values
    assert set(cache) == set(values)


def test_kept_values_count_as_memory_no_purge_takes(make):
    cache = make()
    before = cache.info().nonvolatile_bytes
    cache["big"] = [threading.Lock()] + [bytes(1000) for _ in range(100)]
    assert cache.info().nonvolatile_bytes - before >= 100_000
    del cache["big"]
    assert cache.info().kept_entries == 0
    assert cache.info().nonvolatile_bytes <= before + 64


def test_kept_values_are_evicted_past_the_memory_budget(make):
    cache = make(memory_budget=MemoryBudget(512 << 10))
    for i in range(200):  # about 10 KB each: 2 MB in all, four times the budget
        cache[i] = [threading.Lock(), bytes(10_000)]
    info = cache.info()
    assert info.nonvolatile_bytes <= 512 << 10
    assert 0 < len(cache) < 100 and info.evictions == 200 - len(cache)
    assert 199 in cache and cache[199][1] == bytes(10_000)


def test_removal_and_copies_of_kept_values(make):
    cache = make()
    lock = threading.Lock()
    cache["lock"] = lock
    cache["other"] = threading.RLock()
    clone = copy.copy(cache)
    try:
        assert clone["lock"] is lock and clone.info().kept_entries == 2
    finally:
        clone.close()
    assert cache.pop("lock") is lock and cache.info().kept_entries == 1
    cache["lock"] = b"now bytes"  # replacing a kept value with a stored one
    assert cache["lock"] == b"now bytes" and cache.info().kept_entries == 1
    cache.clear()
    assert cache.info().kept_entries == 0 and len(cache) == 0


def test_pin_refuses_a_kept_value(make):
    cache = make()
    cache["lock"] = threading.Lock()
    with pytest.raises(TypeError, match="kept as an object"), cache.pin("lock"):
        pass
    assert isinstance(cache["lock"], type(threading.Lock()))
