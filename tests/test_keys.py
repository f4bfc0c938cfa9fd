"""Keys kept in volatile memory: only those read back equal to themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volcache import VolatileCache, cached
from volcache.keys import key_bytes, key_from_bytes


class Tag(bytes):
    """A bytes key of its own kind: never equal to plain bytes (as a dict sees it)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Tag and bytes.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = bytes.__hash__


NAN = float("nan")


@pytest.mark.parametrize(
    "key",
    [np.int64(5), np.float64(1.5), Tag(b"k"), NAN, ("p", NAN), (1, (2, NAN)),
     frozenset({NAN}), complex(NAN, 1), ("p", np.int32(3))],
    ids=repr,
)  # fmt: skip
def test_keys_not_read_back_equal_stay_objects(key: object) -> None:
    """Buffer objects (marshal writes them as plain bytes) and NaN (a new NaN is
    never equal) are not serialized."""
    assert key_bytes(key) == (None, False)


@pytest.mark.parametrize(
    "key", [1, "s", b"b", 1.5, -0.0, math.inf, True, None, 2j, (1, ("a", b"b")), frozenset({1, 2})]
)
def test_built_in_keys_round_trip_exactly(key: object) -> None:
    data, special = key_bytes(key)
    assert data is not None
    back = key_from_bytes(data, special)
    assert back == key and type(back) is type(key)


def test_a_bytes_subclass_key_does_not_answer_for_plain_bytes(backend_name: str) -> None:
    with VolatileCache(backend=backend_name) as cache:
        cache[Tag(b"k")] = "tagged"
        assert cache.get(b"k") is None
        assert cache.get(Tag(b"k")) == "tagged"
        cache[b"k"] = "plain"
        assert cache[b"k"] == "plain" and cache[Tag(b"k")] == "tagged"
        assert len(cache) == 2


def test_a_numpy_scalar_key_is_found_and_replaced(backend_name: str) -> None:
    with VolatileCache(backend=backend_name) as cache:
        for i in range(5):
            cache[np.int64(5)] = i
        assert len(cache) == 1
        assert cache[np.int64(5)] == 4 and cache[5] == 4  # equal keys, as in a dict
        assert list(cache) == [np.int64(5)] and type(next(iter(cache))) is np.int64
        cache.volatilize()
        assert cache.popitem() == (5, 4)


def test_a_decorated_function_hits_for_numpy_scalar_arguments(backend_name: str) -> None:
    calls = []

    @cached(backend=backend_name)
    def double(x: float) -> float:
        calls.append(x)
        return 2 * x

    for _ in range(5):
        assert double(np.float64(1.5)) == 3.0
    assert calls == [1.5] and len(double.cache) == 1


@pytest.mark.parametrize("key", [NAN, ("point", NAN)], ids=repr)
def test_a_nan_key_is_found_by_identity_as_in_a_dict(backend_name: str, key: object) -> None:
    model: dict[object, int] = {}
    with VolatileCache(backend=backend_name) as cache:
        for i in range(10):
            cache[key] = i
            model[key] = i
        cache.volatilize()  # idle: found without its hot object too
        assert len(cache) == len(model) == 1
        assert key in cache and cache.get(key) == 9
        assert float("nan") not in cache  # another NaN, as a dict sees it
        del cache[key]
        assert len(cache) == 0 and key not in cache


def test_a_decorated_function_hits_for_one_nan_object(backend_name: str) -> None:
    calls = []

    @cached(backend=backend_name)
    def f(x: float) -> float:
        calls.append(x)
        return x

    for _ in range(10):
        f(NAN)
    assert len(calls) == 1 and len(f.cache) == 1


def test_a_key_made_by_cachetools_before_8_is_stored_as_the_tuple_it_equals(backend_name: str):
    """cachetools < 8 made keys as its _HashedTuple (a key pickled then still is one)."""
    from cachetools import keys as cachekeys

    hashed = cachekeys._HashedTuple((1, cachekeys._kwmark[0], ("y", 2)))
    assert key_bytes(hashed)[0] is not None
    with VolatileCache(backend=backend_name) as cache:
        cache[hashed] = b"v"
        cache.volatilize()
        assert cache[hashed] == b"v" and cache[tuple(hashed)] == b"v"
        assert len(cache) == 1
