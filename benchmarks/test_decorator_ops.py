"""@cached beside functools.lru_cache and cachetools.cached: a hit, and a miss."""

from __future__ import annotations

import functools
import itertools

import cachetools
import pytest

from volcache import cached

from .conftest import WORKING


def _square(x):
    return x * x


def _decorated(kind: str, backend: str | None = None):
    if kind == "volcache":
        return cached(backend=backend)(_square)
    if kind == "lru_cache":
        return functools.lru_cache(maxsize=None)(_square)
    return cachetools.cached(cachetools.LRUCache(1 << 20))(_square)


KINDS = [*(("volcache", b) for b in WORKING), ("lru_cache", None), ("cachetools", None)]
IDS = [f"{k}-{b}" if b else k for k, b in KINDS]


@pytest.mark.parametrize(("kind", "backend"), KINDS, ids=IDS)
def test_decorator_hit(benchmark, kind, backend):
    benchmark.group = "decorator hit"
    function = _decorated(kind, backend)
    function(12)
    assert benchmark(function, 12) == 144


@pytest.mark.parametrize(("kind", "backend"), KINDS, ids=IDS)
def test_decorator_miss(benchmark, kind, backend):
    """A new argument each time: the key, the call, and storing the result."""
    benchmark.group = "decorator miss"
    function = _decorated(kind, backend)
    arguments = itertools.count()
    benchmark(lambda: function(next(arguments)))
